"""Loss terms of ACMR, MNS-GAN, MS2GAN and DSCMR for K >= 2 modalities, as pure JAX functions.

Layout: the features of K paired modalities arrive as ONE stacked array `z` [K, B, D]. Row i of
every modality k describes the same item i, and the labels [B, C] are shared by the K rows of an
item. Cross-modal terms run over the ordered modality pairs (k, l), k != l, or over the unordered
pairs, as each docstring says. With K = 2 and `z = stack([img, txt])` every loss is its
two-modality definition (for MS2GAN with `normalize=False`; its default normalises the features).

Every function is pure, jit-able and vmap-able. Structural options (which negatives, how many)
are static Python values: pass them with `functools.partial` or `static_argnames`
under `jax.jit`. Numeric options (margins, temperatures, weights) may be traced scalars: nothing
branches on their value, except where a literal Python 0 skips a term, as documented. All-pairs
work is done on one (K*B) x (K*B) similarity/distance matrix, viewed as [K*B, K, B] blocks
(anchor, target modality, item of that modality), with boolean masks; there are no Python loops
over anchors or items.

Conventions shared by all functions:

- Labels are multi-hot float arrays [B, C]. Two items are *relevant* (positives) when they share
  at least one label and *negatives* when they share none (`labels_a @ labels_b.T == 0`).
- The negative-mining losses (ACMR, MNS-GAN, MS2GAN) choose their negatives with one option,
  `negatives`, in one vocabulary: "all" valid negatives, the "hardest" (closest) ones,
  "per_class" (the hardest of each class) or one "random" valid negative; each loss takes the
  choices its method defines.
- In the negative-mining losses an item is never its own negative, nor a
  negative of its paired items in the other modalities. This only matters for unlabelled
  (all-zero) rows, which are disjoint from everything, themselves included.
- Norms are safe: a zero vector has norm 0 with a zero gradient. Normalisation floors the norm at
  a small epsilon (as `torch.nn.functional.normalize` does), so a zero row has unit direction 0,
  cosine 0 to everything and a finite gradient. Degenerate rows never produce NaNs.
- Anchors for which a term is undefined (no negative, no positive) contribute 0 or are left out of
  the mean, as each docstring says; a batch where no anchor qualifies gives a loss of exactly 0.
"""

from __future__ import annotations

import functools
import numbers

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mscross.errors import ConfigError
from mscross.metrics import similarity

__all__ = [
  "acmr_triplet_loss",
  "dann_lambda",
  "dscmr_invariance_loss",
  "dscmr_label_loss",
  "dscmr_pairwise_loss",
  "frobenius_regulariser",
  "gradient_reversal",
  "label_cross_entropy",
  "large_margin_difference_loss",
  "modality_adversarial_loss",
  "modality_confusion_loss",
  "ms2gan_similarity_loss",
  "multi_negative_loss",
  "orthogonality_difference_loss",
  "pairwise_cosine",
  "pairwise_sq_euclidean",
  "soft_triplet_loss",
]

_EPS = 1e-8


# ----------------------------------------------------------------------------------------------
# Adversarial machinery
# ----------------------------------------------------------------------------------------------


@jax.custom_vjp
def gradient_reversal(x: chex.ArrayTree, lam: chex.Numeric) -> chex.ArrayTree:
  """Gradient reversal layer: identity forward, `-lam * g` backward.

  Placed between the encoders and the modality discriminator, it lets one optimiser step train the
  discriminator to minimise its loss while the encoders receive the gradient of MINUS that loss.

  Args:
    x: an array (or pytree of arrays) of any shape.
    lam: scalar reversal strength, e.g. `dann_lambda(progress)`. It receives a zero cotangent: the
      schedule is not something to learn.

  Returns:
    `x` unchanged.

  References:
    Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015.
  """
  del lam
  return x


def _gradient_reversal_fwd(x, lam):
  return x, lam


def _gradient_reversal_bwd(lam, g):
  # Cast back so low-precision activations get a cotangent of their own dtype.
  flipped = jax.tree.map(lambda t: (-lam * t).astype(t.dtype), g)
  return flipped, jnp.zeros_like(lam)


gradient_reversal.defvjp(_gradient_reversal_fwd, _gradient_reversal_bwd)


def dann_lambda(progress: chex.Numeric) -> chex.Array:
  """DANN annealing schedule of the reversal strength: `2 / (1 + exp(-10 p)) - 1`.

  Computed as the identical `tanh(5 p)`, which has no overflow for any input.

  Args:
    progress: training progress `p` (scalar or array); clipped to [0, 1].

  Returns:
    lambda in [0, 1), same shape as `progress`: 0 at p = 0, about 0.99991 at p = 1.

  References:
    Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015.
  """
  p = jnp.clip(jnp.asarray(progress, dtype=jnp.result_type(float)), 0.0, 1.0)
  return jnp.tanh(5.0 * p)


def modality_adversarial_loss(logits: chex.Array) -> chex.Array:
  """Modality-classification loss of the discriminator over K modalities.

  Softmax cross-entropy of K-way logits against the modality each item came from, averaged over
  all K*B items. The discriminator minimises it; the encoders maximise it (alternating steps, or
  one step through `gradient_reversal`). For K = 2 it is the sigmoid binary cross-entropy of the
  logit difference `logits[..., 0] - logits[..., 1]` (image = 1, text = 0): the same game as a
  one-output discriminator.

  Args:
    logits: discriminator logits [K, B, K]; `logits[k, i]` scores item i of modality k, whose
      target is class k. B may differ from the training batch size, not between modalities.

  Returns:
    Scalar mean cross-entropy over the K*B items.

  Raises:
    AssertionError: `logits` is not of rank 3, K < 2, or its last axis is not K.

  References:
    Wang et al., "Adversarial Cross-Modal Retrieval", ACM MM 2017 (L_adv).
  """
  logits = jnp.asarray(logits)
  chex.assert_rank(logits, 3)
  chex.assert_axis_dimension_gteq(logits, 0, 2)
  chex.assert_axis_dimension(logits, 2, logits.shape[0])
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  # [B, K]: entry (i, k) is log p(modality k | item i of modality k).
  target = jnp.diagonal(log_probs, axis1=0, axis2=2)
  return -jnp.mean(target)


def modality_confusion_loss(logits: chex.Array) -> chex.Array:
  """The encoders' non-saturating adversarial term: the discriminator's predictions against the
  uniform distribution over the K modalities.

  Cross-entropy of the K-way predictions of every item against the uniform target 1/K, averaged
  over all K*B items; at least log K, reached when the discriminator cannot tell the modalities
  apart. The encoders minimise it (instead of maximising `modality_adversarial_loss`, whose
  gradient vanishes once the discriminator is confident and right: a won game gives the
  encoders no push). Its gradient grows with the discriminator's confidence.

  Args:
    logits: discriminator logits [K, B, K], as in `modality_adversarial_loss`.

  Returns:
    Scalar mean cross-entropy against the uniform distribution over the K*B items.

  Raises:
    AssertionError: `logits` is not of rank 3, K < 2, or its last axis is not K.

  References:
    Tzeng et al., "Simultaneous Deep Transfer Across Domains and Tasks", ICCV 2015 (domain
    confusion); Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014 (the saturation
    of the minimax generator objective).
  """
  logits = jnp.asarray(logits)
  chex.assert_rank(logits, 3)
  chex.assert_axis_dimension_gteq(logits, 0, 2)
  chex.assert_axis_dimension(logits, 2, logits.shape[0])
  return -jnp.mean(jax.nn.log_softmax(logits, axis=-1))


# ----------------------------------------------------------------------------------------------
# Label prediction and regularisation
# ----------------------------------------------------------------------------------------------


def label_cross_entropy(
  logits: chex.Array, labels: chex.Array, *, multilabel: bool = False
) -> chex.Array:
  """Per-example label-prediction cross-entropy (ACMR L_imd, MS2GAN L_sd).

  Single-label mode: softmax cross-entropy against the labels normalised to sum to 1 (a multi-hot
  row spreads its mass evenly over its classes; an all-zero row gives 0). Multi-label mode: sigmoid
  binary cross-entropy summed over classes.

  Args:
    logits: class logits [B, C].
    labels: multi-hot float labels [B, C].
    multilabel: sigmoid BCE (True) or softmax CE (False).

  Returns:
    Per-example loss [B].

  References:
    Wang et al., "Adversarial Cross-Modal Retrieval", ACM MM 2017; Wu, Jing et al., "Modality-
    specific and shared generative adversarial network for cross-modal retrieval", Pattern
    Recognition 2020.
  """
  chex.assert_rank([logits, labels], 2)
  chex.assert_equal_shape([logits, labels])
  labels = labels.astype(logits.dtype)
  if multilabel:
    return jnp.sum(jax.nn.softplus(logits) - labels * logits, axis=-1)
  mass = jnp.sum(labels, axis=-1, keepdims=True)
  targets = labels / jnp.where(mass > 0, mass, 1.0)
  return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def frobenius_regulariser(params: chex.ArrayTree) -> chex.Array:
  """Sum of the (non-squared) Frobenius norms of every 'kernel' leaf (ACMR L_reg).

  Biases and any other leaf are excluded. Works on Linen parameter dicts and on NNX states (whose
  leaves sit under a trailing `.value`). Pass only the subtree to regularise (ACMR: projectors).

  Args:
    params: a pytree of parameters.

  Returns:
    Scalar sum over kernels of ||W||_F; 0 when there is no kernel. A zero kernel has gradient 0.

  References:
    Wang et al., "Adversarial Cross-Modal Retrieval", ACM MM 2017 (L_reg).
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  norms = [_safe_norm(jnp.ravel(leaf)) for path, leaf in leaves if _is_kernel(path)]
  if not norms:
    return jnp.zeros(())
  return functools.reduce(jnp.add, norms)


def _is_kernel(path: tuple) -> bool:
  names = [_key_name(k) for k in path]
  while names and names[-1] in ("value", "raw_value"):
    names.pop()
  return bool(names) and names[-1] == "kernel"


def _key_name(key) -> object:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return None


# ----------------------------------------------------------------------------------------------
# Safe geometry
# ----------------------------------------------------------------------------------------------


def _safe_norm(x: chex.Array, axis: int | None = -1) -> chex.Array:
  # sqrt has an infinite derivative at 0; the inner where keeps it out of the backward pass, so a
  # zero vector gets the zero subgradient instead of NaN.
  sq = jnp.sum(jnp.square(x), axis=axis)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _l2_normalise(x: chex.Array, eps: float = _EPS) -> chex.Array:
  return similarity.normalize(x, eps)


def pairwise_cosine(a: chex.Array, b: chex.Array, *, eps: float = _EPS) -> chex.Array:
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
  return _l2_normalise(a, eps) @ _l2_normalise(b, eps).T


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


def _share_label(labels_a: chex.Array, labels_b: chex.Array) -> chex.Array:
  return (labels_a @ labels_b.T) > 0


def _check_stack(stacks: list[chex.Array], labels: chex.Array) -> None:
  """[K, B, D] arrays with K >= 2, one modality count and batch, labels [B, C]."""
  chex.assert_rank(stacks, 3)
  chex.assert_rank(labels, 2)
  chex.assert_equal_shape_prefix(stacks, 2)
  chex.assert_axis_dimension_gteq(stacks[0], 0, 2)
  chex.assert_axis_dimension(stacks[0], 1, labels.shape[0])


def _ordered_pairs(num_modalities: int) -> tuple[np.ndarray, np.ndarray]:
  """Anchor and target modality of every ordered pair (k, l), k != l, in lexicographic order."""
  pairs = [(a, b) for a in range(num_modalities) for b in range(num_modalities) if a != b]
  anchor, target = np.array(pairs, dtype=np.int32).T
  return anchor, target


# ----------------------------------------------------------------------------------------------
# ACMR
# ----------------------------------------------------------------------------------------------

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
  _check_stack([z], labels)
  if negatives not in _ACMR_NEGATIVES:
    raise ConfigError(f"negatives must be one of {_ACMR_NEGATIVES}, got {negatives!r}")
  if negatives == "random" and rng is None:
    raise ValueError("acmr_triplet_loss with negatives='random' needs an rng key")

  num_modalities, batch = z.shape[:2]
  anchor_mod, target_mod = _ordered_pairs(num_modalities)
  # Symmetric and the same for every pair: [i, j] = anchor item i vs item j of the other modality.
  neg_mask = ~_share_label(labels, labels) & ~jnp.eye(batch, dtype=bool)

  if negatives == "random":
    picks = _random_negative_indices(rng, neg_mask, len(anchor_mod))
  else:
    flat = z.reshape(num_modalities * batch, -1)
    dist = jax.lax.stop_gradient(pairwise_sq_euclidean(flat, flat))
    dist = dist.reshape(num_modalities, batch, num_modalities, batch)[anchor_mod, :, target_mod]
    picks = jnp.argmin(jnp.where(neg_mask, dist, jnp.inf), axis=-1)

  anchors, others = z[anchor_mod], z[target_mod]
  negatives = jnp.take_along_axis(others, picks[..., None], axis=1)
  d_pos = _safe_norm(anchors - others)
  d_neg = _safe_norm(anchors - negatives)
  per_cell = jax.nn.relu(d_pos - d_neg + margin)

  valid = jnp.broadcast_to(jnp.any(neg_mask, axis=1), per_cell.shape)
  return _masked_mean(per_cell, valid)


def _random_negative_indices(rng: chex.PRNGKey, neg_mask: chex.Array, num_cells: int) -> chex.Array:
  """[num_cells, B] uniform valid negatives via Gumbel-max; a row with no valid one gives 0."""
  batch = neg_mask.shape[0]
  gumbel = jax.random.gumbel(rng, (num_cells, batch, batch))
  return jnp.argmax(jnp.where(neg_mask, gumbel, -jnp.inf), axis=-1)


def _masked_mean(values: chex.Array, mask: chex.Array) -> chex.Array:
  count = jnp.sum(mask)
  total = jnp.sum(jnp.where(mask, values, 0.0))
  return total / jnp.maximum(count, 1).astype(values.dtype)


# ----------------------------------------------------------------------------------------------
# MNS-GAN
# ----------------------------------------------------------------------------------------------


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
  _check_stack([z], labels)
  if negatives not in _MNS_NEGATIVES:
    raise ConfigError(f"negatives must be one of {_MNS_NEGATIVES}, got {negatives!r}")
  if negatives == "hardest" and not (isinstance(k, numbers.Integral) and k >= 1):
    raise ConfigError(f"k must be a positive integer, got {k!r}")

  num_modalities, batch = z.shape[:2]
  n = num_modalities * batch
  flat = z.reshape(n, -1)
  sim = pairwise_cosine(flat, flat).reshape(n, num_modalities, batch)
  share = _share_label(labels, labels)
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


# ----------------------------------------------------------------------------------------------
# MS2GAN
# ----------------------------------------------------------------------------------------------

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
  _check_stack([spec, shared], labels)
  if negatives not in _MS2GAN_NEGATIVES:
    raise ConfigError(f"negatives must be one of {_MS2GAN_NEGATIVES}, got {negatives!r}")

  num_modalities, batch = spec.shape[:2]
  n = num_modalities * batch
  f = spec.reshape(n, -1)
  s = shared.reshape(n, -1)
  if normalize:
    f, s = _l2_normalise(f), _l2_normalise(s)
  dist = pairwise_sq_euclidean(f, f) + pairwise_sq_euclidean(s, s)
  share = jnp.tile(_share_label(labels, labels), (num_modalities, num_modalities))
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
    return _masked_mean(jax.nn.relu(gap + margin), valid)

  triplets = jax.nn.relu(dist[..., :, None] - dist[..., None, :] + margin)
  valid = pos[..., :, None] & neg[..., None, :]
  return _masked_mean(triplets, valid)


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
  gap = jnp.sum(jnp.square(_l2_normalise(spec) - _l2_normalise(shared)), axis=-1)
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
  cross = _l2_normalise(spec).T @ _l2_normalise(shared)
  total = jnp.sum(jnp.square(cross))
  if reduction == "mean":
    total = total / (spec.shape[0] ** 2)
  return total


# ----------------------------------------------------------------------------------------------
# DSCMR
# ----------------------------------------------------------------------------------------------


def dscmr_label_loss(preds: chex.Array, labels: chex.Array) -> chex.Array:
  """DSCMR label-space loss J1: `sum_k mean_i ||p_ki - y_i||_2` over the K modalities.

  The labels are used as given (one-hot or multi-hot, not normalised); the norm is not squared.

  Args:
    preds: label-space predictions [K, B, C] of K >= 2 modalities (linear classifier outputs).
    labels: multi-hot labels [B, C] of the items.

  Returns:
    Scalar sum of the K per-modality means.

  References:
    Zhen et al., "Deep Supervised Cross-modal Retrieval", CVPR 2019.
  """
  preds = jnp.asarray(preds)
  _check_stack([preds], labels)
  chex.assert_equal_shape_suffix([preds, labels], 2)
  labels = labels.astype(preds.dtype)
  return jnp.sum(jnp.mean(_safe_norm(preds - labels), axis=-1))


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
  _check_stack([z], labels)
  num_modalities, batch = z.shape[:2]
  flat = z.reshape(num_modalities * batch, -1)
  t = pairwise_cosine(flat, flat).reshape(num_modalities, batch, num_modalities, batch) / 2.0
  relevant = _share_label(labels, labels).astype(t.dtype)[:, None, :]
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
  return jnp.sum(jnp.mean(_safe_norm(z[rows] - z[cols]), axis=-1))
