"""Data-parallel training: one mesh axis `data` over every device, on one host or many.

The global batch is `config.train.batch_size` whatever the device count N (N must divide it). The
global batch indices of a step are those of the single-device run (`input_pipeline`), and the
device at mesh position i takes rows `[i * B/N, (i + 1) * B/N)` of them, so the data order and,
to float rounding, the trained weights do not depend on N. The step itself is the single-device
`train_step.make_train_step` with its collectives switched on (`axis_name=AXIS`): it runs under
`jax.shard_map` with the train state replicated, gathers the network outputs so every loss term
sees the global batch, and averages the gradients (see `mscross.train_step` for why a pmean of
per-device gradients is exactly the single-device gradient).

Two ways to feed the devices (`config.parallel.feed`):

* "device" (the default with one process): the whole training split is replicated on every
  device and each device gathers its rows inside the jitted loop, as on one device: no
  host-to-device copy while training.
* "host" (the default with several processes): every process computes the same global batch
  indices, for `host_steps` steps at a time, and puts on each of ITS devices only that device's
  rows, assembled into one global array with `jax.make_array_from_single_device_arrays`. Each
  process thus materialises on its devices only its own share of every batch.

Checkpoints hold the replicated state as ordinary (global) arrays, so a checkpoint written on N
devices restores on any other count, one included.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mscross import data, input_pipeline, train_step
from mscross.errors import ConfigError

AXIS = "data"


def resolve_num_devices(config) -> int:
  """The number of devices `config.parallel.num_devices` asks for, checked against the devices
  there are and the global batch size."""
  available = jax.device_count()
  requested = int(config.parallel.num_devices)
  batch = int(config.train.batch_size)
  if jax.process_count() > 1 and requested not in (0, available):
    raise ConfigError(
      f"with {jax.process_count()} processes the mesh spans every device of every process: "
      f"set config.parallel.num_devices to 0 or {available}, not {requested}"
    )
  n = requested or available
  if n > available:
    raise ConfigError(f"config.parallel.num_devices={n}, but there are only {available} devices")
  if batch % n:
    raise ConfigError(
      f"config.train.batch_size={batch} (the global batch) is not divisible by the {n} devices "
      "used; change the batch size or config.parallel.num_devices"
    )
  return n


def make_mesh(num_devices: int) -> Mesh:
  """A 1-D mesh with axis `AXIS` over `num_devices` devices (all of them: in the topology-aware
  order `jax.make_mesh` chooses)."""
  devices = None if num_devices == jax.device_count() else jax.devices()[:num_devices]
  # Auto axis types: with the default explicit ones, the all-pairs similarity of two
  # batch-sharded arrays is a sharding type error outside shard_map.
  return jax.make_mesh(
    (num_devices,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
  )


def replicate(tree, mesh: Mesh):
  """`tree` as fully replicated global arrays on `mesh` (each process passes the same values, as
  every process builds the same initial state or restores the same checkpoint)."""
  sharding = NamedSharding(mesh, P())

  def put(x):
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, tree)


def local_copy(tree):
  """One replica of replicated arrays, on this process's first device: what evaluation and the
  host read, since under several processes the global arrays are not all addressable here."""
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def to_host(tree):
  """NumPy values of replicated (or single-device) arrays; blocks until they are computed."""
  return jax.device_get(local_copy(tree))


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any: a signal that reached one process stops
  them all at the same step instead of leaving the others waiting in a collective."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


def _split_arrays(split: data.Split) -> dict[str, np.ndarray]:
  return {"image": split.image, "text": split.text, "label": split.label}


def make_parallel_chunk(
  step_fn: Callable,
  mesh: Mesh,
  data_key: jax.Array,
  split: data.Split,
  batch_size: int,
  *,
  feed: str = "auto",
  host_steps: int = 50,
):
  """The data-parallel counterpart of `train_step.make_train_chunk`.

  Args:
    step_fn: `make_train_step(..., axis_name=AXIS)`.
    mesh: from `make_mesh`.
    data_key: the key of the batch order (as for `make_train_chunk`).
    split: the (standardised) training split, on the host.
    batch_size: the GLOBAL batch size.
    feed: "device", "host" or "auto" (see the module docstring).
    host_steps: steps per host-to-device transfer with feed="host".

  Returns:
    (chunk, data): `chunk(state, data, num_steps) -> (state, mean metrics)` with `state`
    replicated on `mesh` (`replicate`), state donated.
  """
  num_examples = len(split.label)
  input_pipeline.steps_per_epoch(num_examples, batch_size)  # validates sizes
  if batch_size % mesh.size:
    raise ConfigError(f"batch size {batch_size} is not divisible by the {mesh.size} devices")
  if feed == "auto":
    feed = "host" if jax.process_count() > 1 else "device"
  if feed == "device":
    return _device_fed_chunk(step_fn, mesh, data_key, num_examples, batch_size), replicate(
      _split_arrays(split), mesh
    )
  if feed == "host":
    chunk = _HostFedChunk(step_fn, mesh, data_key, num_examples, batch_size, int(host_steps))
    return chunk, _split_arrays(split)
  raise ConfigError(f"config.parallel.feed must be auto, device or host: {feed!r}")


def _shard_mapped_loop(one: Callable, mesh: Mesh, data_spec: P) -> Callable:
  # check_vma=False: per-device gradients of the replicated params, as the pmean in the step
  # expects (train_step's module docstring has the arithmetic).
  loop = jax.shard_map(
    train_step.make_chunk_loop(one),
    mesh=mesh,
    in_specs=(P(), data_spec, P()),
    out_specs=(P(), P()),
    check_vma=False,
  )
  return jax.jit(loop, donate_argnums=0)


def _device_fed_chunk(step_fn, mesh, data_key, num_examples, batch_size):
  def one(state, arrays, i):
    del i  # the batch follows from the state's own step
    idx = input_pipeline.batch_indices(data_key, state.step, num_examples, batch_size)
    rows = input_pipeline.device_rows(idx, AXIS)
    return step_fn(state, input_pipeline.gather_batch(arrays, rows))

  return _shard_mapped_loop(one, mesh, P())


class _HostFedChunk:
  """`chunk(state, arrays, num_steps)` for feed="host": `host_steps` steps per device loop, each
  loop fed a [host_steps, B, ...] array sharded over the batch axis (padded, so one compilation
  serves every chunk length)."""

  def __init__(self, step_fn, mesh, data_key, num_examples, batch_size, host_steps):
    self.mesh, self.key = mesh, data_key
    self.num_examples, self.batch_size, self.host_steps = num_examples, batch_size, host_steps
    self.sharding = NamedSharding(mesh, P(None, AXIS))

    def one(state, batches, i):
      return step_fn(state, jax.tree.map(lambda x: x[i], batches))

    self.loop = _shard_mapped_loop(one, mesh, P(None, AXIS))

  def _global_batches(self, arrays: dict[str, np.ndarray], idx: np.ndarray) -> dict:
    """Puts on each of this process's devices its rows of every step in `idx` [k, B]."""
    k, out = idx.shape[0], {}
    for name, values in arrays.items():
      shape = (self.host_steps, self.batch_size, *values.shape[1:])
      pieces = []
      for device, index in self.sharding.addressable_devices_indices_map(shape).items():
        rows = idx[:, index[1]]
        buf = np.zeros((self.host_steps, rows.shape[1], *values.shape[1:]), values.dtype)
        buf[:k] = values[rows]
        pieces.append(jax.device_put(buf, device))
      out[name] = jax.make_array_from_single_device_arrays(shape, self.sharding, pieces)
    return out

  def __call__(self, state, arrays: dict[str, np.ndarray], num_steps: int):
    step, done, sums = int(to_host(state.step)), 0, {}
    while done < num_steps:
      k = min(self.host_steps, num_steps - done)
      idx = input_pipeline.host_batch_indices(
        self.key, step + done, self.host_steps, self.num_examples, self.batch_size
      )[:k]
      state, metrics = self.loop(state, self._global_batches(arrays, idx), k)
      # Fetching the metrics waits for the loop: all-gather loops dispatched back to back can
      # deadlock on fake CPU devices, and the next loop's input is built on the host anyway.
      for name, value in to_host(metrics).items():
        sums[name] = sums.get(name, 0.0) + k * np.asarray(value, np.float64)
      done += k
    return state, {name: np.float32(v / max(num_steps, 1)) for name, v in sums.items()}
