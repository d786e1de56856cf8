"""DSCMR's label-space, pairwise and modality-invariance losses."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mscross.methods.losses.geometry import (
  check_stack,
  pairwise_cosine,
  safe_norm,
  share_label,
)


def dscmr_label_loss(
  preds: chex.Array, labels: chex.Array, *, smoothing: chex.Numeric = 0.0
) -> chex.Array:
  """DSCMR label-space loss J1: `sum_k mean_i ||p_ki - y_i||_2` over the K modalities.

  The labels are used as given (one-hot or multi-hot, not normalised); the norm is not squared.
  Label smoothing moves the targets towards the uniform value: y' = (1 - s) y + s / C.

  Args:
    preds: label-space predictions [K, B, C] of K >= 2 modalities (linear classifier outputs).
    labels: multi-hot labels [B, C] of the items.
    smoothing: label smoothing s in [0, 1) (may be traced); 0 leaves the targets as they are.

  Returns:
    Scalar sum of the K per-modality means.

  References:
    Zhen et al., "Deep Supervised Cross-modal Retrieval", CVPR 2019.
  """
  preds = jnp.asarray(preds)
  check_stack([preds], labels)
  chex.assert_equal_shape_suffix([preds, labels], 2)
  labels = labels.astype(preds.dtype)
  if not (isinstance(smoothing, int | float) and smoothing == 0):
    labels = (1.0 - smoothing) * labels + smoothing / labels.shape[-1]
  return jnp.sum(jnp.mean(safe_norm(preds - labels), axis=-1))


def dscmr_pairwise_loss(z: chex.Array, labels: chex.Array) -> chex.Array:
  """DSCMR common-space discrimination loss J2, over the unordered pairs of modalities.

  `sum over k <= l of mean_{i,j} [log(1 + exp(t_ij)) - S_ij t_ij]` with
  `t_ij = cos(z_ki, z_lj) / 2` and `S_ij = 1` when i and j share a label. Same-modality pairs
  (k = l) are included: K = 2 gives (img, img), (img, txt), (txt, txt). The means run over all B^2
  entries, diagonal included, as in the reference implementation.

  Args:
    z: common-space features [K, B, D] of K >= 2 modalities; row i of each is the same item.
    labels: multi-hot labels [B, C] of the items.

  Returns:
    Scalar sum over the K (K + 1) / 2 pairs.

  References:
    Zhen et al., "Deep Supervised Cross-modal Retrieval", CVPR 2019.
  """
  z = jnp.asarray(z)
  check_stack([z], labels)
  num_modalities, batch = z.shape[:2]
  flat = z.reshape(num_modalities * batch, -1)
  t = pairwise_cosine(flat, flat).reshape(num_modalities, batch, num_modalities, batch) / 2.0
  relevant = share_label(labels, labels).astype(t.dtype)[:, None, :]
  block_means = jnp.mean(jax.nn.softplus(t) - relevant * t, axis=(1, 3))
  rows, cols = np.triu_indices(num_modalities)
  return jnp.sum(block_means[rows, cols])


def dscmr_invariance_loss(z: chex.Array) -> chex.Array:
  """DSCMR modality-invariance loss J3: `sum over k < l of mean_i ||z_ki - z_li||_2`.

  Args:
    z: common-space features [K, B, D] of K >= 2 modalities; row i of each is the same item.

  Returns:
    Scalar sum over the K (K - 1) / 2 modality pairs; identical pairs give 0 with a zero (finite)
    gradient.

  References:
    Zhen et al., "Deep Supervised Cross-modal Retrieval", CVPR 2019.
  """
  z = jnp.asarray(z)
  chex.assert_rank(z, 3)
  chex.assert_axis_dimension_gteq(z, 0, 2)
  rows, cols = np.triu_indices(z.shape[0], k=1)
  return jnp.sum(jnp.mean(safe_norm(z[rows] - z[cols]), axis=-1))
