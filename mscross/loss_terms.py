"""The loss-term registry: each term maps the network's outputs to a pure loss of `losses.py`.

A method (`mscross/methods.py`) is a set of these terms with weights and options given by
`config.loss.<term>`. The adversarial term is not one of them: the trainer adds it
(`mscross/train_step.py`), because the discriminator and the generator see it with opposite
signs.

Adding a loss: write the pure function in `mscross/losses.py`, register a term here with
`@loss_term("name")` that maps network outputs to its arguments, and add
`config.loss.name = dict(weight=..., <options>)` to a config. Options are passed as keyword
arguments, so `--config.loss.name.<option>=...` overrides them from the command line. Float
options and the weight are passed as traced scalars (one compiled program serves every value,
and population members can differ in them); strings, ints and bools are static.

Every term has the signature `fn(out, batch, *, params, rng, **options) -> scalar`, where `out`
is the `CrossModalNet` output ("spec" [K, B, d_s], "emb" [K, B, d], "logits" [K, B, C] when the
data is labelled) of the K modalities, `batch["label"]` the [B, C] multi-hot labels of the pairs
(the identity [B, B] for unlabelled data: every pair is its own class), `params` the generator's
params (for regularisers) and `rng` a PRNG key for sampled terms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mscross import losses
from mscross.errors import ConfigError

TermFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Term:
  fn: TermFn
  # Terms that predict CLASS labels cannot train on unlabelled data; the others take the
  # identity labels of instance-level retrieval.
  needs_labels: bool = False


LOSS_TERMS: dict[str, Term] = {}


def loss_term(name: str, *, needs_labels: bool = False) -> Callable[[TermFn], TermFn]:
  """Registers `fn` as the loss term `name` (see the module docstring for its signature)."""

  def register(fn: TermFn) -> TermFn:
    if name in LOSS_TERMS:
      raise ValueError(f"loss term {name!r} is already registered")
    LOSS_TERMS[name] = Term(fn, needs_labels)
    return fn

  return register


@loss_term("label", needs_labels=True)
def _label(out, batch, *, params, rng, multilabel: bool = False):
  per_modality = [
    jnp.mean(losses.label_cross_entropy(logits, batch["label"], multilabel=multilabel))
    for logits in out["logits"]
  ]
  return sum(per_modality)


@loss_term("reg")
def _reg(out, batch, *, params, rng):
  return losses.frobenius_regulariser(params)


@loss_term("acmr_triplet")
def _acmr_triplet(out, batch, *, params, rng, margin: float = 0.5, negative: str = "random"):
  return losses.acmr_triplet_loss(
    out["emb"], batch["label"], margin=margin, rng=rng, negative=negative
  )


@loss_term("multi_negative")
def _multi_negative(
  out,
  batch,
  *,
  params,
  rng,
  tau: float = 0.1,
  negatives: str = "all",
  k: int = 5,
  intra_weight: float = 0.5,
  margin: float = 0.0,
):
  return losses.multi_negative_loss(
    out["emb"],
    batch["label"],
    tau=tau,
    negatives=negatives,
    k=k,
    intra_weight=intra_weight,
    margin=margin,
  )


@loss_term("ms2gan_similarity")
def _ms2gan_similarity(
  out, batch, *, params, rng, margin: float = 0.5, mining: str = "all", normalize: bool = True
):
  return losses.ms2gan_similarity_loss(
    out["spec"], out["emb"], batch["label"], margin=margin, mining=mining, normalize=normalize
  )


@loss_term("ms2gan_difference")
def _ms2gan_difference(out, batch, *, params, rng, kind: str = "large_margin", margin: float = 0.5):
  if kind == "large_margin":
    diff = lambda f, s: losses.large_margin_difference_loss(f, s, margin=margin)
  elif kind == "orthogonality":
    diff = losses.orthogonality_difference_loss
  else:
    raise ConfigError(
      f"loss.ms2gan_difference.kind must be large_margin or orthogonality: {kind!r}"
    )
  return sum(diff(f, s) for f, s in zip(out["spec"], out["emb"], strict=True))


@loss_term("dscmr_label", needs_labels=True)
def _dscmr_label(out, batch, *, params, rng):
  return losses.dscmr_label_loss(out["logits"], batch["label"])


@loss_term("dscmr_pairwise")
def _dscmr_pairwise(out, batch, *, params, rng):
  return losses.dscmr_pairwise_loss(out["emb"], batch["label"])


@loss_term("dscmr_invariance")
def _dscmr_invariance(out, batch, *, params, rng):
  return losses.dscmr_invariance_loss(out["emb"])


def active_terms(loss_config) -> dict[str, tuple[float, dict]]:
  """{term name: (weight, options)} of the terms with a non-zero weight; validates names."""
  terms = {}
  for name, entry in loss_config.items():
    if name not in LOSS_TERMS:
      raise ConfigError(f"unknown loss term config.loss.{name}; registered: {sorted(LOSS_TERMS)}")
    entry = dict(entry)
    weight = entry.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
      raise ConfigError(f"config.loss.{name}.weight must be a number, got {weight!r}")
    if weight != 0.0:
      terms[name] = (float(weight), entry)
  if not terms:
    raise ConfigError("config.loss has no term with a non-zero weight")
  return terms


def traced_options(terms: dict[str, tuple[float, dict]]) -> list[str]:
  """The dotted keys (`loss.<term>.weight`, `loss.<term>.<option>`) passed as traced scalars:
  the weights and every float option."""
  keys = []
  for name, (_, options) in sorted(terms.items()):
    keys.append(f"loss.{name}.weight")
    keys += [f"loss.{name}.{opt}" for opt, value in sorted(options.items()) if type(value) is float]
  return keys


def embedding_loss(
  terms: dict[str, tuple[float, dict]], hparams: dict, out, batch, *, params, rng
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of the active terms, and each unweighted term for logging.

  `hparams` holds the traced values of `traced_options(terms)`; they replace the config's.
  """
  parts, total = {}, jnp.zeros((), jnp.float32)
  for i, (name, (weight, options)) in enumerate(sorted(terms.items())):
    options = {opt: hparams.get(f"loss.{name}.{opt}", value) for opt, value in options.items()}
    parts[name] = LOSS_TERMS[name].fn(
      out, batch, params=params, rng=jax.random.fold_in(rng, i), **options
    )
    total = total + hparams.get(f"loss.{name}.weight", weight) * parts[name]
  return total, parts
