"""From dataset splits to training batches.

Input transform: per modality, a signed power map, then per-feature standardisation with
statistics of the TRAINING split (never of test). The fitted transform is saved in the workdir
(`input_transform.npz`), so a trained model encodes new vectors exactly as it saw its training
data, without the training data.

Batches: the benchmark datasets fit in device memory many times over, so the whole training
split is put on the device once and every batch is gathered INSIDE the jitted loop from indices
that depend only on (the member's data key, step): epoch e uses the permutation
`permutation(fold_in(key, e), N)`, and step s takes rows `[(s mod S) * B, (s mod S) * B + B)`
of it (S = steps per epoch, the last partial batch dropped). A resumed run therefore sees
exactly the batches an uninterrupted run would. The training loop draws each epoch's
permutation once, at the epoch's first step, rather than at every step.

Under data parallelism (`mscross.training.loop`) the global batch indices are the same, and
device i of N takes rows `[i * B/N, (i + 1) * B/N)` of them, so the data order does not depend
on the device count.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mscross import atomic, data
from mscross.errors import DataError
from mscross.methods.models import DataSpec


def signed_power(x: np.ndarray, power: float) -> np.ndarray:
  """sign(x) |x|^power: power 0.5 on bag-of-words histograms is the Hellinger map, which damps
  bursty words/visual words (Perronnin et al., ECCV 2010)."""
  if power == 1.0:
    return x
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    return (np.sign(x) * np.abs(x) ** power).astype(np.float32)


# Without standardisation, inputs beyond this size saturate every activation of the encoders.
UNSCALED_LIMIT = 1e8


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Per modality: signed power map, then (x - mean) / std with training-split statistics."""

  power: dict[str, float]
  mean: dict[str, np.ndarray]
  std: dict[str, np.ndarray]
  # The config key each modality's power came from ("data.power" or "data.powers.<modality>"),
  # for the message when the power map makes data non-finite.
  power_key: dict[str, str] = dataclasses.field(default_factory=dict)

  @classmethod
  def fit(cls, split: data.Split, *, standardize: bool, power: float, powers) -> Normalizer:
    keys = {m: f"data.powers.{m}" if m in powers else "data.power" for m in split.modalities}
    powers = {m: float(powers.get(m, power)) for m in split.modalities}
    mean, std = {}, {}
    for m, x in split.features.items():
      _finite(x, m, None, "train")
      x = _finite(signed_power(x, powers[m]), m, f"{keys[m]}={powers[m]:g}", "train")
      if standardize:
        # In float64: squares of float32 features beyond ~1e19 overflow float32, and the
        # statistics then turn every such feature into noise without an error.
        wide = x.astype(np.float64)
        s = wide.std(axis=0)
        # Constant features (common in BoVW histograms) would divide by zero; "constant" is
        # relative to the feature's magnitude, so features far from 1 in scale are judged alike.
        scale = np.abs(wide).max(axis=0)
        mean[m], std[m] = wide.mean(axis=0), np.where(s > 1e-8 * scale, s, 1.0)
      else:
        largest = float(np.abs(x).max(initial=0.0))
        if largest > UNSCALED_LIMIT:
          raise DataError(
            f"modality {m!r} has training features as large as {largest:.3g} and "
            "data.standardize is off: the network would see them unscaled; set "
            "data.standardize=true or rescale the features"
          )
        mean[m], std[m] = np.zeros(x.shape[1]), np.ones(x.shape[1])
      mean[m], std[m] = mean[m].astype(np.float32), std[m].astype(np.float32)
    return cls(powers, mean, std, keys)

  def transform(self, modality: str, x: np.ndarray, where: str = "input") -> np.ndarray:
    """[N, d] raw features of `modality` -> the network's input; DataError when non-finite."""
    if modality not in self.mean:
      raise DataError(f"unknown modality {modality!r}; the model has {', '.join(self.mean)}")
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != self.mean[modality].shape[0]:
      raise DataError(
        f"{modality} features must be [N, {self.mean[modality].shape[0]}], got {x.shape}"
      )
    p = self.power[modality]
    _finite(x, modality, None, where)
    key = self.power_key.get(modality, "data.power")
    x = _finite(signed_power(x, p), modality, f"{key}={p:g}", where)
    out = (x - self.mean[modality]) / self.std[modality]
    return _finite(out.astype(np.float32), modality, "standardisation", where)

  def __call__(self, split: data.Split, where: str = "split") -> data.Split:
    features = {m: self.transform(m, x, where) for m, x in split.features.items()}
    return dataclasses.replace(split, features=features)

  def save(self, path: str) -> None:
    arrays = {}
    for m in self.mean:
      arrays[f"mean/{m}"], arrays[f"std/{m}"] = self.mean[m], self.std[m]
      arrays[f"power/{m}"] = np.float64(self.power[m])
      arrays[f"power_key/{m}"] = np.str_(self.power_key.get(m, "data.power"))
    with atomic.replacing(path, suffix=".npz") as tmp:
      np.savez(tmp, **arrays)

  @classmethod
  def load(cls, path: str) -> Normalizer:
    with np.load(path) as f:
      names = [k.split("/", 1)[1] for k in f.files if k.startswith("mean/")]
      return cls(
        {m: float(f[f"power/{m}"]) for m in names},
        {m: f[f"mean/{m}"] for m in names},
        {m: f[f"std/{m}"] for m in names},
        # Absent from transforms saved before the key was recorded.
        {m: str(f[f"power_key/{m}"]) for m in names if f"power_key/{m}" in f.files},
      )


def _finite(x: np.ndarray, modality: str, step: str | None, where: str) -> np.ndarray:
  """`x` if every value is finite; else a DataError naming the transform `step` that made it
  non-finite (None: `x` is the untransformed input, which is then what the message names)."""
  bad = ~np.isfinite(x)
  if bad.any():
    rows, cols = np.nonzero(bad)
    if step is None:
      raise DataError(
        f"{int(bad.sum())} value(s) of modality {modality!r} in the {where} data are non-finite "
        f"before any transform (first: row {rows[0]}, feature {cols[0]}); fix the input"
      )
    if step.startswith("data.power"):
      key = step.split("=", 1)[0]
      hint = f"a negative power of a zero feature is the usual cause: choose another {key}"
    else:
      hint = "the features overflow float32: rescale them"
    raise DataError(
      f"the input transform {step} made {int(bad.sum())} value(s) of modality {modality!r} "
      f"non-finite in the {where} data (first: row {rows[0]}, feature {cols[0]}); {hint}"
    )
  return x


def data_options(config) -> data.Options:
  """How the dataset's raw items (if any) become features: `data.encoders` and friends."""
  d = config.data
  return data.Options(
    encoders=dict(d.encoders), bad_input=d.bad_input, batch_size=int(d.encode_batch)
  )


def load_problems(config) -> list[data.Problem]:
  """The raw items skipped or converted when `config.data.name` was prepared."""
  data_dir = data.resolve_data_dir(config.data.data_dir or None)
  return data.load_problems(config.data.name, data_dir, data_options(config))


def load_raw(config, splits=("train", "validation", "test")) -> dict[str, data.Split]:
  """The named raw splits of `config.data.name`, labels dropped when `data.labels` is off."""
  data_dir = data.resolve_data_dir(config.data.data_dir or None)
  options = data_options(config)
  out = {}
  for name in splits:
    split = data.load_split(config.data.name, name, data_dir, options)
    if not config.data.labels and split.label is not None:
      split = dataclasses.replace(split, label=None, class_names=())
    out[name] = split
  return out


def fit_normalizer(config, train: data.Split) -> Normalizer:
  d = config.data
  return Normalizer.fit(train, standardize=d.standardize, power=d.power, powers=d.powers)


def data_spec(split: data.Split) -> DataSpec:
  return DataSpec(
    modalities=split.modalities,
    dims=tuple(int(x.shape[1]) for x in split.features.values()),
    num_classes=0 if split.label is None else int(split.label.shape[1]),
    class_names=tuple(split.class_names),
  )


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
