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

from mscross.methods.losses.acmr import acmr_triplet_loss
from mscross.methods.losses.adversarial import (
  dann_lambda,
  gradient_reversal,
  modality_adversarial_loss,
  modality_confusion_loss,
)
from mscross.methods.losses.dscmr import (
  dscmr_invariance_loss,
  dscmr_label_loss,
  dscmr_pairwise_loss,
)
from mscross.methods.losses.geometry import pairwise_cosine, pairwise_sq_euclidean
from mscross.methods.losses.labels import frobenius_regulariser, kernel_mask, label_cross_entropy
from mscross.methods.losses.mnsgan import multi_negative_loss, soft_triplet_loss
from mscross.methods.losses.ms2gan import (
  large_margin_difference_loss,
  ms2gan_similarity_loss,
  orthogonality_difference_loss,
)

__all__ = [
  "acmr_triplet_loss",
  "dann_lambda",
  "dscmr_invariance_loss",
  "dscmr_label_loss",
  "dscmr_pairwise_loss",
  "frobenius_regulariser",
  "gradient_reversal",
  "kernel_mask",
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
