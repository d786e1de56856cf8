"""Shared by the metric losses: safe norms and normalisation, all-pairs distances, label
overlap, the ordered modality pairs, and masked means."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np

from mscross.metrics import similarity

EPS = 1e-8


def safe_norm(x: chex.Array, axis: int | None = -1) -> chex.Array:
  # sqrt has an infinite derivative at 0; the inner where keeps it out of the backward pass, so a
  # zero vector gets the zero subgradient instead of NaN.
  sq = jnp.sum(jnp.square(x), axis=axis)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def l2_normalise(x: chex.Array, eps: float = EPS) -> chex.Array:
  return similarity.normalize(x, eps)


def pairwise_cosine(a: chex.Array, b: chex.Array, *, eps: float = EPS) -> chex.Array:
  """All-pairs cosine similarity.

  Args:
    a: [Na, D].
    b: [Nb, D].
    eps: norms are floored at `eps`, so a zero row has similarity 0 to everything and a finite
      gradient.

  Returns:
    [Na, Nb] matrix of cosines in [-1, 1].
  """
  chex.assert_rank([a, b], 2)
  chex.assert_equal_shape_suffix([a, b], 1)
  return l2_normalise(a, eps) @ l2_normalise(b, eps).T


def pairwise_sq_euclidean(a: chex.Array, b: chex.Array) -> chex.Array:
  """All-pairs squared Euclidean distance `||a_i - b_j||^2`.

  Uses the Gram expansion (O(N^2) memory rather than O(N^2 D)) and clamps the cancellation error
  at 0, so the result is never negative.

  Args:
    a: [Na, D].
    b: [Nb, D].

  Returns:
    [Na, Nb] matrix of non-negative squared distances.
  """
  chex.assert_rank([a, b], 2)
  chex.assert_equal_shape_suffix([a, b], 1)
  sq_a = jnp.sum(jnp.square(a), axis=-1)
  sq_b = jnp.sum(jnp.square(b), axis=-1)
  return jnp.maximum(sq_a[:, None] + sq_b[None, :] - 2.0 * (a @ b.T), 0.0)


def share_label(labels_a: chex.Array, labels_b: chex.Array) -> chex.Array:
  return (labels_a @ labels_b.T) > 0


def check_stack(stacks: list[chex.Array], labels: chex.Array) -> None:
  """[K, B, D] arrays with K >= 2, one modality count and batch, labels [B, C]."""
  chex.assert_rank(stacks, 3)
  chex.assert_rank(labels, 2)
  chex.assert_equal_shape_prefix(stacks, 2)
  chex.assert_axis_dimension_gteq(stacks[0], 0, 2)
  chex.assert_axis_dimension(stacks[0], 1, labels.shape[0])


def ordered_pairs(num_modalities: int) -> tuple[np.ndarray, np.ndarray]:
  """Anchor and target modality of every ordered pair (k, l), k != l, in lexicographic order."""
  pairs = [(a, b) for a in range(num_modalities) for b in range(num_modalities) if a != b]
  anchor, target = np.array(pairs, dtype=np.int32).T
  return anchor, target


def masked_mean(values: chex.Array, mask: chex.Array) -> chex.Array:
  count = jnp.sum(mask)
  total = jnp.sum(jnp.where(mask, values, 0.0))
  return total / jnp.maximum(count, 1).astype(values.dtype)
