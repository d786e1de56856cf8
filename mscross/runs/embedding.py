"""Embedding splits with a generator's params: the one path by which the trainer (validation, the
final metrics.json), eval.py and `mscross.load` compute what is ranked, so all of them report
the same numbers for the same checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mscross import data
from mscross.methods import models

EMBED_BATCH = 4096


def _embed(kind: str, net: models.CrossModalNet, fused: bool) -> Callable:
  def embed(gen_params, inputs, mu, label_weight):
    out = net.apply({"params": gen_params}, inputs)
    weight = label_weight if fused else 0.0
    return models.retrieval_embeddings(out, kind=kind, mu=mu, label_weight=weight)

  return embed


def make_embed_fn(kind: str, net: models.CrossModalNet, *, fused: bool = False) -> Callable:
  """jitted (gen_params, inputs {modality: [N, d]}, mu, label_weight) -> [K, N, e], the ranked
  embeddings of retrieval `kind` (`settings.Retrieval`); `fused`: the predicted labels are fused
  in at `label_weight`."""
  return jax.jit(_embed(kind, net, fused))


def make_population_embed_fn(kind: str, net: models.CrossModalNet, *, fused: bool = False):
  """jitted (gen_params [P, ...], inputs, mu [P], label_weight [P]) -> [P, K, N, e]."""
  return jax.jit(jax.vmap(_embed(kind, net, fused), in_axes=(0, None, 0, 0)))


def batches_of(split: data.Split):
  """The split's features as device inputs, EMBED_BATCH rows at a time."""
  for start in range(0, len(split), EMBED_BATCH):
    yield {m: jnp.asarray(x[start : start + EMBED_BATCH]) for m, x in split.features.items()}


def embed_split(embed_fn, gen_params, split: data.Split, mu, label_weight) -> np.ndarray:
  """Embeddings [..., K, N, e] of a (transformed) split, in batches of EMBED_BATCH rows."""
  parts = [
    np.asarray(embed_fn(gen_params, inputs, mu, label_weight)) for inputs in batches_of(split)
  ]
  return np.concatenate(parts, axis=-2)
