"""Methods as compositions of weighted loss terms.

A method is nothing but a set of loss terms (pure functions registered here under a name) with
weights and options given by `config.loss.<term>`, plus the choice of retrieval embedding
(`config.model.retrieval`) and whether the modality discriminator plays (`config.adv`). The
adversarial term itself is added by the trainer (`mscross.train_step`), because the discriminator
and the generator see it with opposite signs.

Adding a loss: write the pure function in `mscross/losses.py`, register a term here with
`@loss_term("name")` that maps network outputs to its arguments, and add
`config.loss.name = dict(weight=..., <options>)` to a config. Options are passed as keyword
arguments, so `--config.loss.name.<option>=...` overrides them from the command line.

Every term has the signature `fn(out, batch, *, params, rng, **options) -> scalar`, where `out`
is the `CrossModalNet` output dict, `batch` holds "image", "text", "label" ([B, C] multi-hot),
`params` the generator's params (for regularisers) and `rng` a PRNG key for sampled terms.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mscross import losses
from mscross.errors import ConfigError

TermFn = Callable[..., jax.Array]
LOSS_TERMS: dict[str, TermFn] = {}

METHODS = ("acmr", "mnsgan", "ms2gan", "dscmr")


def loss_term(name: str) -> Callable[[TermFn], TermFn]:
  """Registers `fn` as the loss term `name` (see the module docstring for its signature)."""

  def register(fn: TermFn) -> TermFn:
    if name in LOSS_TERMS:
      raise ValueError(f"loss term {name!r} is already registered")
    LOSS_TERMS[name] = fn
    return fn

  return register


@loss_term("label")
def _label(out, batch, *, params, rng, multilabel: bool = False):
  y = batch["label"]
  ce_img = losses.label_cross_entropy(out["logits_img"], y, multilabel=multilabel)
  ce_txt = losses.label_cross_entropy(out["logits_txt"], y, multilabel=multilabel)
  return jnp.mean(ce_img) + jnp.mean(ce_txt)


@loss_term("reg")
def _reg(out, batch, *, params, rng):
  return losses.frobenius_regulariser(params)


@loss_term("acmr_triplet")
def _acmr_triplet(out, batch, *, params, rng, margin: float = 0.5, negative: str = "random"):
  return losses.acmr_triplet_loss(
    out["img"], out["txt"], batch["label"], margin=margin, rng=rng, negative=negative
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
    out["img"],
    out["txt"],
    batch["label"],
    tau=tau,
    negatives=negatives,
    k=k,
    intra_weight=intra_weight,
    margin=margin,
  )


@loss_term("ms2gan_similarity")
def _ms2gan_similarity(out, batch, *, params, rng, margin: float = 1.0, mining: str = "all"):
  return losses.ms2gan_similarity_loss(
    out["spec_img"],
    out["img"],
    out["spec_txt"],
    out["txt"],
    batch["label"],
    margin=margin,
    mining=mining,
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
  return diff(out["spec_img"], out["img"]) + diff(out["spec_txt"], out["txt"])


@loss_term("dscmr_label")
def _dscmr_label(out, batch, *, params, rng):
  return losses.dscmr_label_loss(out["logits_img"], out["logits_txt"], batch["label"])


@loss_term("dscmr_pairwise")
def _dscmr_pairwise(out, batch, *, params, rng):
  return losses.dscmr_pairwise_loss(out["img"], out["txt"], batch["label"])


@loss_term("dscmr_invariance")
def _dscmr_invariance(out, batch, *, params, rng):
  return losses.dscmr_invariance_loss(out["img"], out["txt"])


def active_terms(loss_config) -> dict[str, tuple[float, dict]]:
  """{term name: (weight, options)} of the terms with a non-zero weight; validates names."""
  terms = {}
  for name, entry in loss_config.items():
    if name not in LOSS_TERMS:
      raise ConfigError(f"unknown loss term config.loss.{name}; registered: {sorted(LOSS_TERMS)}")
    entry = dict(entry)
    weight = float(entry.pop("weight", 1.0))
    if weight != 0.0:
      terms[name] = (weight, entry)
  if not terms:
    raise ConfigError("config.loss has no term with a non-zero weight")
  return terms


def embedding_loss(
  terms: dict[str, tuple[float, dict]], out, batch, *, params, rng
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of the active terms, and each unweighted term for logging."""
  parts = {}
  for i, (name, (_, options)) in enumerate(sorted(terms.items())):
    parts[name] = LOSS_TERMS[name](
      out, batch, params=params, rng=jax.random.fold_in(rng, i), **options
    )
  total = sum(terms[name][0] * value for name, value in parts.items())
  return total, parts


def check_method(name: str) -> None:
  if name not in METHODS:
    raise ConfigError(f"unknown method {name!r}; choose one of {list(METHODS)}")
