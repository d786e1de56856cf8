"""Loss terms of ACMR, MNS-GAN, MS2GAN and DSCMR as pure, typed JAX functions.

Every function is pure, jit-able and vmap-able (options are static Python values: pass them with
`functools.partial` or `static_argnames` under `jax.jit`). All-pairs work is done on [N, N]
similarity/distance matrices with boolean masks, never with Python loops over anchors.

Conventions shared by all functions:

- Labels are multi-hot float arrays [B, C]. Two items are *relevant* (positives) when they share
  at least one label and *negatives* when they share none (`labels_a @ labels_b.T == 0`).
- In the negative-mining losses (ACMR, MNS-GAN, MS2GAN) an item is never its own negative, nor a
  negative of its paired item of the other modality. This only matters for unlabelled (all-zero)
  rows, which are disjoint from everything, themselves included.
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

from mscross.errors import ConfigError

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


def modality_adversarial_loss(logits_img: chex.Array, logits_txt: chex.Array) -> chex.Array:
  """Modality-classification loss of the discriminator (image = 1, text = 0).

  Sigmoid binary cross-entropy, averaged over all 2B items. The discriminator minimises it; the
  encoders maximise it (alternating steps, or one step through `gradient_reversal`).

  Args:
    logits_img: discriminator logits for image embeddings, shape [B] or [B, 1].
    logits_txt: discriminator logits for text embeddings, shape [B'] or [B', 1].

  Returns:
    Scalar mean BCE over the B + B' items.

  References:
    Wang et al., "Adversarial Cross-Modal Retrieval", ACM MM 2017 (L_adv).
  """
  logits_img = _as_logit_vector(logits_img)
  logits_txt = _as_logit_vector(logits_txt)
  # BCE(x, 1) = softplus(-x) and BCE(x, 0) = softplus(x), both stable for any x.
  total = jnp.sum(jax.nn.softplus(-logits_img)) + jnp.sum(jax.nn.softplus(logits_txt))
  return total / (logits_img.shape[0] + logits_txt.shape[0])


def _as_logit_vector(logits: chex.Array) -> chex.Array:
  chex.assert_rank(logits, {1, 2})
  if logits.ndim == 2:
    chex.assert_axis_dimension(logits, 1, 1)
    logits = logits[:, 0]
  return logits


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
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


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


def _check_batch(features: list[chex.Array], labels: chex.Array) -> None:
  chex.assert_rank(features + [labels], 2)
  chex.assert_equal_shape(features)
  chex.assert_equal_shape_prefix(features + [labels], 1)


# ----------------------------------------------------------------------------------------------
# ACMR
# ----------------------------------------------------------------------------------------------

_ACMR_NEGATIVES = ("random", "hardest")


def acmr_triplet_loss(
  img: chex.Array,
  txt: chex.Array,
  labels: chex.Array,
  *,
  margin: float,
  rng: chex.PRNGKey | None = None,
  negative: str = "random",
) -> chex.Array:
  """ACMR inter-modal invariance triplet loss L_imi.

  For every anchor of each modality (2B anchors), the positive is its paired item of the other
  modality and the negative one item of the other modality whose labels are disjoint from the
  anchor's. Loss per anchor: `relu(d(a, p) - d(a, n) + margin)` with non-squared l2 distances.

  Negatives are chosen on the [B, B] distance matrix, then the two distances are recomputed from
  the feature differences: they stay exact (no Gram-expansion cancellation) for the small distances
  training drives towards.

  Args:
    img: image embeddings [B, D].
    txt: text embeddings [B, D]; row i is paired with `img[i]`.
    labels: multi-hot labels [B, C] of the pairs.
    margin: triplet margin mu.
    rng: PRNG key; required for `negative="random"`. The two directions use independent draws.
    negative: "random" picks one valid negative uniformly (Gumbel-max over the masked matrix);
      "hardest" picks the closest valid negative.

  Returns:
    Scalar mean over the anchors that have at least one negative (0 when none has).

  References:
    Wang et al., "Adversarial Cross-Modal Retrieval", ACM MM 2017.
  """
  _check_batch([img, txt], labels)
  img, txt = jnp.asarray(img), jnp.asarray(txt)
  if negative not in _ACMR_NEGATIVES:
    raise ConfigError(f"negative must be one of {_ACMR_NEGATIVES}, got {negative!r}")
  if negative == "random" and rng is None:
    raise ValueError("acmr_triplet_loss with negative='random' needs an rng key")

  batch = img.shape[0]
  # Symmetric, so it serves both directions: [i, j] = anchor i vs other-modality item j.
  neg_mask = ~_share_label(labels, labels) & ~jnp.eye(batch, dtype=bool)

  if negative == "random":
    neg_img_to_txt, neg_txt_to_img = _random_negative_indices(rng, neg_mask)
  else:
    dist = jax.lax.stop_gradient(pairwise_sq_euclidean(img, txt))
    neg_img_to_txt = jnp.argmin(jnp.where(neg_mask, dist, jnp.inf), axis=1)
    neg_txt_to_img = jnp.argmin(jnp.where(neg_mask.T, dist.T, jnp.inf), axis=1)

  d_pos = _safe_norm(img - txt)
  d_neg_img = _safe_norm(img - txt[neg_img_to_txt])
  d_neg_txt = _safe_norm(txt - img[neg_txt_to_img])
  per_anchor = jax.nn.relu(
    jnp.concatenate([d_pos - d_neg_img + margin, d_pos - d_neg_txt + margin])
  )

  has_neg = jnp.any(neg_mask, axis=1)
  valid = jnp.concatenate([has_neg, has_neg])
  return _masked_mean(per_anchor, valid)


def _random_negative_indices(
  rng: chex.PRNGKey, neg_mask: chex.Array
) -> tuple[chex.Array, chex.Array]:
  """Uniform valid negative per anchor and direction via Gumbel-max; row i has no valid one -> 0."""
  batch = neg_mask.shape[0]
  gumbel = jax.random.gumbel(rng, (2, batch, batch))
  masks = jnp.stack([neg_mask, neg_mask.T])
  picks = jnp.argmax(jnp.where(masks, gumbel, -jnp.inf), axis=-1)
  return picks[0], picks[1]


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
  img: chex.Array,
  txt: chex.Array,
  labels: chex.Array,
  *,
  tau: float = 0.1,
  negatives: str = "all",
  k: int = 5,
  intra_weight: float = 0.5,
  margin: float = 0.0,
) -> chex.Array:
  """MNS-GAN multi-negative loss: inter-modal term + `intra_weight` x intra-modal term.

  One 2B x 2B cosine matrix of `z = concat(img, txt)` and one label-overlap mask serve both terms.
  For an anchor a with positive p and selected negatives N(a) the per-(a, p) loss is

    log(1 + sum_{n in N(a)} exp((s_an + margin - s_ap) / tau))
      = softplus(logsumexp_n((s_an + margin - s_ap) / tau)),

  the same value as `logaddexp(s_ap/tau, logsumexp_n((s_an + margin)/tau)) - s_ap/tau`. The masked
  logsumexp is max-shifted and gives exactly 0 (finite value, zero gradient) when N(a) is empty.

  Inter-modal term: all 2B anchors; p = the paired item of the other modality; negatives = items
  of the other modality with disjoint labels. Mean over the 2B anchors (anchors without a negative
  contribute 0).

  Intra-modal term: the same anchors against items of their own modality; positives = same-modality
  items sharing a label (not the anchor itself), negatives = same-modality items with disjoint
  labels. Each anchor averages the loss over ALL its positives (every positive is pulled, like the
  per-pair sum of the N-pair loss, rather than only the hardest or the mean positive); anchors
  without a positive or a negative contribute 0; mean over the 2B anchors.

  Negative selection, per anchor and per term:
    "all": every valid negative.
    "hardest": the `k` most similar valid negatives (all of them if fewer than k).
    "per_class": for each class c, the most similar valid negative whose labels contain c; the union
      of these (a multi-label item chosen for several classes counts once). With single-label data
      this is one negative per other class present in the batch: the multi-class N-pair loss.

  Args:
    img: image embeddings [B, D].
    txt: text embeddings [B, D]; row i is paired with `img[i]`.
    labels: multi-hot labels [B, C] of the pairs.
    tau: temperature (> 0).
    negatives: "all" | "hardest" | "per_class".
    k: number of hardest negatives for "hardest" (>= 1).
    intra_weight: weight gamma of the intra-modal term; a literal 0 skips computing it.
    margin: added to every negative similarity.

  Returns:
    Scalar `inter + intra_weight * intra`.

  References:
    Ma, Wang, Hou, "MNS-GAN" (multiple negative samples for cross-modal retrieval), ICECE 2021;
    Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 2016.
  """
  _check_batch([img, txt], labels)
  if negatives not in _MNS_NEGATIVES:
    raise ConfigError(f"negatives must be one of {_MNS_NEGATIVES}, got {negatives!r}")
  if negatives == "hardest" and not (isinstance(k, numbers.Integral) and k >= 1):
    raise ConfigError(f"k must be a positive integer, got {k!r}")

  batch = img.shape[0]
  n = 2 * batch
  z = jnp.concatenate([img, txt], axis=0)
  z_labels = jnp.concatenate([labels, labels], axis=0)
  sim = pairwise_cosine(z, z)
  disjoint = ~_share_label(z_labels, z_labels)

  index = jnp.arange(n)
  partner = (index + batch) % n
  modality = index >= batch
  same_modality = modality[:, None] == modality[None, :]
  itself = index[:, None] == index[None, :]
  is_partner = partner[:, None] == index[None, :]

  # Inter-modal: one positive per anchor, so the loss is one softplus per row.
  inter_neg = _select_negatives(
    sim, disjoint & ~same_modality & ~is_partner, z_labels, negatives=negatives, k=k
  )
  s_ap = sim[index, partner]
  lse, has_neg = _masked_logsumexp((sim + margin - s_ap[:, None]) / tau, inter_neg)
  inter = jnp.mean(jnp.where(has_neg, jax.nn.softplus(lse), 0.0))

  if isinstance(intra_weight, (int, float)) and intra_weight == 0:
    return inter

  # Intra-modal: the negative part does not depend on the positive, so one logsumexp per anchor
  # serves all its positives: loss(a, p) = softplus(lse_n((s_an + margin)/tau) - s_ap/tau).
  intra_neg = _select_negatives(
    sim, disjoint & same_modality & ~itself, z_labels, negatives=negatives, k=k
  )
  intra_pos = ~disjoint & same_modality & ~itself
  neg_lse, has_neg = _masked_logsumexp((sim + margin) / tau, intra_neg)
  pair_loss = jax.nn.softplus(neg_lse[:, None] - sim / tau)
  per_anchor = _masked_mean_rows(pair_loss, intra_pos)
  intra = jnp.mean(jnp.where(has_neg, per_anchor, 0.0))
  return inter + intra_weight * intra


def _masked_logsumexp(x: chex.Array, mask: chex.Array) -> tuple[chex.Array, chex.Array]:
  """Row-wise logsumexp over `mask`; rows with no entry give 0 (finite) and has_any = False."""
  has_any = jnp.any(mask, axis=-1)
  row_max = jnp.max(jnp.where(mask, x, -jnp.inf), axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  # Masked entries go to exp(0) before being zeroed: exp of a large masked value would overflow
  # and turn the zero cotangent of the where into NaN.
  shifted = jnp.where(mask, x - row_max, 0.0)
  total = jnp.sum(jnp.where(mask, jnp.exp(shifted), 0.0), axis=-1)
  lse = jnp.log(jnp.where(has_any, total, 1.0)) + row_max[:, 0]
  return jnp.where(has_any, lse, 0.0), has_any


def _masked_mean_rows(x: chex.Array, mask: chex.Array) -> chex.Array:
  count = jnp.sum(mask, axis=-1)
  total = jnp.sum(jnp.where(mask, x, 0.0), axis=-1)
  return total / jnp.maximum(count, 1).astype(x.dtype)


def _select_negatives(
  sim: chex.Array, valid: chex.Array, labels: chex.Array, *, negatives: str, k: int
) -> chex.Array:
  """Boolean [N, N] mask of the negatives each anchor (row) keeps, by similarity `sim`."""
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

_MS2GAN_MINING = ("all", "hardest")


def ms2gan_similarity_loss(
  spec_img: chex.Array,
  shared_img: chex.Array,
  spec_txt: chex.Array,
  shared_txt: chex.Array,
  labels: chex.Array,
  *,
  margin: float = 1.0,
  mining: str = "all",
) -> chex.Array:
  """MS2GAN inter- and intra-modal similarity loss L_sim (triplet on specific + shared features).

  Distance: `d(u, v) = ||f_u - f_v||^2 + ||s_u - s_v||^2` (f = modality-specific, s = shared).
  Anchors are all 2B items. A triplet (a, p, n) has p and n of the SAME modality (the pair type:
  image-text when that modality differs from the anchor's, image-image or text-text otherwise),
  p sharing a label with a (p != a) and n sharing none (n != a). Loss `relu(d_ap - d_an + margin)`.

  mining="all" (batch-all, the default): every valid triplet, averaged over all valid triplets of
  all pair types and anchors; O(B^3) memory. mining="hardest" (batch-hard): per anchor and pair type
  the farthest positive and the closest negative, averaged over the (anchor, pair type) cells that
  have both; O(B^2) memory.

  Args:
    spec_img: image modality-specific features f [B, Df].
    shared_img: image shared features s [B, Ds].
    spec_txt: text modality-specific features [B, Df].
    shared_txt: text shared features [B, Ds].
    labels: multi-hot labels [B, C] of the pairs.
    margin: triplet margin m1.
    mining: "all" | "hardest".

  Returns:
    Scalar loss; 0 when no valid triplet exists.

  References:
    Wu, Jing et al., "Modality-specific and shared generative adversarial network for cross-modal
    retrieval", Pattern Recognition 2020.
  """
  _check_batch([spec_img, spec_txt], labels)
  _check_batch([shared_img, shared_txt], labels)
  if mining not in _MS2GAN_MINING:
    raise ConfigError(f"mining must be one of {_MS2GAN_MINING}, got {mining!r}")

  batch = spec_img.shape[0]
  f = jnp.concatenate([spec_img, spec_txt], axis=0)
  s = jnp.concatenate([shared_img, shared_txt], axis=0)
  z_labels = jnp.concatenate([labels, labels], axis=0)
  dist = pairwise_sq_euclidean(f, f) + pairwise_sq_euclidean(s, s)
  share = _share_label(z_labels, z_labels)
  not_self = ~jnp.eye(2 * batch, dtype=bool)
  pos = share & not_self
  neg = ~share & not_self

  # Split the item axis by modality: [anchor, target modality, item of that modality].
  def by_target(x):
    return x.reshape(2 * batch, 2, batch)

  dist, pos, neg = by_target(dist), by_target(pos), by_target(neg)

  if mining == "hardest":
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


def dscmr_label_loss(pred_img: chex.Array, pred_txt: chex.Array, labels: chex.Array) -> chex.Array:
  """DSCMR label-space loss J1: `mean_i ||p_img_i - y_i||_2 + mean_i ||p_txt_i - y_i||_2`.

  The labels are used as given (one-hot or multi-hot, not normalised); the norm is not squared.

  Args:
    pred_img: label-space predictions of the images [B, C] (linear classifier outputs).
    pred_txt: label-space predictions of the texts [B, C].
    labels: multi-hot labels [B, C].

  Returns:
    Scalar sum of the two per-modality means.

  References:
    Zhen et al., "Deep Supervised Cross-modal Retrieval", CVPR 2019.
  """
  chex.assert_rank([pred_img, pred_txt, labels], 2)
  chex.assert_equal_shape([pred_img, pred_txt, labels])
  labels = labels.astype(pred_img.dtype)
  return jnp.mean(_safe_norm(pred_img - labels)) + jnp.mean(_safe_norm(pred_txt - labels))


def dscmr_pairwise_loss(f_img: chex.Array, f_txt: chex.Array, labels: chex.Array) -> chex.Array:
  """DSCMR common-space discrimination loss J2.

  `sum over (img, img), (img, txt), (txt, txt) of mean_{i,j} [log(1 + exp(t_ij)) - S_ij t_ij]`
  with `t_ij = cos(u_i, v_j) / 2` and `S_ij = 1` when i and j share a label. The means run over
  all B^2 entries, diagonal included, as in the reference implementation.

  Args:
    f_img: image common-space features [B, D].
    f_txt: text common-space features [B, D].
    labels: multi-hot labels [B, C].

  Returns:
    Scalar loss.

  References:
    Zhen et al., "Deep Supervised Cross-modal Retrieval", CVPR 2019.
  """
  _check_batch([f_img, f_txt], labels)
  sim = _share_label(labels, labels).astype(f_img.dtype)

  def term(u, v):
    t = pairwise_cosine(u, v) / 2.0
    return jnp.mean(jax.nn.softplus(t) - sim * t)

  return term(f_img, f_img) + term(f_img, f_txt) + term(f_txt, f_txt)


def dscmr_invariance_loss(f_img: chex.Array, f_txt: chex.Array) -> chex.Array:
  """DSCMR modality-invariance loss J3: `mean_i ||f_img_i - f_txt_i||_2` over the pairs.

  Args:
    f_img: image common-space features [B, D].
    f_txt: text common-space features [B, D], row i paired with `f_img[i]`.

  Returns:
    Scalar loss; identical pairs give 0 with a zero (finite) gradient.

  References:
    Zhen et al., "Deep Supervised Cross-modal Retrieval", CVPR 2019.
  """
  chex.assert_rank([f_img, f_txt], 2)
  chex.assert_equal_shape([f_img, f_txt])
  return jnp.mean(_safe_norm(f_img - f_txt))
