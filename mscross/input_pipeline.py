"""From dataset splits to training batches.

The benchmark datasets fit in device memory many times over, so the whole training split is put
on the device once and every batch is gathered INSIDE the jitted step from indices that depend
only on (seed, step): epoch e uses the permutation `permutation(fold_in(key, e), N)`, and step s
takes rows `[(s mod S) * B, (s mod S) * B + B)` of it (S = steps per epoch, last partial batch
dropped). A resumed run therefore sees exactly the batches an uninterrupted run would, and there
is no host-to-device copy on the training path.

Under data parallelism (`mscross.parallel`) the global batch indices are the same, and device i
of N takes rows `[i * B/N, (i + 1) * B/N)` of them, so the data order does not depend on the
device count. Either every device holds the whole split and gathers its rows in the step
(`device_rows`), or the host gathers them (`host_batch_indices`) and each process puts only its
own devices' rows on them (multi-host).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mscross import data
from mscross.errors import ConfigError, DataError


def signed_power(x: np.ndarray, power: float) -> np.ndarray:
  """sign(x) |x|^power: power 0.5 on bag-of-words histograms is the Hellinger map, which damps
  bursty words/visual words (Perronnin et al., ECCV 2010)."""
  return x if power == 1.0 else np.sign(x) * np.abs(x) ** power


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Signed power map, then per-feature standardisation with statistics of the training split
  (never of test)."""

  img_mean: np.ndarray
  img_std: np.ndarray
  txt_mean: np.ndarray
  txt_std: np.ndarray
  img_power: float = 1.0
  txt_power: float = 1.0

  @classmethod
  def fit(cls, split: data.Split, enabled: bool, img_power=1.0, txt_power=1.0) -> Normalizer:
    def stats(x):
      if not enabled:
        return np.zeros(x.shape[1], np.float32), np.ones(x.shape[1], np.float32)
      std = x.std(axis=0)
      # Constant features (common in BoVW histograms) would divide by zero.
      return x.mean(axis=0), np.where(std > 1e-8, std, 1.0).astype(np.float32)

    im, isd = stats(signed_power(split.image, img_power))
    tm, tsd = stats(signed_power(split.text, txt_power))
    return cls(im, isd, tm, tsd, img_power, txt_power)

  def __call__(self, split: data.Split) -> data.Split:
    img = signed_power(split.image, self.img_power)
    txt = signed_power(split.text, self.txt_power)
    return dataclasses.replace(
      split,
      image=((img - self.img_mean) / self.img_std).astype(np.float32),
      text=((txt - self.txt_mean) / self.txt_std).astype(np.float32),
    )


def load_splits(config, splits=("train", "validation", "test")) -> dict[str, data.Split]:
  """Loads the named splits of `config.data.name`, standardised with training statistics."""
  data_dir = data.resolve_data_dir(config.data.data_dir or None)
  raw = {"train": data.load_split(config.data.name, "train", data_dir)}
  for name in splits:
    if name not in raw:
      raw[name] = data.load_split(config.data.name, name, data_dir)
  d = config.data
  norm = Normalizer.fit(raw["train"], d.standardize, d.img_power, d.txt_power)
  return {name: norm(raw[name]) for name in splits}


def device_arrays(split: data.Split) -> dict[str, jax.Array]:
  return {
    "image": jnp.asarray(split.image),
    "text": jnp.asarray(split.text),
    "label": jnp.asarray(split.label),
  }


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  if batch_size < 2:
    raise ConfigError(f"train.batch_size must be at least 2, got {batch_size}")
  if num_examples < batch_size:
    raise DataError(
      f"the training split has {num_examples} pairs, fewer than train.batch_size={batch_size}"
    )
  return num_examples // batch_size


def batch_indices(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int):
  """Row indices of the batch for `step` (traceable; see the module docstring)."""
  per_epoch = num_examples // batch_size
  epoch, pos = step // per_epoch, step % per_epoch
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
  return jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size)


def gather_batch(arrays: dict[str, jax.Array], idx: jax.Array) -> dict[str, jax.Array]:
  return {k: jnp.take(v, idx, axis=0) for k, v in arrays.items()}


def device_rows(idx: jax.Array, axis_name: str) -> jax.Array:
  """This device's rows `[i * b, (i + 1) * b)` of the global batch indices `idx`, b = B / N
  (inside `shard_map` over `axis_name`, whose size N divides B)."""
  local = idx.shape[0] // lax.axis_size(axis_name)
  return lax.dynamic_slice_in_dim(idx, lax.axis_index(axis_name) * local, local)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _steps_indices(key, first_step, num_steps, num_examples, batch_size):
  steps = first_step + jnp.arange(num_steps, dtype=jnp.int32)
  return jax.vmap(lambda s: batch_indices(key, s, num_examples, batch_size))(steps)


def host_batch_indices(
  key: jax.Array, first_step: int, num_steps: int, num_examples: int, batch_size: int
) -> np.ndarray:
  """[num_steps, B] batch indices of steps first_step, first_step + 1, ... on the host: the same
  rows `batch_indices` gives inside the step (threefry is deterministic on every platform, so
  every process computes the same ones)."""
  idx = _steps_indices(key, jnp.int32(first_step), num_steps, num_examples, batch_size)
  return np.asarray(jax.device_get(idx))
