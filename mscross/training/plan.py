"""The run plan: a config resolved ONCE into what a run trains.

`resolve(config, spec)` checks the config's schema (`mscross.config.validate`), then resolves it
against the method and loss-term registries and the data: the method, its active loss terms with
their functions and every option, the population's members (seeds and hyperparameters), every
traced hyperparameter's value for each member (`HParams`), the static settings as typed records
(the networks' architecture, the adversary, the optimiser, the data and its feed, the schedule,
evaluation and what is ranked), the names of the step's metrics and the key of the compiled
program. The plan is the only input below the trainer: the program, the train step, the loop
and the evaluation take it, never the config.

Populations: a population of P members is one train state with a leading member axis. Members
differ in their seed (`seed + m`, unless `population.vary_seed` is off) and in the continuous
hyperparameters listed in `population.hparams`, a JSON object
{"dotted.key": [value of member 0, value of member 1, ...]}. Only TRACED keys may differ: the
learning rates, the weight decay, the adversary's weight and ramp, `model.mu` and
`model.label_weight`, the dropout rates, the weights' EMA decay, and each active loss term's
weight and float options. These enter the step as a pytree of float32 scalars (`HParams`),
never as constants of the program, so one compilation serves every value, and a later run of
other values (JAX's persistent compilation cache then skips compiling). The run's length
`train.steps` is traced too (the DANN schedule depends on it). A float setting that is 0.0 for
every member stays a Python constant: a zero often switches work off (MNS-GAN's intra-modal term,
dropout, weight decay, the weights' average), which a traced value
could not. Everything else (widths, batch size, strings, ints) fixes the program's shape.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from mscross import config as config_lib
from mscross import dotted, methods, metrics
from mscross.errors import ConfigError
from mscross.methods import registry
from mscross.methods.models import Architecture, DataSpec
from mscross.runs.inputs import DataSource
from mscross.runs.settings import Evaluation, population_sweep

BASE_TRACED = (
  "optim.lr",
  "optim.disc_lr",
  "optim.weight_decay",
  "adv.weight",
  "adv.ramp_steps",
  "model.mu",
  "model.label_weight",
  "model.dropout_input",
  "model.dropout_hidden",
  "train.ema_decay",
)
RUN_LENGTH = "train.steps"
STEP_METRICS = ("loss_emb", "loss_adv", "loss_disc", "lambda", "grad_norm_gen", "grad_norm_disc")

# Config keys that never shape the training loop's program: inputs of it (seeds, traced
# hyperparameters, the run's length) or settings of what runs around it.
_NOT_IN_PROGRAM = (
  "seed",
  "population.hparams",
  "population.vary_seed",
  "train.steps",
  "train.eval_every",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "train.patience",
  "train.max_nonfinite",
  "data.data_dir",
)


@dataclasses.dataclass(frozen=True)
class ActiveTerm:
  """A loss term of the run: its function, its options fixed in the program (strings, ints,
  bools) and the names of its float options, which come from the hyperparameters like its
  weight."""

  name: str
  fn: Callable
  static: dict
  floats: tuple[str, ...]

  def options(self, values: dict) -> dict:
    """Every option's value, the floats from the step's hyperparameters (`HParams.inside`)."""
    return {**self.static, **{o: values[f"loss.{self.name}.{o}"] for o in self.floats}}

  def weight(self, values: dict):
    return values[f"loss.{self.name}.weight"]


@dataclasses.dataclass(frozen=True)
class HParams:
  """Every hyperparameter that may be traced, one value per member, and the keys that are: the
  one record of a run's continuous values. The state carries `initial()`; the step reads
  `inside(state.hparams)`; the host reads `of(key)`."""

  values: dict  # {candidate key: (value of member 0, ...)}
  traced: tuple[str, ...]  # the keys that enter the step as traced scalars

  def initial(self) -> dict[str, jnp.ndarray]:
    """{traced key: float32 [P]}: the members' values, as the train state carries them."""
    return {k: jnp.asarray(self.values[k], jnp.float32) for k in self.traced}

  def inside(self, traced: dict) -> dict:
    """Every candidate hyperparameter inside the step: the traced values of `traced` (one
    member's `state.hparams`), the others as the Python constants they are (0.0)."""
    return {k: traced[k] if k in self.traced else float(v[0]) for k, v in self.values.items()}

  def of(self, key: str) -> np.ndarray:
    """float32 [P]: each member's value of a candidate key (e.g. "model.mu")."""
    return np.asarray(self.values[key], np.float32)


@dataclasses.dataclass(frozen=True)
class Adversary:
  """The modality discriminator's game (`config.adv`)."""

  enabled: bool
  mode: str  # "alternating" or "reversal"
  schedule: str  # "dann" or "constant"
  d_steps: int
  generator_loss: str  # "minimax" or "confusion"


@dataclasses.dataclass(frozen=True)
class Optimiser:
  """Adam's static settings (`config.optim`; the learning rates are hyperparameters)."""

  b1: float
  b2: float
  grad_clip: float  # 0: off


@dataclasses.dataclass(frozen=True)
class DataFeed:
  """How batches reach the devices (`config.train.batch_size`, `config.parallel`)."""

  batch_size: int  # the global batch
  num_devices: int  # 0: every device
  feed: str  # "auto", "device" or "host"
  host_steps: int


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When a run evaluates, saves and stops (`config.train`)."""

  steps: int
  eval_every: int
  checkpoint_every: int
  keep_checkpoints: int
  patience: int
  max_nonfinite: int


@dataclasses.dataclass(frozen=True)
class RunPlan:
  method: methods.Method
  spec: DataSpec | None
  data: DataSource
  architecture: Architecture
  retrieval: str  # what is ranked: "common" or "joint" (each member's mu is a hyperparameter)
  terms: tuple[ActiveTerm, ...]  # the active terms, by name
  seeds: tuple[int, ...]  # per member
  hparams: HParams
  adversary: Adversary
  optimiser: Optimiser
  feed: DataFeed
  schedule: Schedule
  evaluation: Evaluation
  # What shapes the training loop beyond its arguments; None: no spec, or a loss term from
  # outside the package (see `_program_key`), and the loop is traced as usual.
  program_key: str | None

  @property
  def size(self) -> int:
    return len(self.seeds)

  @property
  def adversarial(self) -> bool:
    return self.adversary.enabled

  @property
  def ema(self) -> bool:
    """Whether the state keeps an average of the generator's weights (some member's
    `train.ema_decay` is not 0), which evaluation, selection and the best checkpoint use."""
    return "train.ema_decay" in self.hparams.traced

  @property
  def label_fused(self) -> bool:
    """Whether the ranked embeddings fuse the predicted label distribution (`label_weight`)."""
    return "model.label_weight" in self.hparams.traced

  @property
  def metric_names(self) -> tuple[str, ...]:
    return (*STEP_METRICS, *(f"loss_{t.name}" for t in self.terms))

  def describe(self) -> list[dict]:
    """Per member: its seed and the values of the keys that differ between members."""
    h = self.hparams
    differing = [k for k in h.traced if len(set(h.values[k])) > 1]
    return [
      {"seed": s, **{k: float(h.values[k][m]) for k in differing}} for m, s in enumerate(self.seeds)
    ]


def resolve(config, spec: DataSpec | None = None) -> RunPlan:
  """The plan of `config`; ConfigError (one line) for anything it cannot train.

  Args:
    config: a config of the `mscross.config` schema.
    spec: the training data's modalities, widths and classes, once known; without it the
      checks that need the data are skipped and the plan has no program key.
  """
  config_lib.validate(config)
  method = methods.get(config.method)
  terms, term_values = _terms(config, spec)
  size = int(config.population.size)
  defaults = {**{k: dotted.get(config, k) for k in BASE_TRACED}, **term_values}
  sweep = _sweep(config, defaults)
  seeds = tuple(int(config.seed) + (m if config.population.vary_seed else 0) for m in range(size))
  values = {
    key: tuple(float(v) for v in sweep.get(key, [value] * size)) for key, value in defaults.items()
  }
  values[RUN_LENGTH] = (float(config.train.steps),) * size
  traced = tuple(k for k, v in values.items() if any(x != 0.0 for x in v))
  if spec is not None:
    _check_data(config, spec)
  key = None if spec is None else _program_key(config, spec, traced, terms)
  a, t, o, p = config.adv, config.train, config.optim, config.parallel
  return RunPlan(
    method=method,
    spec=spec,
    data=DataSource.of(config),
    architecture=Architecture.of(config),
    retrieval=config.model.retrieval,
    terms=terms,
    seeds=seeds,
    hparams=HParams(values, traced),
    adversary=Adversary(bool(a.enabled), a.mode, a.schedule, int(a.d_steps), a.generator_loss),
    optimiser=Optimiser(float(o.b1), float(o.b2), float(o.grad_clip)),
    feed=DataFeed(int(t.batch_size), int(p.num_devices), p.feed, int(p.host_steps)),
    schedule=Schedule(
      int(t.steps),
      int(t.eval_every),
      int(t.checkpoint_every),
      int(t.keep_checkpoints),
      int(t.patience),
      int(t.max_nonfinite),
    ),
    evaluation=Evaluation.of(config),
    program_key=key,
  )


def _terms(config, spec) -> tuple[tuple[ActiveTerm, ...], dict]:
  """The active terms, and {loss.<term>.<weight or float option>: value} of each."""
  terms, values = [], {}
  for name in sorted(config.loss.keys()):
    entry = registry.complete_options(name, config.loss[name])
    weight = entry.pop("weight")
    if isinstance(weight, bool) or not isinstance(weight, int | float):
      raise ConfigError(f"config.loss.{name}.weight must be a number, got {weight!r}")
    if weight == 0.0:
      continue
    floats = tuple(o for o, v in sorted(entry.items()) if type(v) is float)
    static = {o: v for o, v in entry.items() if o not in floats}
    terms.append(ActiveTerm(name, registry.term(name).fn, static, floats))
    values[f"loss.{name}.weight"] = weight
    values.update({f"loss.{name}.{o}": entry[o] for o in floats})
  if not terms:
    raise ConfigError("config.loss has no term with a non-zero weight")
  labelled = bool(config.data.labels) and (spec is None or spec.num_classes > 0)
  needy = [t.name for t in terms if registry.term(t.name).needs_labels]
  if needy and not labelled:
    raise ConfigError(
      f"loss term(s) {', '.join(needy)} predict class labels, but the training data has none "
      f"(data.labels={config.data.labels}); set their weight to 0 or use labelled data"
    )
  return tuple(terms), values


def _sweep(config, candidates: dict) -> dict[str, list]:
  """`population.hparams`, checked: traced keys only, one finite number per member."""
  sweep = population_sweep(config)
  allowed = set(candidates)
  for key in sweep:
    if key not in allowed:
      raise ConfigError(
        f"config.population.hparams: {key!r} cannot differ between members (it changes the "
        f"program's shape or is not an active float setting); these can: {sorted(allowed)}"
      )
  return sweep


def _check_data(config, spec: DataSpec) -> None:
  modalities = spec.modalities
  if len(modalities) < 2:
    raise ConfigError(f"cross-modal retrieval needs 2 or more modalities, got {modalities}")
  for section in ("model.encoders", "data.powers"):
    unknown = sorted(set(dotted.get(config, section).keys()) - set(modalities))
    if unknown:
      raise ConfigError(
        f"config.{section} names {', '.join(unknown)}, which the dataset "
        f"{config.data.name!r} does not have (its modalities: {', '.join(modalities)})"
      )
  if spec.num_classes == 0 and (config.model.retrieval == "label" or config.model.label_weight):
    raise ConfigError(
      "config.model.retrieval=label and config.model.label_weight rank the predicted labels, "
      f"but the training data has none (data.labels={config.data.labels})"
    )
  metric = config.eval.select_metric
  prefix = metric.split("_", 1)[0]
  directions = [key for key, _, _ in metrics.direction_names(tuple(modalities))]
  if prefix != "avg" and prefix not in directions:
    raise ConfigError(
      f"config.eval.select_metric={metric!r}: its direction must be avg or one of "
      f"{', '.join(directions)}"
    )


def _program_key(config, spec: DataSpec, traced, terms) -> str | None:
  """What shapes the training loop beyond its arguments' shapes (see `program_cache`).

  The package's own code is in the key through `program_cache.source_digest`. A loss term
  registered from outside the package is not: its function, the helpers it calls and the
  values it closes over can all change under the same name, and a stale traced program would
  train the old loss without a word. Such plans get no key, so their loop is traced each run.
  """
  if any(not _inside_package(t.fn) for t in terms):
    return None
  skip = {*traced, *_NOT_IN_PROGRAM}
  flat = dotted.flatten(config)
  kept = {k: v for k, v in flat.items() if k not in skip and not k.startswith("eval.")}
  return json.dumps({"config": kept, "spec": spec.to_json()}, sort_keys=True, default=str)


def _inside_package(fn) -> bool:
  module = inspect.getmodule(fn)
  return module is not None and module.__name__.split(".")[0] == __name__.split(".")[0]
