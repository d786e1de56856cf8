"""Embedding splits with trained generator params and scoring them: the one path by which the
trainer (validation, the final metrics.json) and `eval.py` (through `mscross.retrieval.trained`)
compute retrieval metrics, so both report the same numbers for the same checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mscross import data, metrics
from mscross.methods import models

EMBED_BATCH = 4096


def make_embed_fn(config, net: models.CrossModalNet) -> Callable:
  """jitted (gen_params, inputs {modality: [N, d]}, mu) -> [K, N, e], the ranked embeddings."""

  @jax.jit
  def embed(gen_params, inputs, mu):
    out = net.apply({"params": gen_params}, inputs)
    return models.retrieval_embeddings(out, kind=config.model.retrieval, mu=mu)

  return embed


def make_population_embed_fn(config, net: models.CrossModalNet) -> Callable:
  """jitted (gen_params [P, ...], inputs, mu [P]) -> [P, K, N, e]."""

  def embed(gen_params, inputs, mu):
    out = net.apply({"params": gen_params}, inputs)
    return models.retrieval_embeddings(out, kind=config.model.retrieval, mu=mu)

  return jax.jit(jax.vmap(embed, in_axes=(0, None, 0)))


def embed_split(embed_fn, gen_params, split: data.Split, mu) -> np.ndarray:
  """Embeddings [..., K, N, e] of a (transformed) split, in batches of EMBED_BATCH rows."""
  parts = []
  for start in range(0, len(split), EMBED_BATCH):
    inputs = {m: jnp.asarray(x[start : start + EMBED_BATCH]) for m, x in split.features.items()}
    parts.append(np.asarray(embed_fn(gen_params, inputs, mu)))
  return np.concatenate(parts, axis=-2)


def metrics_of(config, embeddings: np.ndarray, split: data.Split) -> dict[str, float]:
  """Retrieval metrics of every direction (and their average) of embeddings [K, N, e]."""
  return metrics.retrieval_metrics(
    dict(zip(split.modalities, embeddings, strict=True)),
    split.label,
    ks=tuple(config.eval.ks),
    map_ks=tuple(config.eval.map_ks),
    recall_ks=tuple(config.eval.recall_ks),
    block_size=int(config.eval.block_size) or None,
  )


def mean_and_std(results: list[dict]) -> tuple[dict, dict]:
  """Per key, the mean and sample std (0 for one result) over members' metric dicts."""
  if not results:
    return {}, {}
  mean, std = {}, {}
  for key in results[0]:
    values = [r[key] for r in results if not math.isnan(r[key])]
    mean[key] = float(np.mean(values)) if values else float("nan")
    std[key] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return mean, std
