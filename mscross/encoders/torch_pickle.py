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
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from mscross.errors import DataError, one_line

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

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


def _int_tuple(value) -> bool:
  return isinstance(value, tuple) and all(_is_int(v) and v >= 0 for v in value)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
  # torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError("a tensor whose storage is not a storage")
  if not (_is_int(storage_offset) and storage_offset >= 0):
    raise pickle.UnpicklingError(f"a tensor with storage offset {storage_offset!r}")
  if not (_int_tuple(size) and _int_tuple(stride) and len(size) == len(stride)):
    raise pickle.UnpicklingError(f"a tensor with size {size!r} and stride {stride!r}")
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
    raise _Refused(f"{module}.{name}")

  def persistent_load(self, pid):
    if not self.allow_tensors:
      raise pickle.UnpicklingError("a storage reference where none belongs")
    # Legacy: ("storage", type, key, location, numel, view); zip: the same without the view.
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"an unknown persistent id {str(pid)[:80]!r}")
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"storage {key!r} has no storage type")
    if not isinstance(key, str) or not _is_int(numel) or numel < 0:
      raise pickle.UnpicklingError(f"a malformed storage reference {str(pid)[:80]!r}")
    known = self.storages.setdefault(key, _Storage(key, storage_type.dtype, 0, None))
    if known.dtype != storage_type.dtype:
      raise pickle.UnpicklingError(f"storage {key!r} is used with two element types")
    if view is None:
      return known
    # Old files can point a tensor at a slice of a storage: (view key, offset, view size).
    if (
      not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1]) and _is_int(view[2]))
      or min(view[1], view[2]) < 0
    ):
      raise pickle.UnpicklingError(f"a malformed storage view {str(view)[:80]!r}")
    return _Storage(key, storage_type.dtype, view[1], view[2])


def _plain(file) -> Any:
  """A pickle that may hold plain values only (numbers, strings, lists, dicts)."""
  return _Unpickler(file, allow_tensors=False).load()


def _build(tensor: _Tensor, data: dict[str, np.ndarray]) -> np.ndarray:
  storage = tensor.storage
  if storage.key not in data:
    raise DataError(f"tensor data {storage.key!r} is missing")
  flat = data[storage.key]
  if storage.numel is not None:
    if storage.offset + storage.numel > flat.size:
      raise DataError(f"a view past the end of storage {storage.key!r}")
    flat = flat[storage.offset : storage.offset + storage.numel]
  shape, stride = tensor.shape, tensor.stride
  if 0 in shape:
    return np.zeros(shape, flat.dtype)
  last = tensor.offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
  if last >= flat.size:
    raise DataError(
      f"a tensor of shape {shape} reaches element {last} of storage {storage.key!r}, which has "
      f"{flat.size}"
    )
  if not shape:
    # as_strided takes an empty shape for "no shape given", so a scalar is sliced out instead.
    return flat[tensor.offset : tensor.offset + 1].reshape(()).copy()
  item = flat.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
    flat[tensor.offset :], shape=shape, strides=[s * item for s in stride], writeable=False
  )
  return np.ascontiguousarray(view)


def _native(raw: bytes, dtype: np.dtype, order: str) -> np.ndarray:
  array = np.frombuffer(raw, dtype)
  return array.byteswap() if order != sys.byteorder and dtype.itemsize > 1 else array


def _collect(obj, prefix: str, out: dict[str, _Tensor]) -> None:
  # State dicts are flat, but checkpoints often nest them ({"state_dict": ..., "epoch": 3}):
  # nested keys are joined with "." and values other than tensors and dicts are left out.
  if isinstance(obj, dict):
    for key, value in obj.items():
      if not isinstance(key, str):
        raise DataError(f"a key that is not a string: {str(key)[:80]!r}")
      _collect(value, f"{prefix}{key}.", out)
  elif isinstance(obj, _Tensor):
    out[prefix[:-1]] = obj
  elif not (obj is None or isinstance(obj, (bool, int, float, str))):
    raise DataError(f"{prefix[:-1] or 'the object'} is a {type(obj).__name__}, not a tensor")


def _read_legacy(f, size: int) -> tuple[Any, dict[str, _Storage], dict[str, np.ndarray]]:
  try:
    magic = _plain(f)
  except _Refused:
    raise
  except Exception as exc:
    raise DataError("not a PyTorch weight file (neither a zip archive nor a pickle)") from exc
  if magic != LEGACY_MAGIC:
    raise DataError("not a PyTorch weight file (a pickle without torch's magic number)")
  protocol = _plain(f)
  if protocol != LEGACY_PROTOCOL:
    raise DataError(f"unsupported legacy protocol version {protocol!r}")
  sys_info = _plain(f)
  order = (
    "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"
  )
  unpickler = _Unpickler(f)
  obj = unpickler.load()
  keys = _plain(f)
  if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
    raise DataError("malformed list of storage keys")
  data: dict[str, np.ndarray] = {}
  for key in keys:
    # torch lists exactly the storages the pickle referenced; for any other one the element
    # size, and so where the next storage starts, would be unknown.
    if key not in unpickler.storages:
      raise DataError(f"storage {key!r} is listed but no tensor uses it")
    dtype = unpickler.storages[key].dtype
    header = f.read(8)
    if len(header) < 8:
      raise DataError(f"truncated: storage {key!r} is missing")
    numel = int.from_bytes(header, order)
    nbytes = numel * dtype.itemsize
    left = size - f.tell()
    if nbytes > left:
      raise DataError(f"truncated: storage {key!r} needs {nbytes:,} bytes, {left:,} are left")
    data[key] = _native(f.read(nbytes), dtype, order)
  return obj, unpickler.storages, data


def _read_zip(path: Path) -> tuple[Any, dict[str, _Storage], dict[str, np.ndarray]]:
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise DataError("a zip archive without exactly one <archive>/data.pkl (not a torch file)")
    prefix = pickles[0][: -len("data.pkl")]
    order = "little"
    if f"{prefix}byteorder" in archive.namelist():
      order = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
      if order not in ("little", "big"):
        raise DataError(f"unknown byte order {order[:20]!r}")
    unpickler = _Unpickler(io.BytesIO(archive.read(pickles[0])))
    obj = unpickler.load()
    data: dict[str, np.ndarray] = {}
    for key, storage in unpickler.storages.items():
      try:
        info = archive.getinfo(f"{prefix}data/{key}")
      except KeyError:
        raise DataError(f"tensor data {key!r} is missing from the archive") from None
      # torch stores tensor data uncompressed (so it can map it); refusing compressed entries
      # rules out a small file that inflates to an enormous one.
      if info.compress_type != zipfile.ZIP_STORED:
        raise DataError(f"tensor data {key!r} is compressed, which torch never writes")
      raw = archive.read(info)
      if len(raw) % storage.dtype.itemsize:
        raise DataError(f"tensor data {key!r} is not a whole number of {storage.dtype} elements")
      data[key] = _native(raw, storage.dtype, order)
  return obj, unpickler.storages, data


# What a malformed pickle or archive raises on its way to a (refused or failed) load.
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
  zipfile.BadZipFile,
)


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of the PyTorch weight file `path` (legacy or zip layout), by state-dict key.

  Nested dicts are flattened with "." ("state_dict.fc.weight"); values that are neither tensors
  nor dicts (an epoch number, say) are left out.

  Raises:
    DataError: the file is missing, not a torch file, truncated or inconsistent, or its pickle
      names anything beyond what a state dict needs (it could run code: it is not loaded).
  """
  path = Path(path)
  try:
    if not path.is_file():
      raise DataError("no such file")
    if zipfile.is_zipfile(path):
      obj, storages, data = _read_zip(path)
    else:
      with open(path, "rb") as f:
        obj, storages, data = _read_legacy(f, os.fstat(f.fileno()).st_size)
    if not isinstance(obj, dict):
      raise DataError(f"holds a {type(obj).__name__}, not a state dict")
    tensors: dict[str, _Tensor] = {}
    _collect(obj, "", tensors)
    return {key: _build(tensor, data) for key, tensor in tensors.items()}
  except DataError as exc:
    raise DataError(f"{path}: {exc}") from exc.__cause__
  except _Refused as exc:
    raise DataError(
      f"{path}: refused to load: its pickle names {exc}, which a state dict never needs (a "
      "weight file can run code this way)"
    ) from None
  except _MALFORMED as exc:
    raise DataError(f"{path}: not a readable PyTorch weight file ({one_line(exc)})") from exc
