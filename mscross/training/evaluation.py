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


def make_population_disc_accuracy_fn(
  net: models.CrossModalNet, disc: models.ModalityDiscriminator
) -> Callable:
  """jitted (gen_params [P, ...], disc_params [P, ...], inputs) -> [P] correct counts: how many
  of the K*N embeddings the discriminator assigns to the modality they came from. The game's
  state: near K*N the encoders leave the modalities apart, near K*N/K the adversary has won."""

  def correct(gen_params, disc_params, inputs):
    emb = net.apply({"params": gen_params}, inputs)["emb"]  # [K, N, e]
    predicted = jnp.argmax(disc.apply({"params": disc_params}, emb), axis=-1)  # [K, N]
    return jnp.sum(predicted == jnp.arange(emb.shape[0])[:, None])

  return jax.jit(jax.vmap(correct, in_axes=(0, 0, None)))


def disc_accuracy(fn, gen_params, disc_params, split: data.Split) -> np.ndarray:
  """[P] each member's discriminator's modality accuracy on a (transformed) split (chance:
  1/K), in batches of EMBED_BATCH rows."""
  total = 0
  for start in range(0, len(split), EMBED_BATCH):
    inputs = {m: jnp.asarray(x[start : start + EMBED_BATCH]) for m, x in split.features.items()}
    total = total + np.asarray(fn(gen_params, disc_params, inputs), np.float64)
  return total / (len(split) * len(split.modalities))


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
