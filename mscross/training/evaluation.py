"""What training reads of the adversarial game on a split: the discriminator's modality accuracy.
Embedding and scoring splits is `mscross.runs.embedding` and `mscross.runs.settings.Evaluation`,
shared with inference."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mscross import data
from mscross.methods import models
from mscross.runs import embedding


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
  1/K), in batches of `embedding.EMBED_BATCH` rows."""
  total = 0
  for inputs in embedding.batches_of(split):
    total = total + np.asarray(fn(gen_params, disc_params, inputs), np.float64)
  return total / (len(split) * len(split.modalities))
