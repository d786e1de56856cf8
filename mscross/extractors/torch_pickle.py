"""Reading PyTorch weight files (state dicts) as numpy arrays, without PyTorch and without
trusting the file.

A `.pth` file is a pickle, and unpickling can call any function it names, so a downloaded weight
file is untrusted code. This reader lets the pickle name only what a state dict is made of
(ordered dicts, the tensor rebuild functions, the typed storage classes), refuses everything
else, and builds each tensor itself from the raw storage bytes, checking every offset, shape and
stride against the bytes really present.

Both of PyTorch's layouts are read:
- the legacy one (`torch.save(..., _use_new_zipfile_serialization=False)`, and everything saved
  before PyTorch 1.6): a magic-number pickle, a protocol-version pickle, a system-info pickle,
  the pickled object whose tensors point at storages by key, the list of storage keys, then each
  storage as an 8-byte element count followed by its raw bytes;
- the zip one (the default since 1.6): `<archive>/data.pkl` plus one `<archive>/data/<key>`
  entry of raw bytes per storage.

A file is untrusted input in cost too: whatever it holds, reading it ends in a tensor dict or in
one `DataError` line, in time and memory bounded by its size. `file_bounds` walks every pickle
and checks every archive before anything is built; the checks here bound what is built from
them: integers range-checked before any arithmetic, nesting and key length capped, a dict
reached twice (a cycle) or two tensors under one key refused, and no tensor larger than the
storage bytes it reads, nor all of them together more than twice the file's storages.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from mscross.errors import DataError, one_line, printable, shown
from mscross.extractors import file_bounds

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# Dicts within dicts: a checkpoint nests a state dict in one or two ({"model": {...}}).
MAX_DEPTH = 32
# Characters of one joined state-dict key ("layer.0.attention.query.weight").
MAX_KEY = 1000
# Dimensions of a tensor (numpy's own limit).
MAX_DIMS = 32
# Sizes, strides and offsets: anything larger cannot address bytes of a real file.
MAX_INDEX = 1 << 62

# Element types of torch's typed storages, by their class name in the `torch` module.
STORAGE_DTYPES = {
  "FloatStorage": np.dtype(np.float32),
  "DoubleStorage": np.dtype(np.float64),
  "HalfStorage": np.dtype(np.float16),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
  "LongStorage": np.dtype(np.int64),
  "IntStorage": np.dtype(np.int32),
  "ShortStorage": np.dtype(np.int16),
  "CharStorage": np.dtype(np.int8),
  "ByteStorage": np.dtype(np.uint8),
  "BoolStorage": np.dtype(np.bool_),
}


class _Immutable:
  """Base of the placeholders the pickle gets to see: a pickle can BUILD (set the state of) any
  object it holds, so these refuse it rather than let the file rewrite an offset after checks."""

  __slots__ = ()

  def __setstate__(self, state):
    raise pickle.UnpicklingError(f"cannot set the state of a {type(self).__name__}")


class _StorageType(_Immutable):
  __slots__ = ("name", "dtype")

  def __init__(self, name: str):
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "dtype", STORAGE_DTYPES[name])


class _Storage(_Immutable):
  """A storage (or a view of one, from old files) named by key; its bytes are read later."""

  __slots__ = ("key", "dtype", "offset", "numel")

  def __init__(self, key: str, dtype: np.dtype, offset: int, numel: int | None):
    object.__setattr__(self, "key", key)
    object.__setattr__(self, "dtype", dtype)
    object.__setattr__(self, "offset", offset)
    object.__setattr__(self, "numel", numel)


class _Tensor(_Immutable):
  __slots__ = ("storage", "offset", "shape", "stride")

  def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple):
    object.__setattr__(self, "storage", storage)
    object.__setattr__(self, "offset", offset)
    object.__setattr__(self, "shape", shape)
    object.__setattr__(self, "stride", stride)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _index(value) -> bool:
  return _is_int(value) and 0 <= value < MAX_INDEX


def _int_tuple(value) -> bool:
  return isinstance(value, tuple) and len(value) <= MAX_DIMS and all(map(_index, value))


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
  # torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError("a tensor whose storage is not a storage")
  if not _index(storage_offset):
    raise pickle.UnpicklingError(f"a tensor with storage offset {shown(storage_offset)}")
  if not (_int_tuple(size) and _int_tuple(stride) and len(size) == len(stride)):
    raise pickle.UnpicklingError(f"a tensor with size {shown(size)} and stride {shown(stride)}")
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
  # torch._utils._rebuild_parameter(data, requires_grad, hooks): a Parameter is its tensor here.
  if not isinstance(data, _Tensor):
    raise pickle.UnpicklingError("a parameter that is not a tensor")
  return data


class _Refused(pickle.UnpicklingError):
  pass


class _Unpickler(pickle.Unpickler):
  """An unpickler that knows only the names a state dict needs; storages become `_Storage`
  placeholders collected in `self.storages`."""

  def __init__(self, file, *, allow_tensors: bool = True):
    super().__init__(file)
    self.allow_tensors = allow_tensors
    self.storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str):
    if self.allow_tensors:
      if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
      if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return _rebuild_tensor
      if (module, name) == ("torch._utils", "_rebuild_parameter"):
        return _rebuild_parameter
      if module == "torch" and name in STORAGE_DTYPES:
        return _StorageType(name)
    raise _Refused(f"{shown(module)}.{shown(name)}")

  def persistent_load(self, pid):
    if not self.allow_tensors:
      raise pickle.UnpicklingError("a storage reference where none belongs")
    # Legacy: ("storage", type, key, location, numel, view); zip: the same without the view.
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"an unknown persistent id {shown(pid)}")
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"storage {shown(key)} has no storage type")
    if not isinstance(key, str) or not _index(numel):
      raise pickle.UnpicklingError(f"a malformed storage reference {shown(pid)}")
    known = self.storages.setdefault(key, _Storage(key, storage_type.dtype, 0, None))
    if known.dtype != storage_type.dtype:
      raise pickle.UnpicklingError(f"storage {shown(key)} is used with two element types")
    if view is None:
      return known
    # Old files can point a tensor at a slice of a storage: (view key, offset, view size).
    if not (isinstance(view, tuple) and len(view) == 3 and _index(view[1]) and _index(view[2])):
      raise pickle.UnpicklingError(f"a malformed storage view {shown(view)}")
    return _Storage(key, storage_type.dtype, view[1], view[2])


def _unpickle(buffer: bytes, start: int, *, allow_tensors: bool = True):
  """(object, unpickler, end) of the pickle at `buffer[start]`, walked by `file_bounds` before
  it is unpickled. Without `allow_tensors` it may hold plain values only (numbers, strings,
  lists, dicts)."""
  end = file_bounds.scan_pickle(buffer, start)
  unpickler = _Unpickler(io.BytesIO(buffer[start:end]), allow_tensors=allow_tensors)
  return unpickler.load(), unpickler, end


def _elements(tensor: _Tensor, available: int) -> int:
  """The number of elements of `tensor`, after checking that they lie within the `available`
  elements of its storage and that it reads each of them at most once over."""
  shape, stride = tensor.shape, tensor.stride
  count = math.prod(shape)
  if count == 0:
    return 0
  last = tensor.offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
  if last >= available:
    raise DataError(
      f"a tensor of shape {shape} reaches element {last:,} of storage "
      f"{shown(tensor.storage.key)}, which has {available:,}"
    )
  if count > available:
    raise DataError(
      f"a tensor of shape {shape} with strides {stride} has {count:,} elements over the "
      f"{available:,} of storage {shown(tensor.storage.key)}, which a state dict never holds"
    )
  return count


def _storage_array(storage: _Storage, data: dict[str, np.ndarray]) -> np.ndarray:
  if storage.key not in data:
    raise DataError(f"tensor data {shown(storage.key)} is missing")
  flat = data[storage.key]
  if storage.numel is None:
    return flat
  if storage.offset + storage.numel > flat.size:
    raise DataError(f"a view past the end of storage {shown(storage.key)}")
  return flat[storage.offset : storage.offset + storage.numel]


def _build(tensor: _Tensor, flat: np.ndarray) -> np.ndarray:
  shape, stride = tensor.shape, tensor.stride
  if 0 in shape:
    return np.zeros(shape, flat.dtype)
  if not shape:
    # as_strided takes an empty shape for "no shape given", so a scalar is sliced out instead.
    return flat[tensor.offset : tensor.offset + 1].reshape(()).copy()
  item = flat.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
    flat[tensor.offset :], shape=shape, strides=[s * item for s in stride], writeable=False
  )
  return np.ascontiguousarray(view)


def _build_all(tensors: dict[str, _Tensor], data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The arrays of `tensors`, every one checked before any is built. A tensor named twice (tied
  weights) is built once; all of them together may hold at most twice the storages' bytes (a
  tensor and views of it), so a small file cannot ask for many copies of a large storage."""
  plans: dict[tuple, tuple[_Tensor, np.ndarray]] = {}
  total = 0
  for tensor in tensors.values():
    flat = _storage_array(tensor.storage, data)
    storage = tensor.storage
    ident = (storage.key, storage.offset, storage.numel, tensor.offset, tensor.shape, tensor.stride)
    if ident not in plans:
      total += _elements(tensor, flat.size) * flat.dtype.itemsize
      plans[ident] = (tensor, flat)
  budget = 2 * sum(a.nbytes for a in data.values()) + (1 << 20)
  if total > budget:
    raise DataError(
      f"its tensors would take {total:,} bytes from {budget // 2:,} bytes of storages: views "
      "that repeat their storages, which a state dict never needs"
    )
  built = {ident: _build(tensor, flat) for ident, (tensor, flat) in plans.items()}
  out = {}
  for key, tensor in tensors.items():
    storage = tensor.storage
    out[key] = built[
      (storage.key, storage.offset, storage.numel, tensor.offset, tensor.shape, tensor.stride)
    ]
  return out


def _native(buffer: bytes, dtype: np.dtype, order: str, offset: int = 0, count: int = -1):
  array = np.frombuffer(buffer, dtype, count, offset)
  return array.byteswap() if order != sys.byteorder and dtype.itemsize > 1 else array


def _collect(obj, prefix: str, out: dict[str, _Tensor], seen: set[int], depth: int = 0) -> None:
  # State dicts are flat, but checkpoints often nest them ({"state_dict": ..., "epoch": 3}):
  # nested keys are joined with "." and values other than tensors and dicts are left out.
  where = prefix[:-1] or "the object"
  if isinstance(obj, dict):
    if id(obj) in seen:
      raise DataError(
        f"{shown(where)} is a dict met twice (it holds itself, or sits under two keys)"
      )
    if depth >= MAX_DEPTH:
      raise DataError(f"dicts nested more than {MAX_DEPTH} deep at {shown(where)}")
    seen.add(id(obj))
    for key, value in obj.items():
      if not isinstance(key, str):
        raise DataError(f"a key that is not a string: {shown(key)}")
      name = prefix + key
      if len(name) > MAX_KEY:
        raise DataError(f"a key of {len(name):,} characters (at most {MAX_KEY}): {shown(name)}")
      _collect(value, f"{name}.", out, seen, depth + 1)
  elif isinstance(obj, _Tensor):
    if where in out:
      raise DataError(f"two tensors under the key {shown(where)}")
    out[where] = obj
  elif not (obj is None or isinstance(obj, (bool, int, float, str))):
    raise DataError(f"{shown(where)} is a {type(obj).__name__}, not a tensor")


def _read_legacy(buffer: bytes) -> tuple[Any, dict[str, np.ndarray]]:
  try:
    magic, _, pos = _unpickle(buffer, 0, allow_tensors=False)
  except _Refused:
    raise
  except (DataError, *_MALFORMED) as exc:
    raise DataError(
      f"not a PyTorch weight file (neither a zip archive nor a pickle: {one_line(exc)})"
    ) from exc
  if magic != LEGACY_MAGIC:
    raise DataError("not a PyTorch weight file (a pickle without torch's magic number)")
  protocol, _, pos = _unpickle(buffer, pos, allow_tensors=False)
  if protocol != LEGACY_PROTOCOL:
    raise DataError(f"unsupported legacy protocol version {shown(protocol)}")
  sys_info, _, pos = _unpickle(buffer, pos, allow_tensors=False)
  order = (
    "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"
  )
  obj, unpickler, pos = _unpickle(buffer, pos)
  keys, _, pos = _unpickle(buffer, pos, allow_tensors=False)
  if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
    raise DataError("malformed list of storage keys")
  data: dict[str, np.ndarray] = {}
  for key in keys:
    # torch lists exactly the storages the pickle referenced; for any other one the element
    # size, and so where the next storage starts, would be unknown.
    if key not in unpickler.storages or key in data:
      raise DataError(f"storage {shown(key)} is listed but no tensor uses it, or listed twice")
    dtype = unpickler.storages[key].dtype
    if len(buffer) - pos < 8:
      raise DataError(f"truncated: storage {shown(key)} is missing")
    numel = int.from_bytes(buffer[pos : pos + 8], order)
    pos += 8
    nbytes, left = numel * dtype.itemsize, len(buffer) - pos
    if nbytes > left:
      raise DataError(f"truncated: storage {shown(key)} needs {nbytes:,} bytes, {left:,} are left")
    data[key] = _native(buffer, dtype, order, pos, numel)
    pos += nbytes
  return obj, data


def _read_zip(handle, size: int) -> tuple[Any, dict[str, np.ndarray]]:
  file_bounds.check_entry_count(handle, size)
  with zipfile.ZipFile(handle) as archive:
    file_bounds.check_zip(archive, handle, size)
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise DataError("a zip archive without exactly one <archive>/data.pkl (not a torch file)")
    prefix = pickles[0][: -len("data.pkl")]
    order = "little"
    if f"{prefix}byteorder" in archive.namelist():
      order = archive.read(f"{prefix}byteorder")[:16].decode("ascii", "replace").strip()
      if order not in ("little", "big"):
        raise DataError(f"unknown byte order {shown(order)}")
    obj, unpickler, _ = _unpickle(archive.read(pickles[0]), 0)
    data: dict[str, np.ndarray] = {}
    for key, storage in unpickler.storages.items():
      try:
        info = archive.getinfo(f"{prefix}data/{key}")
      except KeyError:
        raise DataError(f"tensor data {shown(key)} is missing from the archive") from None
      raw = archive.read(info)
      if len(raw) % storage.dtype.itemsize:
        raise DataError(
          f"tensor data {shown(key)} is not a whole number of {storage.dtype} elements"
        )
      data[key] = _native(raw, storage.dtype, order)
  return obj, data


# What a malformed pickle or archive raises on its way to a (refused or failed) load; the checks
# of `file_bounds` keep the allocations, decompressors and decryption that raise others away.
_MALFORMED = (
  pickle.UnpicklingError,
  EOFError,
  ValueError,
  TypeError,
  AttributeError,
  IndexError,
  KeyError,
  OverflowError,
  RecursionError,
  NotImplementedError,
  RuntimeError,
  zipfile.BadZipFile,
)


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of the PyTorch weight file `path` (legacy or zip layout), by state-dict key.

  Nested dicts are flattened with "." ("state_dict.fc.weight"); values that are neither tensors
  nor dicts (an epoch number, say) are left out. Tensors that are the same view of the same
  storage (tied weights) are one array.

  Raises:
    DataError (one printable line): the file is missing, not a torch file, truncated or
      inconsistent, larger in what it asks for than its bytes can back, or its pickle names
      anything beyond what a state dict needs (it could run code: it is not loaded).
  """
  path = Path(path)
  try:
    if not path.is_file():
      raise DataError("no such file")
    with open(path, "rb") as handle:
      size = os.fstat(handle.fileno()).st_size
      if zipfile.is_zipfile(handle):
        obj, data = _read_zip(handle, size)
      else:
        handle.seek(0)
        obj, data = _read_legacy(handle.read())
    if not isinstance(obj, dict):
      raise DataError(f"holds a {type(obj).__name__}, not a state dict")
    tensors: dict[str, _Tensor] = {}
    _collect(obj, "", tensors, set())
    return _build_all(tensors, data)
  except DataError as exc:
    raise DataError(printable(f"{path}: {exc}")) from exc.__cause__
  except _Refused as exc:
    raise DataError(
      printable(
        f"{path}: refused to load: its pickle names {exc}, which a state dict never needs (a "
        "weight file can run code this way)"
      )
    ) from None
  except (*_MALFORMED, OSError) as exc:
    raise DataError(
      printable(f"{path}: not a readable PyTorch weight file ({one_line(exc)})")
    ) from exc
