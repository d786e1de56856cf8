"""Label prediction and regularisation: the label cross-entropy every method but DSCMR trains,
and the Frobenius regulariser of the kernels."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from mscross.methods.losses.geometry import (
  safe_norm,
)


def label_cross_entropy(
  logits: chex.Array,
  labels: chex.Array,
  *,
  multilabel: bool = False,
  smoothing: chex.Numeric = 0.0,
) -> chex.Array:
  """Per-example label-prediction cross-entropy (ACMR L_imd, MS2GAN L_sd).

  Single-label mode: softmax cross-entropy against the labels normalised to sum to 1 (a multi-hot
  row spreads its mass evenly over its classes; an all-zero row gives 0). Multi-label mode: sigmoid
  binary cross-entropy summed over classes. Label smoothing mixes the targets with the uniform
  distribution over the C classes (single-label: (1 - s) t + s / C; multi-label: each class's
  target (1 - s) t + s / 2).

  Args:
    logits: class logits [B, C].
    labels: multi-hot float labels [B, C].
    multilabel: sigmoid BCE (True) or softmax CE (False).
    smoothing: label smoothing s in [0, 1) (may be traced); 0 leaves the targets as they are.

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
  smooth = not (isinstance(smoothing, int | float) and smoothing == 0)
  if multilabel:
    targets = (1.0 - smoothing) * labels + smoothing / 2.0 if smooth else labels
    return jnp.sum(jax.nn.softplus(logits) - targets * logits, axis=-1)
  mass = jnp.sum(labels, axis=-1, keepdims=True)
  targets = labels / jnp.where(mass > 0, mass, 1.0)
  if smooth:
    # An unlabelled row keeps its zero target (and loss).
    uniform = jnp.where(mass > 0, smoothing / labels.shape[-1], 0.0)
    targets = (1.0 - smoothing) * targets + uniform
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
  norms = [safe_norm(jnp.ravel(leaf)) for path, leaf in leaves if _is_kernel(path)]
  if not norms:
    return jnp.zeros(())
  return functools.reduce(jnp.add, norms)


def kernel_mask(params: chex.ArrayTree) -> chex.ArrayTree:
  """The pytree of `params` with True at every kernel leaf and False elsewhere (biases): what
  the regulariser and decoupled weight decay act on."""
  return jax.tree_util.tree_map_with_path(lambda path, _: _is_kernel(path), params)


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
