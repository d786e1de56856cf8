"""Training batches: the whole training split on the device, every batch gathered INSIDE the
jitted loop from indices that depend only on (the member's data key, step).

The benchmark datasets fit in device memory many times over, so the split is put on the device
once. Epoch e uses the permutation `permutation(fold_in(key, e), N)`, and step s takes rows
`[(s mod S) * B, (s mod S) * B + B)` of it (S = steps per epoch, the last partial batch
dropped). A resumed run therefore sees exactly the batches an uninterrupted run would. The
training loop draws each epoch's permutation once, at the epoch's first step, rather than at
every step.

Under data parallelism (`mscross.training.loop`) the global batch indices are the same, and
device i of N takes rows `[i * B/N, (i + 1) * B/N)` of them, so the data order does not depend
on the device count.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mscross import data
from mscross.errors import DataError


def device_arrays(split: data.Split) -> dict:
  """{"inputs": {modality: [N, d]}, "label": [N, C] (labelled data only)} as device arrays."""
  arrays = {"inputs": {m: jnp.asarray(x) for m, x in split.features.items()}}
  if split.label is not None:
    arrays["label"] = jnp.asarray(split.label)
  return arrays


def host_arrays(split: data.Split) -> dict:
  arrays = {"inputs": dict(split.features)}
  if split.label is not None:
    arrays["label"] = split.label
  return arrays


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  if num_examples < batch_size:
    raise DataError(
      f"the training split has {num_examples} pairs, fewer than train.batch_size={batch_size}"
    )
  return num_examples // batch_size


def epoch_permutation(key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
  return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


def batch_from_permutation(perm: jax.Array, step: jax.Array, batch_size: int) -> jax.Array:
  """Row indices of the batch of `step` within its epoch's permutation `perm`."""
  pos = step % (perm.shape[0] // batch_size)
  return lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size)


def batch_indices(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int):
  """Row indices of the batch of `step` (traceable; the reference the loop must agree with)."""
  epoch = step // (num_examples // batch_size)
  return batch_from_permutation(epoch_permutation(key, epoch, num_examples), step, batch_size)


def gather_batch(arrays: dict, idx: jax.Array) -> dict:
  return jax.tree.map(lambda v: jnp.take(v, idx, axis=0), arrays)


def device_rows(idx: jax.Array, axis_name: str) -> jax.Array:
  """This device's rows `[i * b, (i + 1) * b)` of the global batch indices `idx` (last axis),
  b = B / N (inside `shard_map` over `axis_name`, whose size N divides B)."""
  local = idx.shape[-1] // lax.axis_size(axis_name)
  return lax.dynamic_slice_in_dim(idx, lax.axis_index(axis_name) * local, local, axis=-1)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _steps_indices(keys, first_step, num_steps, num_examples, batch_size):
  steps = first_step + jnp.arange(num_steps, dtype=jnp.int32)
  per_step = lambda s: jax.vmap(lambda k: batch_indices(k, s, num_examples, batch_size))(keys)
  return jax.vmap(per_step)(steps)


def host_batch_indices(
  keys: jax.Array, first_step: int, num_steps: int, num_examples: int, batch_size: int
) -> np.ndarray:
  """[num_steps, P, B] batch indices of P members' data keys [P, 2] for steps first_step, ...,
  on the host: the rows `batch_indices` gives inside the loop (threefry is deterministic on
  every platform, so every process computes the same ones)."""
  idx = _steps_indices(keys, jnp.int32(first_step), num_steps, num_examples, batch_size)
  return np.asarray(jax.device_get(idx))
