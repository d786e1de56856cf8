"""The registries of loss terms and of methods: what each method trains, and what a sweep searches.

A LOSS TERM maps the network's outputs to a pure loss of `mscross.methods.losses`:
`fn(out, batch, *, params, rng, **options) -> scalar`, where `out` holds the `CrossModalNet`
outputs of the K modalities ("spec" [K, B, d_s], "emb" [K, B, d], "logits" [K, B, C] when the
data is labelled), `batch["label"]` the [B, C] multi-hot labels of the pairs (the identity
[B, B] for unlabelled data: every pair is its own class), `params` the generator's params (for
regularisers) and `rng` a PRNG key for sampled terms. A term's options and their defaults are
the keyword-only parameters of the functions named in `options_of` and of the term itself, read
from their signatures: nothing else states a default. Float options and the weight are traced
(one compiled program serves every value, and population members can differ in them); strings,
ints and bools are static. The adversarial term is not one of them: the train step adds it,
because the discriminator and the generator see it with opposite signs.

A METHOD is `configure(config)`: its network shape and its terms with weights (and the options
where it departs from the defaults), plus whether the modality discriminator plays and its
`search_space`: the knobs every method shares (learning rate, embedding and hidden width,
regulariser weight, batch size, and the adversary's weight and `d_steps` where there is one)
followed by its own. This is the one list of methods: presets, the run plan, the search, the
docs and the benchmarks read it.

Adding a loss: write the pure function in `losses.py`, register a term here with `@loss_term`,
and name it in a method's `configure` (or `--config.loss.<name>.weight` of a config that has
it). Adding a method: one more `Method` in `METHODS`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from mscross import dotted
from mscross.errors import ConfigError
from mscross.methods import losses

# ----------------------------------------------------------------------------------------------
# Loss terms
# ----------------------------------------------------------------------------------------------

TermFn = Callable[..., jax.Array]
_SUPPLIED = ("params", "rng")  # keyword arguments the train step passes, never options


@dataclasses.dataclass(frozen=True)
class LossTerm:
  """A registered loss term (a run's active terms are `mscross.training.plan.ActiveTerm`)."""

  name: str
  fn: TermFn
  defaults: dict  # every option with its default, from the signatures
  # Terms that predict CLASS labels cannot train on unlabelled data; the others take the
  # identity labels of instance-level retrieval.
  needs_labels: bool = False


LOSS_TERMS: dict[str, LossTerm] = {}


def _keyword_defaults(fn: Callable) -> dict:
  out = {}
  for name, p in inspect.signature(fn).parameters.items():
    if p.kind is not p.KEYWORD_ONLY or name in _SUPPLIED:
      continue
    if p.default is p.empty:
      raise ValueError(f"{fn.__name__}: option {name!r} needs a default in the signature")
    out[name] = p.default
  return out


def loss_term(
  name: str, *, options_of: Sequence[Callable] = (), needs_labels: bool = False
) -> Callable[[TermFn], TermFn]:
  """Registers `fn` as the loss term `name`; its options are the keyword-only parameters (with
  defaults) of the functions in `options_of` and of `fn` itself."""

  def register(fn: TermFn) -> TermFn:
    if name in LOSS_TERMS:
      raise ValueError(f"loss term {name!r} is already registered")
    defaults = {}
    for source in (*options_of, fn):
      defaults.update(_keyword_defaults(source))
    LOSS_TERMS[name] = LossTerm(name, fn, defaults, needs_labels)
    return fn

  return register


def term(name: str) -> LossTerm:
  if name not in LOSS_TERMS:
    raise ConfigError(f"unknown loss term config.loss.{name}; registered: {sorted(LOSS_TERMS)}")
  return LOSS_TERMS[name]


def complete_options(name: str, entry) -> dict:
  """`{weight, every option}` of term `name`: the config's `entry` over the defaults."""
  known = term(name).defaults
  entry = dict(entry)
  unknown = sorted(set(entry) - set(known) - {"weight"})
  if unknown:
    raise ConfigError(
      f"config.loss.{name} has no option {', '.join(unknown)}; its options: "
      f"{', '.join(['weight', *sorted(known)])}"
    )
  return {"weight": 1.0, **known, **entry}


@loss_term("label", options_of=(losses.label_cross_entropy,), needs_labels=True)
def _label(out, batch, *, params, rng, **options):
  return sum(
    jnp.mean(losses.label_cross_entropy(logits, batch["label"], **options))
    for logits in out["logits"]
  )


@loss_term("reg")
def _reg(out, batch, *, params, rng):
  return losses.frobenius_regulariser(params)


@loss_term("acmr_triplet", options_of=(losses.acmr_triplet_loss,))
def _acmr_triplet(out, batch, *, params, rng, **options):
  return losses.acmr_triplet_loss(out["emb"], batch["label"], rng=rng, **options)


@loss_term("multi_negative", options_of=(losses.multi_negative_loss,))
def _multi_negative(out, batch, *, params, rng, **options):
  return losses.multi_negative_loss(out["emb"], batch["label"], **options)


@loss_term("ms2gan_similarity", options_of=(losses.ms2gan_similarity_loss,))
def _ms2gan_similarity(out, batch, *, params, rng, **options):
  return losses.ms2gan_similarity_loss(out["spec"], out["emb"], batch["label"], **options)


@loss_term("ms2gan_difference", options_of=(losses.large_margin_difference_loss,))
def _ms2gan_difference(out, batch, *, params, rng, kind: str = "large_margin", **options):
  # `margin` belongs to the large-margin kind; the orthogonality kind has no option.
  if kind == "large_margin":
    diff = lambda f, s: losses.large_margin_difference_loss(f, s, **options)
  elif kind == "orthogonality":
    diff = losses.orthogonality_difference_loss
  else:
    raise ConfigError(
      f"loss.ms2gan_difference.kind must be large_margin or orthogonality: {kind!r}"
    )
  return sum(diff(f, s) for f, s in zip(out["spec"], out["emb"], strict=True))


@loss_term("dscmr_label", options_of=(losses.dscmr_label_loss,), needs_labels=True)
def _dscmr_label(out, batch, *, params, rng, **options):
  return losses.dscmr_label_loss(out["logits"], batch["label"], **options)


@loss_term("dscmr_pairwise")
def _dscmr_pairwise(out, batch, *, params, rng):
  return losses.dscmr_pairwise_loss(out["emb"], batch["label"])


@loss_term("dscmr_invariance")
def _dscmr_invariance(out, batch, *, params, rng):
  return losses.dscmr_invariance_loss(out["emb"])


# ----------------------------------------------------------------------------------------------
# Methods and their search spaces
# ----------------------------------------------------------------------------------------------


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
  # Settings of the label classifier's predictions (retrieval in label space, smoothing of the
  # label loss): searched on labelled data only.
  needs_labels: bool = False

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
    else:
      dotted.set_(config, self.name, float(value) if self.continuous else value)


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  title: str
  adversarial: bool
  configure: Callable  # (config) -> None: network shape and loss terms
  own_space: tuple[Param, ...]
  set_embedding_width: Callable  # (config, width of the common embedding) -> None
  set_hidden_width: Callable  # (config, width of the hidden layers) -> None
  retrieval: str = "common"  # what the method ranks (`model.retrieval`)
  label_term: str = "label"  # its label-prediction loss term

  @property
  def search_space(self) -> tuple[Param, ...]:
    shared = [
      Param("optim.lr", 3e-5, 1e-2, log=True),
      # The same widths for every method. They stop short of DSCMR's published 2048/1024
      # network: on the benchmark's small datasets such widths cost hours of CPU per sweep.
      Param("embedding_width", choices=(32, 64, 128, 256, 512), apply=self.set_embedding_width),
      Param("hidden_width", choices=(128, 256, 512, 1024), apply=self.set_hidden_width),
      Param("loss.reg.weight", 1e-7, 1e-2, log=True),
      Param("train.batch_size", choices=(32, 64, 128)),
      # Regularisation and averaging, the same for every method; each range holds its "off".
      Param("model.dropout_input", 0.0, 0.5),
      Param("model.dropout_hidden", 0.0, 0.5),
      Param("optim.weight_decay", 0.0, 0.1),
      Param("train.ema_decay", choices=(0.0, 0.99, 0.999)),
      # Retrieval in label space: the predicted labels alone, or fused with what the method ranks.
      Param("model.retrieval", choices=(self.retrieval, "label"), needs_labels=True),
      Param("model.label_weight", 0.0, 2.0, needs_labels=True),
      Param(f"loss.{self.label_term}.smoothing", 0.0, 0.3, needs_labels=True),
    ]
    if self.adversarial:
      shared += [
        Param("adv.weight", 0.01, 3.0, log=True),
        Param("adv.d_steps", choices=(1, 2, 3)),
        # The ramp's length, searched like the weight (traced, so members differ in it): runs
        # stop by patience after a few hundred to a few thousand steps, and a ramp longer than
        # the run never lets the adversary reach its weight.
        Param("adv.ramp_steps", 100.0, 3000.0, log=True),
      ]
    return (*shared, *self.own_space)


def _acmr(c):
  c.model.encoder_layers = (512,)
  c.model.encoder_width = 64
  c.loss = dict(label=dict(weight=1.0), acmr_triplet=dict(weight=1.0), reg=dict(weight=1e-4))


def _mnsgan(c):
  c.model.encoder_layers = (512,)
  c.model.encoder_width = 64
  c.loss = dict(label=dict(weight=1.0), multi_negative=dict(weight=1.0), reg=dict(weight=1e-4))


def _ms2gan(c):
  c.model.encoder_layers = (512,)
  c.model.encoder_width = 128
  c.model.shared_layers = (128, 128)
  c.model.classifier_input = "concat"
  c.model.retrieval = "joint"
  c.model.mu = 1.0
  c.disc.layers = (32,)
  c.loss = dict(
    label=dict(weight=1.0),
    ms2gan_similarity=dict(weight=1.0),
    ms2gan_difference=dict(weight=0.1),
    reg=dict(weight=0.0),
  )


def _dscmr(c):
  # Linear(d, 2048) + ReLU per modality, then ONE shared Linear(2048, 1024), then the classifier.
  c.model.encoder_layers = ()
  c.model.encoder_width = 2048
  c.model.shared_layers = (1024,)
  c.model.activation = "relu"
  c.model.shared_activate_final = False
  c.optim.lr = 1e-4
  c.train.batch_size = 100
  c.loss = dict(
    dscmr_label=dict(weight=1.0),
    dscmr_pairwise=dict(weight=1e-3),
    dscmr_invariance=dict(weight=1e-1),
    reg=dict(weight=0.0),
  )


def _setter(*targets: tuple[str, int]) -> Callable:
  """A width setter: each (key, repeat) target gets the width v as v (repeat 0) or as a tuple
  of `repeat` layers of width v."""

  def apply(c, v):
    for key, repeat in targets:
      dotted.set_(c, key, int(v) if repeat == 0 else (int(v),) * repeat)

  return apply


# MS2GAN's specific and shared features have the same width, so the difference loss compares like
# with like; DSCMR's encoders are one layer, whose output feeds the shared projection.
_WIDTH, _HIDDEN = _setter(("model.encoder_width", 0)), _setter(("model.encoder_layers", 1))

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
      _WIDTH,
      _HIDDEN,
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
      _WIDTH,
      _HIDDEN,
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
      _setter(("model.encoder_width", 0), ("model.shared_layers", 2)),
      _HIDDEN,
      retrieval="joint",
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
      _setter(("model.shared_layers", 1)),
      _WIDTH,
      label_term="dscmr_label",
    ),
  )
}


def get(name: str) -> Method:
  if name not in METHODS:
    raise ConfigError(f"unknown method {name!r}; choose one of {list(METHODS)}")
  return METHODS[name]


def names() -> list[str]:
  return list(METHODS)


# Search-space names renamed since earlier versions (stored presets, studies), old -> new.
RENAMED_PARAMS = {"width": "embedding_width", "hidden": "hidden_width"}


def apply_params(config, method: str, values: dict, space: Sequence[Param] | None = None) -> None:
  """Sets the sampled `values` ({param name: value}) of `method`'s search space on `config`."""
  space = {p.name: p for p in (space or get(method).search_space)}
  for name, value in values.items():
    if name in RENAMED_PARAMS:
      raise ConfigError(
        f"search value {name!r} is now {RENAMED_PARAMS[name]!r}: rename it (it was written by an "
        "earlier mscross)"
      )
    if name not in space:
      raise ConfigError(f"{name!r} is not in the search space of {method}")
    space[name].set(config, value)
