"""The training loop: a population of members, data parallel over a mesh of devices.

There is one loop. One device is a mesh of one: the step always runs under `jax.shard_map` over
the mesh axis `data`, vmapped over the population axis of the train state, inside a device
`fori_loop` of `num_steps` steps (a traced trip count: one compilation serves every chunk
length), with the state donated.

The global batch is `config.train.batch_size` whatever the device count N (N must divide it).
The global batch indices of a member's step are those of `batches.batch_indices`, and the
device at mesh position i takes rows `[i * B/N, (i + 1) * B/N)` of them, so the data order and,
to float rounding, the trained weights do not depend on N. The step itself
(`step.make_step` with `axis_name=AXIS`) gathers the network outputs so every loss term
sees the global batch, and averages the gradients.

Two ways to feed the devices (`config.parallel.feed`):

* "device" (the default with one process): the whole training split is replicated on every
  device and each device gathers its rows inside the loop: no host-to-device copy while
  training. Each member's epoch permutation is drawn once, at the epoch's first step.
* "host" (the default with several processes): every process computes the same global batch
  indices, for `host_steps` steps at a time, and puts on each of ITS devices only that device's
  rows, assembled into one global array with `jax.make_array_from_single_device_arrays`. Each
  process thus materialises on its devices only its own share of every batch.

Checkpoints hold the replicated state as ordinary (global) arrays, so a checkpoint written on N
devices restores on any other count.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mscross.errors import ConfigError
from mscross.training import batches, program_cache

AXIS = "data"


def resolve_num_devices(feed) -> int:
  """The number of devices the mesh spans (`feed.num_devices` of a `plan.DataFeed`, 0 = every
  device of every process), checked against the devices there are and the global batch, which
  it must divide."""
  available, requested = jax.device_count(), feed.num_devices
  if jax.process_count() > 1 and requested not in (0, available):
    raise ConfigError(
      f"with {jax.process_count()} processes the mesh spans every device of every process: "
      f"set config.parallel.num_devices to 0 or {available}, not {requested}"
    )
  n = requested or available
  if n > available:
    raise ConfigError(f"config.parallel.num_devices={n}, but there are only {available} devices")
  if feed.batch_size % n:
    raise ConfigError(
      f"config.train.batch_size={feed.batch_size} (the global batch) is not divisible "
      f"by the {n} devices used; change the batch size or config.parallel.num_devices"
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
    if mesh.size == 1 and jax.process_count() == 1:
      return jax.device_put(x, sharding)
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


class StopSignal:
  """`with StopSignal() as stop:` turns SIGINT/SIGTERM into a request, checked between chunks
  with `stop.requested()`, so the state is saved before the run ends; a second signal stops at
  once. Under several processes the check is a collective: all of them stop at the same step."""

  def __init__(self):
    self.signum, self._old = None, {}

  def __enter__(self) -> StopSignal:
    for sig in (signal.SIGINT, signal.SIGTERM):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    if self.signum is not None:
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)

  def requested(self) -> bool:
    return any_process(self.signum is not None)


@jax.jit
def where_members(mask, new, old):
  """Per member (the leading axis of every leaf): `new` where `mask` [P], else `old`."""
  return jax.tree.map(
    lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old
  )


def _population_step(step_fn: Callable) -> Callable:
  """`step_fn` over the leading member axis of the state and batch: vmapped, except for a
  population of one, whose step is traced plainly (the batching interpreter about doubles the
  trace of a step, which every run pays before its first step, compilation cache or not)."""
  vmapped = jax.vmap(step_fn)

  def step(state, batch):
    if state.step.shape[0] > 1:
      return vmapped(state, batch)
    one = lambda tree: jax.tree.map(lambda x: x[0], tree)
    new, metrics = step_fn(one(state), one(batch))
    return jax.tree.map(lambda x: x[None], (new, metrics))

  return step


def _accumulate(acc, metrics):
  # A skipped step's losses are NaN/inf by definition; keep them out of the averages.
  return jax.tree.map(lambda a, v: a + jnp.where(jnp.isfinite(v), v, 0.0), acc, metrics)


def _mean(sums, num_steps):
  n = jnp.maximum(num_steps, 1).astype(jnp.float32)
  return jax.tree.map(lambda s: s / n, sums)


class TrainLoop:
  """`loop(state, data, num_steps) -> (state, mean metrics [P])` for a population state
  replicated on `mesh`; `data` comes from `loop.data(split)`.

  Args:
    step_fn: one member's step, `step.make_step(..., axis_name=AXIS)`.
    mesh: from `make_mesh`.
    num_examples: rows of the training split.
    batch_size: the GLOBAL batch size.
    metric_names: the names of the step's metrics (`plan.metric_names`): the chunk's averages
      are built from them, where deriving them by tracing the step would cost a whole trace.
    feed: "device", "host" or "auto" (see the module docstring).
    host_steps: steps per host-to-device transfer with feed="host".
    program_key: what shapes the step beyond its arguments (the config minus the values it
      takes as inputs); with it and `cache_dir`, the device-fed loop is kept on disk by
      `program_cache` and a later run of the same key skips tracing it.
    cache_dir: where traced loops are kept; None keeps nothing.
  """

  def __init__(
    self,
    step_fn: Callable,
    mesh: Mesh,
    num_examples: int,
    batch_size: int,
    *,
    metric_names: tuple[str, ...],
    feed: str = "auto",
    host_steps: int = 50,
    program_key: str | None = None,
    cache_dir: str | None = None,
  ):
    batches.steps_per_epoch(num_examples, batch_size)  # validates sizes
    if feed == "auto":
      feed = "host" if jax.process_count() > 1 else "device"
    self.mesh, self.feed = mesh, feed
    self.num_examples, self.batch_size, self.host_steps = num_examples, batch_size, host_steps
    self.population_step = _population_step(step_fn)
    self.metric_names = tuple(metric_names)
    cached = cache_dir is not None and program_key is not None and jax.process_count() == 1
    self.program_key, self.cache_dir = (program_key, cache_dir) if cached else (None, None)
    self._flat_loop = None
    if feed == "device":
      self._loop = self._shard_mapped(self._device_chunk, P())
    else:
      self._loop = self._shard_mapped(self._host_chunk, P(None, None, AXIS))
      self._sharding = NamedSharding(mesh, P(None, None, AXIS))

  def _shard_mapped(self, chunk: Callable, data_spec: P) -> Callable:
    # check_vma=False: per-device gradients of the replicated params, as the pmean in the step
    # expects (the step module's docstring has the arithmetic).
    loop = jax.shard_map(
      chunk,
      mesh=self.mesh,
      in_specs=(P(), data_spec, P()),
      out_specs=(P(), P()),
      check_vma=False,
    )
    return jax.jit(loop, donate_argnums=0)

  def _metrics_zeros(self, state):
    return {name: jnp.zeros(state.step.shape, jnp.float32) for name in self.metric_names}

  def _device_chunk(self, state, arrays, num_steps):
    n, b = self.num_examples, self.batch_size
    per_epoch = n // b
    keys = state.data_key
    perms_of = jax.vmap(lambda k, e: batches.epoch_permutation(k, e, n), in_axes=(0, None))
    # Members share the step counter, so the epoch boundary is one unbatched condition and the
    # permutation is drawn only at the epoch's first step.
    first = state.step[0]
    perms = perms_of(keys, first // per_epoch)

    def batch_of(perms, step):
      idx = jax.vmap(lambda p: batches.batch_from_permutation(p, step, b))(perms)
      return batches.gather_batch(arrays, batches.device_rows(idx, AXIS))

    zeros = self._metrics_zeros(state)

    def body(i, carry):
      st, perms, acc = carry
      step = first + i
      perms = lax.cond(
        step % per_epoch == 0, lambda: perms_of(keys, step // per_epoch), lambda: perms
      )
      st, m = self.population_step(st, batch_of(perms, step))
      return st, perms, _accumulate(acc, m)

    state, _, sums = lax.fori_loop(0, num_steps, body, (state, perms, zeros))
    return state, _mean(sums, num_steps)

  def _host_chunk(self, state, batches, num_steps):
    # batches: leaves [host_steps, P, b, ...], this device's rows of every step of the chunk.
    zeros = self._metrics_zeros(state)

    def body(i, carry):
      st, acc = carry
      st, m = self.population_step(st, jax.tree.map(lambda x: x[i], batches))
      return st, _accumulate(acc, m)

    state, sums = lax.fori_loop(0, num_steps, body, (state, zeros))
    return state, _mean(sums, num_steps)

  def data(self, split):
    """What `__call__` takes as `data`: the split replicated on the mesh (device feed) or kept
    on the host (host feed)."""
    if self.feed == "device":
      return replicate(batches.device_arrays(split), self.mesh)
    return batches.host_arrays(split)

  def __call__(self, state, data, num_steps: int):
    if self.feed == "host":
      return self._host_fed(state, data, num_steps)
    if self.program_key is None:
      return self._loop(state, data, jnp.int32(num_steps))
    # The cached artefact takes flat lists: jax.export serializes no custom pytree nodes.
    leaves, treedef = jax.tree.flatten(state)
    data_leaves, data_def = jax.tree.flatten(data)
    if self._flat_loop is None:

      def flat(leaves, data_leaves, n):
        s = jax.tree.unflatten(treedef, leaves)
        s, m = self._loop(s, jax.tree.unflatten(data_def, data_leaves), n)
        return jax.tree.leaves(s), m

      self._flat_loop = program_cache.exported(
        jax.jit(flat, donate_argnums=0),
        self.program_key,
        self.cache_dir,
        leaves,
        data_leaves,
        jnp.int32(num_steps),
        donate_argnums=0,
      )
    leaves, metrics = self._flat_loop(leaves, data_leaves, jnp.int32(num_steps))
    return jax.tree.unflatten(treedef, leaves), metrics

  def _global_batches(self, arrays, idx: np.ndarray) -> dict:
    """Puts on each of this process's devices its rows of every step in `idx` [k, P, B]."""
    k = idx.shape[0]

    def put(values):
      shape = (self.host_steps, idx.shape[1], self.batch_size, *values.shape[1:])
      pieces = []
      for device, index in self._sharding.addressable_devices_indices_map(shape).items():
        rows = idx[:, :, index[2]]
        buf = np.zeros((self.host_steps, *rows.shape[1:], *values.shape[1:]), values.dtype)
        buf[:k] = values[rows]
        pieces.append(jax.device_put(buf, device))
      return jax.make_array_from_single_device_arrays(shape, self._sharding, pieces)

    return jax.tree.map(put, arrays)

  def _host_fed(self, state, arrays, num_steps: int):
    step, done, sums = int(to_host(state.step)[0]), 0, None
    keys = to_host(state.data_key)
    while done < num_steps:
      k = min(self.host_steps, num_steps - done)
      idx = batches.host_batch_indices(
        keys, step + done, self.host_steps, self.num_examples, self.batch_size
      )[:k]
      state, metrics = self._loop(state, self._global_batches(arrays, idx), jnp.int32(k))
      # Fetching the metrics waits for the loop: all-gather loops dispatched back to back can
      # deadlock on fake CPU devices, and the next loop's input is built on the host anyway.
      host = {name: k * np.asarray(v, np.float64) for name, v in to_host(metrics).items()}
      sums = host if sums is None else {n: sums[n] + host[n] for n in sums}
      done += k
    return state, {name: np.float32(v / max(num_steps, 1)) for name, v in sums.items()}
