"""ACMR's inter-modal invariance triplet loss."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from mscross.errors import ConfigError
from mscross.methods.losses.geometry import (
  check_stack,
  masked_mean,
  ordered_pairs,
  pairwise_sq_euclidean,
  safe_norm,
  share_label,
)

_ACMR_NEGATIVES = ("random", "hardest")


def acmr_triplet_loss(
  z: chex.Array,
  labels: chex.Array,
  *,
  margin: chex.Numeric = 0.5,
  rng: chex.PRNGKey | None = None,
  negatives: str = "random",
) -> chex.Array:
  """ACMR inter-modal invariance triplet loss L_imi, over every ordered pair of modalities.

  A cell is an anchor (k, i) together with another modality l != k: K*(K-1)*B cells. Its positive
  is the paired item (l, i) and its negative one item of modality l whose labels are disjoint
  from the anchor's (never i itself). Loss per cell: `relu(d(a, p) - d(a, n) + margin)` with
  non-squared l2 distances. K = 2 gives the paper's two directions, image->text and text->image.

  Negatives are chosen on the [B, B] distance blocks, then the two distances are recomputed from
  the feature differences: they stay exact (no Gram-expansion cancellation) for the small distances
  training drives towards.

  Args:
    z: stacked embeddings [K, B, D] of K >= 2 modalities; row i of each is the same item.
    labels: multi-hot labels [B, C] of the items.
    margin: triplet margin mu (may be traced).
    rng: PRNG key; required for `negatives="random"`. Each cell draws independently: one Gumbel
      array [K*(K-1), B, B] over the ordered pairs (k, l) in lexicographic order, so for K = 2
      index 0 serves the image->text anchors and 1 the text->image ones.
    negatives: "random" picks one valid negative uniformly (Gumbel-max over the masked block);
      "hardest" picks the closest valid negative.

  Returns:
    Scalar mean over the cells that have at least one negative (0 when none has).

  References:
    Wang et al., "Adversarial Cross-Modal Retrieval", ACM MM 2017.
  """
  z = jnp.asarray(z)
  check_stack([z], labels)
  if negatives not in _ACMR_NEGATIVES:
    raise ConfigError(f"negatives must be one of {_ACMR_NEGATIVES}, got {negatives!r}")
  if negatives == "random" and rng is None:
    raise ValueError("acmr_triplet_loss with negatives='random' needs an rng key")

  num_modalities, batch = z.shape[:2]
  anchor_mod, target_mod = ordered_pairs(num_modalities)
  # Symmetric and the same for every pair: [i, j] = anchor item i vs item j of the other modality.
  neg_mask = ~share_label(labels, labels) & ~jnp.eye(batch, dtype=bool)

  if negatives == "random":
    picks = _random_negative_indices(rng, neg_mask, len(anchor_mod))
  else:
    flat = z.reshape(num_modalities * batch, -1)
    dist = jax.lax.stop_gradient(pairwise_sq_euclidean(flat, flat))
    dist = dist.reshape(num_modalities, batch, num_modalities, batch)[anchor_mod, :, target_mod]
    picks = jnp.argmin(jnp.where(neg_mask, dist, jnp.inf), axis=-1)

  anchors, others = z[anchor_mod], z[target_mod]
  negatives = jnp.take_along_axis(others, picks[..., None], axis=1)
  d_pos = safe_norm(anchors - others)
  d_neg = safe_norm(anchors - negatives)
  per_cell = jax.nn.relu(d_pos - d_neg + margin)

  valid = jnp.broadcast_to(jnp.any(neg_mask, axis=1), per_cell.shape)
  return masked_mean(per_cell, valid)


def _random_negative_indices(rng: chex.PRNGKey, neg_mask: chex.Array, num_cells: int) -> chex.Array:
  """[num_cells, B] uniform valid negatives via Gumbel-max; a row with no valid one gives 0."""
  batch = neg_mask.shape[0]
  gumbel = jax.random.gumbel(rng, (num_cells, batch, batch))
  return jnp.argmax(jnp.where(neg_mask, gumbel, -jnp.inf), axis=-1)
