"""MNS-GAN's multi-negative loss and the one-negative soft triplet it generalises."""

from __future__ import annotations

import numbers

import chex
import jax
import jax.numpy as jnp

from mscross.errors import ConfigError
from mscross.methods.losses.geometry import (
  check_stack,
  pairwise_cosine,
  share_label,
)


def soft_triplet_loss(s_ap: chex.Array, s_an: chex.Array, *, tau: float) -> chex.Array:
  """Soft-margin triplet loss on similarities: `log(1 + exp((s_an - s_ap) / tau))`.

  The one-negative case of `multi_negative_loss`.

  Args:
    s_ap: anchor-positive similarities, any shape.
    s_an: anchor-negative similarities, same shape as `s_ap`.
    tau: temperature (> 0).

  Returns:
    Per-example loss, same shape as the inputs.

  References:
    Ma, Wang, Hou, "MNS-GAN" (multiple negative samples for cross-modal retrieval), ICECE 2021;
    Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 2016.
  """
  chex.assert_equal_shape([s_ap, s_an])
  return jax.nn.softplus((s_an - s_ap) / tau)


_MNS_NEGATIVES = ("all", "hardest", "per_class")


def multi_negative_loss(
  z: chex.Array,
  labels: chex.Array,
  *,
  tau: chex.Numeric = 0.1,
  negatives: str = "all",
  k: int = 5,
  intra_weight: chex.Numeric = 0.5,
  margin: chex.Numeric = 0.0,
) -> chex.Array:
  """MNS-GAN multi-negative loss: inter-modal term + `intra_weight` x intra-modal term.

  One (K*B) x (K*B) cosine matrix of the flattened `z`, viewed as [K*B, K, B] blocks (anchor,
  target modality, item), and one label-overlap mask serve both terms. For an anchor a with
  positive p and selected negatives N(a) the per-(a, p) loss is

    log(1 + sum_{n in N(a)} exp((s_an + margin - s_ap) / tau))
      = softplus(logsumexp_n((s_an + margin - s_ap) / tau)),

  the same value as `logaddexp(s_ap/tau, logsumexp_n((s_an + margin)/tau)) - s_ap/tau`. The masked
  logsumexp is max-shifted and gives exactly 0 (finite value, zero gradient) when N(a) is empty.

  Inter-modal term: one cell per anchor (k, i) and other modality l != k; p = the paired item
  (l, i); negatives = items of modality l with labels disjoint from the anchor's (never the
  partner). Mean over all K*(K-1)*B cells (cells without a negative contribute 0); K = 2 gives the
  mean over the 2B anchors of the two-modality loss.

  Intra-modal term: every anchor against the items of its own modality; positives = same-modality
  items sharing a label (not the anchor itself), negatives = same-modality items with disjoint
  labels. Each anchor averages the loss over ALL its positives (every positive is pulled, like the
  per-pair sum of the N-pair loss, rather than only the hardest or the mean positive); anchors
  without a positive or a negative contribute 0; mean over the K*B anchors.

  Unlabelled data: pass identity labels `eye(B)` (each pair its own class). There is then no
  intra-modal positive, and with margin 0 and all negatives the loss is the symmetric InfoNCE of
  contrastive learning, averaged over the K*(K-1) ordered modality pairs.

  Negative selection, per (anchor, target modality) cell:
    "all": every valid negative.
    "hardest": the `k` most similar valid negatives (all of them if fewer than k).
    "per_class": for each class c, the most similar valid negative whose labels contain c; the union
      of these (a multi-label item chosen for several classes counts once). With single-label data
      this is one negative per other class present in the batch: the multi-class N-pair loss.

  Args:
    z: stacked embeddings [K, B, D] of K >= 2 modalities; row i of each is the same item.
    labels: multi-hot labels [B, C] of the items.
    tau: temperature (> 0; may be traced).
    negatives: "all" | "hardest" | "per_class".
    k: number of hardest negatives for "hardest" (>= 1).
    intra_weight: weight gamma of the intra-modal term (may be traced); a literal Python 0
      skips computing it.
    margin: added to every negative similarity (may be traced).

  Returns:
    Scalar `inter + intra_weight * intra`.

  References:
    Ma, Wang, Hou, "MNS-GAN" (multiple negative samples for cross-modal retrieval), ICECE 2021;
    Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 2016;
    van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018
    (InfoNCE).
  """
  z = jnp.asarray(z)
  check_stack([z], labels)
  if negatives not in _MNS_NEGATIVES:
    raise ConfigError(f"negatives must be one of {_MNS_NEGATIVES}, got {negatives!r}")
  if negatives == "hardest" and not (isinstance(k, numbers.Integral) and k >= 1):
    raise ConfigError(f"k must be a positive integer, got {k!r}")

  num_modalities, batch = z.shape[:2]
  n = num_modalities * batch
  flat = z.reshape(n, -1)
  sim = pairwise_cosine(flat, flat).reshape(n, num_modalities, batch)
  share = share_label(labels, labels)
  not_item = ~jnp.eye(batch, dtype=bool)

  anchor = jnp.arange(n)
  anchor_item = anchor % batch
  anchor_mod = anchor // batch
  own_modality = anchor_mod[:, None] == jnp.arange(num_modalities)

  # Column i of a block is the partner (other modality) or the anchor itself (own modality): in
  # both cases excluded, so one candidate mask serves every cell of both terms.
  candidates = jnp.tile(~share & not_item, (num_modalities, 1))
  candidates = jnp.broadcast_to(candidates[:, None, :], sim.shape)
  selected = _select_negatives(
    sim.reshape(n * num_modalities, batch),
    candidates.reshape(n * num_modalities, batch),
    labels,
    negatives=negatives,
    k=k,
  ).reshape(sim.shape)

  # Inter-modal: one positive per cell, so the loss is one softplus per cell.
  s_ap = sim[anchor, :, anchor_item]
  inter_neg = selected & ~own_modality[..., None]
  lse, has_neg = _masked_logsumexp((sim + margin - s_ap[..., None]) / tau, inter_neg)
  inter_cells = num_modalities * (num_modalities - 1) * batch
  inter = jnp.sum(jnp.where(has_neg, jax.nn.softplus(lse), 0.0)) / inter_cells

  if isinstance(intra_weight, (int, float)) and intra_weight == 0:
    return inter

  # Intra-modal: the negative part does not depend on the positive, so one logsumexp per anchor
  # serves all its positives: loss(a, p) = softplus(lse_n((s_an + margin)/tau) - s_ap/tau).
  own_sim = sim[anchor, anchor_mod]
  intra_neg = selected[anchor, anchor_mod]
  intra_pos = jnp.tile(share & not_item, (num_modalities, 1))
  neg_lse, has_neg = _masked_logsumexp((own_sim + margin) / tau, intra_neg)
  pair_loss = jax.nn.softplus(neg_lse[:, None] - own_sim / tau)
  per_anchor = _masked_mean_rows(pair_loss, intra_pos)
  intra = jnp.mean(jnp.where(has_neg, per_anchor, 0.0))
  return inter + intra_weight * intra


def _masked_logsumexp(x: chex.Array, mask: chex.Array) -> tuple[chex.Array, chex.Array]:
  """Logsumexp over the last axis within `mask`; rows with no entry give 0 and has_any = False."""
  has_any = jnp.any(mask, axis=-1)
  row_max = jnp.max(jnp.where(mask, x, -jnp.inf), axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  # Masked entries go to exp(0) before being zeroed: exp of a large masked value would overflow
  # and turn the zero cotangent of the where into NaN.
  shifted = jnp.where(mask, x - row_max, 0.0)
  total = jnp.sum(jnp.where(mask, jnp.exp(shifted), 0.0), axis=-1)
  lse = jnp.log(jnp.where(has_any, total, 1.0)) + row_max[..., 0]
  return jnp.where(has_any, lse, 0.0), has_any


def _masked_mean_rows(x: chex.Array, mask: chex.Array) -> chex.Array:
  count = jnp.sum(mask, axis=-1)
  total = jnp.sum(jnp.where(mask, x, 0.0), axis=-1)
  return total / jnp.maximum(count, 1).astype(x.dtype)


def _select_negatives(
  sim: chex.Array, valid: chex.Array, labels: chex.Array, *, negatives: str, k: int
) -> chex.Array:
  """Boolean [R, M] mask of the negatives each row keeps among M items, by similarity `sim`.

  A row is one anchor's cell (its candidates in one modality); `labels` [M, C] label the columns.
  """
  if negatives == "all":
    return valid
  n = sim.shape[1]
  columns = jnp.arange(n)
  scores = jax.lax.stop_gradient(jnp.where(valid, sim, -jnp.inf))
  if negatives == "hardest":
    _, top = jax.lax.top_k(scores, min(int(k), n))
    chosen = jnp.any(top[:, :, None] == columns, axis=1)
    # top_k pads with invalid columns when a row has fewer than k negatives.
    return chosen & valid
  # per_class: [anchor, class, item] scores restricted to items carrying that class.
  member = (labels > 0).T
  by_class = jnp.where(member[None, :, :], scores[:, None, :], -jnp.inf)
  best = jnp.argmax(by_class, axis=-1)
  found = jnp.any(valid[:, None, :] & member[None, :, :], axis=-1)
  chosen = (best[:, :, None] == columns) & found[:, :, None]
  return jnp.any(chosen, axis=1)
