"""The adversarial game's pieces: gradient reversal, the DANN schedule of its weight, the
discriminator's modality loss and the encoders' non-saturating confusion term."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


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
