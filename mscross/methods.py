"""The registry of methods: each method's model settings, loss terms, adversary and search space.

This is the one list of methods that the presets (`mscross/presets.py`), the config checks, the
hyperparameter search (`mscross/tuning.py`) and the benchmarks read. A method is

* `configure(config)`: its network shape, its loss terms with weights and options (the terms
  live in `mscross/loss_terms.py`) and whether the modality discriminator plays;
* `search_space`: the hyperparameters a sweep samples, the knobs every method shares (learning
  rate, embedding width, hidden width, regulariser weight, batch size, and the adversary's weight
  and `d_steps` where the method has an adversary) followed by its own.

Layer sizes and weights that docs/methods.md marks as proposals are starting points; every
method gets the same search budget in `bench/accuracy.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from mscross.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Param:
  """One searchable hyperparameter.

  A float range (`low`, `high`, `log`) or a list of `choices`. `name` is the dotted config key it
  sets, unless `apply` sets the config from the value itself (a width that several layers
  share). Float ranges of keys that the train step traces (learning rates, loss weights and
  float options, the adversary's weight, mu) can differ between members of one population;
  choices change the program's shape.
  """

  name: str
  low: float | None = None
  high: float | None = None
  log: bool = False
  choices: tuple | None = None
  apply: Callable | None = None

  def __post_init__(self):
    if (self.choices is None) == (self.low is None or self.high is None):
      raise ValueError(f"{self.name}: give either a float range or choices")

  @property
  def continuous(self) -> bool:
    return self.choices is None

  def contains(self, value) -> bool:
    if self.choices is not None:
      return value in self.choices
    return self.low <= value <= self.high

  def set(self, config, value) -> None:
    if self.apply is not None:
      self.apply(config, value)
      return
    from mscross import config as config_lib

    config_lib.set_dotted(config, self.name, float(value) if self.continuous else value)


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  title: str
  adversarial: bool
  configure: Callable
  own_space: tuple[Param, ...]
  width: Callable  # (config, embedding width) -> None
  hidden: Callable  # (config, hidden width) -> None

  @property
  def search_space(self) -> tuple[Param, ...]:
    shared = [
      Param("optim.lr", 3e-5, 1e-2, log=True),
      # The same widths for every method. They stop short of DSCMR's published 2048/1024
      # network: on the benchmark's small datasets such widths cost hours of CPU per sweep.
      Param("width", choices=(32, 64, 128, 256, 512), apply=self.width),
      Param("hidden", choices=(128, 256, 512, 1024), apply=self.hidden),
      Param("loss.reg.weight", 1e-7, 1e-2, log=True),
      Param("train.batch_size", choices=(32, 64, 128)),
    ]
    if self.adversarial:
      shared += [Param("adv.weight", 0.01, 3.0, log=True), Param("adv.d_steps", choices=(1, 2, 3))]
    return (*shared, *self.own_space)


# ----------------------------------------------------------------------------------------------
# The four methods
# ----------------------------------------------------------------------------------------------


def _acmr(c):
  c.model.encoder_layers = (512,)
  c.model.width = 64
  c.loss = dict(
    label=dict(weight=1.0),
    acmr_triplet=dict(weight=1.0, margin=0.5, negative="random"),
    reg=dict(weight=1e-4),
  )


def _mnsgan(c):
  c.model.encoder_layers = (512,)
  c.model.width = 64
  c.loss = dict(
    label=dict(weight=1.0),
    multi_negative=dict(weight=1.0, tau=0.1, negatives="all", k=5, intra_weight=0.5, margin=0.0),
    reg=dict(weight=1e-4),
  )


def _ms2gan(c):
  c.model.encoder_layers = (512,)
  c.model.width = 128
  c.model.shared_layers = (128, 128)
  c.model.classifier_input = "concat"
  c.model.retrieval = "joint"
  c.model.mu = 1.0
  c.disc.layers = (32,)
  c.loss = dict(
    label=dict(weight=1.0),
    ms2gan_similarity=dict(weight=1.0, margin=0.5, mining="all", normalize=True),
    ms2gan_difference=dict(weight=0.1, kind="large_margin", margin=0.5),
    reg=dict(weight=0.0),
  )


def _dscmr(c):
  # Linear(d, 2048) + ReLU per modality, then ONE shared Linear(2048, 1024), then the classifier.
  c.model.encoder_layers = ()
  c.model.width = 2048
  c.model.shared_layers = (1024,)
  c.model.activation = "relu"
  c.model.shared_activate_final = False
  c.adv.enabled = False
  c.optim.lr = 1e-4
  c.train.batch_size = 100
  c.loss = dict(
    dscmr_label=dict(weight=1.0),
    dscmr_pairwise=dict(weight=1e-3),
    dscmr_invariance=dict(weight=1e-1),
    reg=dict(weight=0.0),
  )


def _encoder_width(c, v):
  c.model.width = int(v)


def _encoder_hidden(c, v):
  c.model.encoder_layers = (int(v),)


def _ms2gan_width(c, v):
  # Specific and shared features have the same width, so the difference loss compares like
  # with like.
  c.model.width = int(v)
  c.model.shared_layers = (int(v), int(v))


def _dscmr_width(c, v):
  c.model.shared_layers = (int(v),)


def _dscmr_hidden(c, v):
  # DSCMR's encoders are one layer, whose output feeds the shared projection.
  c.model.width = int(v)


METHODS: dict[str, Method] = {
  m.name: m
  for m in (
    Method(
      "acmr",
      "ACMR (Wang et al., ACM MM 2017)",
      True,
      _acmr,
      (
        Param("loss.acmr_triplet.weight", 0.1, 10.0, log=True),
        Param("loss.acmr_triplet.margin", 0.05, 2.0, log=True),
      ),
      _encoder_width,
      _encoder_hidden,
    ),
    Method(
      "mnsgan",
      "MNS-GAN (Ma, Wang, Hou, ICECE 2021)",
      True,
      _mnsgan,
      (
        Param("loss.multi_negative.tau", 0.02, 1.0, log=True),
        Param("loss.multi_negative.negatives", choices=("all", "hardest", "per_class")),
        Param("loss.multi_negative.k", choices=(1, 3, 5, 10)),
        Param("loss.multi_negative.intra_weight", 0.0, 1.0),
        Param("loss.multi_negative.margin", 0.0, 0.5),
      ),
      _encoder_width,
      _encoder_hidden,
    ),
    Method(
      "ms2gan",
      "MS2GAN (Wu, Jing et al., Pattern Recognition 2020)",
      True,
      _ms2gan,
      (
        Param("loss.ms2gan_similarity.margin", 0.05, 2.0, log=True),
        Param("loss.ms2gan_difference.weight", 1e-3, 1.0, log=True),
        Param("loss.ms2gan_difference.margin", 0.1, 2.0),
        Param("model.mu", 0.0, 2.0),
      ),
      _ms2gan_width,
      _encoder_hidden,
    ),
    Method(
      "dscmr",
      "DSCMR (Zhen et al., CVPR 2019)",
      False,
      _dscmr,
      (
        Param("loss.dscmr_pairwise.weight", 1e-4, 1.0, log=True),
        Param("loss.dscmr_invariance.weight", 1e-3, 1.0, log=True),
      ),
      _dscmr_width,
      _dscmr_hidden,
    ),
  )
}


def get(name: str) -> Method:
  if name not in METHODS:
    raise ConfigError(f"unknown method {name!r}; choose one of {list(METHODS)}")
  return METHODS[name]


def names() -> list[str]:
  return list(METHODS)


def apply_params(config, method: str, values: dict, space: Sequence[Param] | None = None) -> None:
  """Sets the sampled `values` ({param name: value}) of `method`'s search space on `config`."""
  space = {p.name: p for p in (space or get(method).search_space)}
  for name, value in values.items():
    if name not in space:
      raise ConfigError(f"{name!r} is not in the search space of {method}")
    space[name].set(config, value)
