"""Cosine similarity, the score every ranking of `mscross.metrics` and `mscross.retrieval` uses.

Rows are scaled to unit length; a zero row stays zero, so it has similarity 0 to every item
instead of NaN. Similarities are float32 matrix products at HIGHEST precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

EPS = 1e-12


def normalize(x, eps: float = EPS) -> Array:
  """Rows scaled to unit l2 norm: THE l2 normalisation of mscross (metrics, retrieval
  embeddings and the losses); traceable, and differentiable everywhere.

  Args:
    x: [..., d] embeddings.
    eps: norms are floored at `eps`: a zero row stays zero, with a finite gradient.

  Returns:
    [..., d] float32 unit rows; a zero row stays zero.
  """
  x = jnp.asarray(x, jnp.float32)
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * lax.rsqrt(jnp.maximum(sq, eps * eps))


@jax.jit
def normalize_jit(x: Array) -> Array:
  """`normalize`, compiled: for whole arrays outside a jitted function. [..., d] -> [..., d]."""
  return normalize(x)


@jax.jit
def cosine_similarity(q: Array, g: Array) -> Array:
  """All-pairs cosine similarity.

  Args:
    q: [Q, d] query embeddings.
    g: [G, d] gallery embeddings.

  Returns:
    [Q, G] float32 similarities; a zero vector has similarity 0 to every item.
  """
  return jnp.matmul(normalize(q), normalize(g).T, precision=lax.Precision.HIGHEST)


@jax.jit
def similarities_to_unit(q: Array, g_unit: Array) -> Array:
  """Cosine similarities of raw queries to an already normalised gallery.

  Args:
    q: [B, d] query embeddings (any scale).
    g_unit: [N, d] unit (or zero) gallery rows, e.g. from `normalize_jit`.

  Returns:
    [B, N] float32 similarities.
  """
  return jnp.matmul(normalize(q), g_unit.T, precision=lax.Precision.HIGHEST)
