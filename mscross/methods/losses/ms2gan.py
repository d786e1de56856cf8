"""MS2GAN's similarity loss on specific and shared features, and its two difference losses."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from mscross.errors import ConfigError
from mscross.methods.losses.geometry import (
  check_stack,
  l2_normalise,
  masked_mean,
  pairwise_sq_euclidean,
  share_label,
)

_MS2GAN_NEGATIVES = ("all", "hardest")


def ms2gan_similarity_loss(
  spec: chex.Array,
  shared: chex.Array,
  labels: chex.Array,
  *,
  margin: chex.Numeric = 0.5,
  negatives: str = "all",
  normalize: bool = True,
) -> chex.Array:
  """MS2GAN inter- and intra-modal similarity loss L_sim (triplet on specific + shared features).

  Distance: `d(u, v) = ||n(f_u) - n(f_v)||^2 + ||n(s_u) - n(s_v)||^2` (f = modality-specific,
  s = shared features, n = l2 normalisation of each row), which lies in [0, 8]. Anchors are all
  K*B items. A triplet (a, p, n) has p and n of the SAME modality, any of the K (the pair type:
  cross-modal when that modality differs from the anchor's, intra-modal otherwise), p sharing a
  label with a (p != a) and n sharing none (n != a). Loss `relu(d_ap - d_an + margin)`.

  Normalisation is the default: unnormalised squared distances over wide tanh features (up to 4
  per unit, so up to 1024 over 2 x 128 units) dwarf a margin of 1, and training on them collapsed
  after a few hundred steps. On the bounded [0, 8] range a margin means the same at any feature
  width; the default 0.5 is 1/16 of the range. `normalize=False` keeps the unnormalised distance
  `||f_u - f_v||^2 + ||s_u - s_v||^2` of the paper (for which m1 = 1 was the starting point).

  negatives="all" (batch-all, the default): every valid triplet, averaged over all valid triplets
  of all pair types and anchors; O(K^2 B^3) memory. negatives="hardest" (batch-hard): per anchor and
  pair type the farthest positive and the closest negative, averaged over the (anchor, pair type)
  cells that have both; O(K^2 B^2) memory.

  Args:
    spec: modality-specific features f [K, B, Df] of K >= 2 modalities; row i of each is the
      same item.
    shared: shared features s [K, B, Ds] of the same items.
    labels: multi-hot labels [B, C] of the items.
    margin: triplet margin m1 (may be traced).
    negatives: "all" | "hardest".
    normalize: l2-normalise the f and s rows before the distance (True) or not (False).

  Returns:
    Scalar loss; 0 when no valid triplet exists.

  References:
    Wu, Jing et al., "Modality-specific and shared generative adversarial network for cross-modal
    retrieval", Pattern Recognition 2020.
  """
  spec, shared = jnp.asarray(spec), jnp.asarray(shared)
  check_stack([spec, shared], labels)
  if negatives not in _MS2GAN_NEGATIVES:
    raise ConfigError(f"negatives must be one of {_MS2GAN_NEGATIVES}, got {negatives!r}")

  num_modalities, batch = spec.shape[:2]
  n = num_modalities * batch
  f = spec.reshape(n, -1)
  s = shared.reshape(n, -1)
  if normalize:
    f, s = l2_normalise(f), l2_normalise(s)
  dist = pairwise_sq_euclidean(f, f) + pairwise_sq_euclidean(s, s)
  share = jnp.tile(share_label(labels, labels), (num_modalities, num_modalities))
  not_self = ~jnp.eye(n, dtype=bool)
  pos = share & not_self
  neg = ~share & not_self

  # Split the item axis by modality: [anchor, target modality, item of that modality].
  def by_target(x):
    return x.reshape(n, num_modalities, batch)

  dist, pos, neg = by_target(dist), by_target(pos), by_target(neg)

  if negatives == "hardest":
    hardest_pos = jnp.max(jnp.where(pos, dist, -jnp.inf), axis=-1)
    hardest_neg = jnp.min(jnp.where(neg, dist, jnp.inf), axis=-1)
    valid = jnp.any(pos, axis=-1) & jnp.any(neg, axis=-1)
    gap = jnp.where(valid, hardest_pos - hardest_neg, 0.0)
    return masked_mean(jax.nn.relu(gap + margin), valid)

  triplets = jax.nn.relu(dist[..., :, None] - dist[..., None, :] + margin)
  valid = pos[..., :, None] & neg[..., None, :]
  return masked_mean(triplets, valid)


def large_margin_difference_loss(
  spec: chex.Array, shared: chex.Array, *, margin: float = 0.5
) -> chex.Array:
  """MS2GAN large-margin difference loss L_lm: `mean_u relu(m2 - ||n(f_u) - n(s_u)||^2)`.

  Pushes the specific and shared features of the same item apart; n = l2 normalisation, so the
  squared distance lies in [0, 4]. Call it once per modality.

  Args:
    spec: modality-specific features [B, D].
    shared: shared features of the same items [B, D].
    margin: m2.

  Returns:
    Scalar mean over the B items.

  References:
    Wu, Jing et al., "Modality-specific and shared generative adversarial network for cross-modal
    retrieval", Pattern Recognition 2020.
  """
  chex.assert_rank([spec, shared], 2)
  chex.assert_equal_shape([spec, shared])
  gap = jnp.sum(jnp.square(l2_normalise(spec) - l2_normalise(shared)), axis=-1)
  return jnp.mean(jax.nn.relu(margin - gap))


def orthogonality_difference_loss(
  spec: chex.Array, shared: chex.Array, *, reduction: str = "mean"
) -> chex.Array:
  """Soft orthogonality (difference) loss of Domain Separation Networks: `||F^T S||_F^2`.

  F and S hold the l2-normalised rows of the specific and shared features. Since
  `||F^T S||_F^2 = sum_{i,j} <f_i, f_j> <s_i, s_j>` sums over B^2 item pairs, "mean" divides by
  B^2: the squared Frobenius norm of the empirical cross-correlation `F^T S / B`, in [0, 1] and
  independent of the batch size, so its weight transfers across batch sizes. "sum" is the raw
  norm as written in DSN.

  Args:
    spec: modality-specific features [B, Df].
    shared: shared features of the same items [B, Ds].
    reduction: "mean" (divide by B^2) | "sum".

  Returns:
    Scalar loss.

  References:
    Bousmalis et al., "Domain Separation Networks", NeurIPS 2016.
  """
  chex.assert_rank([spec, shared], 2)
  chex.assert_equal_shape_prefix([spec, shared], 1)
  if reduction not in ("mean", "sum"):
    raise ConfigError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
  cross = l2_normalise(spec).T @ l2_normalise(shared)
  total = jnp.sum(jnp.square(cross))
  if reduction == "mean":
    total = total / (spec.shape[0] ** 2)
  return total
