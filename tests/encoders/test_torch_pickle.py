"""The PyTorch weight-file reader: hand-built files in both layouts (written opcode by opcode, as
torch writes them, so no torch is needed), files whose pickle tries to run code, broken files,
and the real EfficientNet-Lite0 weights."""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mscross.encoders import efficientnet, torch_pickle, weights
from mscross.errors import DataError

STORAGE_NAMES = {np.dtype(v): k for k, v in torch_pickle.STORAGE_DTYPES.items()}


def _global(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode()


def _str(text: str) -> bytes:
  raw = text.encode()
  return b"X" + struct.pack("<I", len(raw)) + raw


def _int(value: int) -> bytes:
  return b"J" + struct.pack("<i", value)


def _tuple(items) -> bytes:
  return b"(" + b"".join(items) + b"t"


def tensor_opcodes(key: str, dtype, numel: int, offset, shape, stride, legacy=True) -> bytes:
  """The pickle opcodes torch writes for one tensor on storage `key`."""
  storage = [_str("storage"), _global("torch", STORAGE_NAMES[np.dtype(dtype)]), _str(key)]
  storage += [_str("cpu"), _int(numel)] + ([b"N"] if legacy else [])
  hooks = _global("collections", "OrderedDict") + b")R"
  args = [_tuple(storage) + b"Q", _int(offset), _tuple(map(_int, shape)), _tuple(map(_int, stride))]
  return _global("torch._utils", "_rebuild_tensor_v2") + _tuple(args + [b"\x89", hooks]) + b"R"


def dict_opcodes(items: dict[str, bytes]) -> bytes:
  """An OrderedDict of already-pickled values, as a value (no protocol header or STOP)."""
  body = b"".join(_str(k) + v for k, v in items.items())
  return _global("collections", "OrderedDict") + b")R(" + body + b"u"


def legacy_file(path: Path, main_pickle: bytes, storages: dict[str, np.ndarray]) -> Path:
  """torch's legacy layout around a pickled object and the storages it references."""
  sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"long": 8}}
  parts = [pickle.dumps(torch_pickle.LEGACY_MAGIC, 2), pickle.dumps(1001, 2)]
  parts += [pickle.dumps(sys_info, 2), main_pickle, pickle.dumps(list(storages), 2)]
  for array in storages.values():
    parts.append(
      struct.pack("<q", array.size) + array.astype(array.dtype.newbyteorder("<")).tobytes()
    )
  path.write_bytes(b"".join(parts))
  return path


def zip_file(path: Path, main_pickle: bytes, storages: dict[str, np.ndarray]) -> Path:
  """torch's zip layout: archive/data.pkl and one uncompressed archive/data/<key> per storage."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    archive.writestr("archive/data.pkl", main_pickle)
    archive.writestr("archive/byteorder", "little")
    for key, array in storages.items():
      archive.writestr(f"archive/data/{key}", array.astype(array.dtype.newbyteorder("<")).tobytes())
  return path


def state_dict_pickle(legacy: bool = True) -> tuple[bytes, dict[str, np.ndarray], dict]:
  """(pickle, storages, expected arrays) of a small checkpoint exercising what a reader must get
  right: a strided (transposed) view, two tensors sharing a storage at different offsets, a
  scalar, a parameter, nesting, and a value that is not a tensor."""
  matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
  shared = np.arange(10, dtype=np.float16)
  steps = np.array([7], dtype=np.int64)
  storages = {"10": matrix.ravel(), "11": shared, "12": steps}
  transposed = tensor_opcodes("10", np.float32, 12, 0, (4, 3), (1, 4), legacy)
  parameter = _global("torch._utils", "_rebuild_parameter") + _tuple(
    [tensor_opcodes("10", np.float32, 12, 0, (3, 4), (4, 1), legacy), b"\x88", dict_opcodes({})]
  )
  inner = dict_opcodes(
    {
      "fc.weight": transposed,
      "head": tensor_opcodes("11", np.float16, 10, 0, (4,), (1,), legacy),
      "tail": tensor_opcodes("11", np.float16, 10, 6, (2, 2), (2, 1), legacy),
      "steps": tensor_opcodes("12", np.int64, 1, 0, (), (), legacy),
      "param": parameter + b"R",
    }
  )
  main = b"\x80\x02" + dict_opcodes({"state_dict": inner, "epoch": _int(3)}) + b"."
  expected = {
    "state_dict.fc.weight": matrix.T,
    "state_dict.head": shared[:4],
    "state_dict.tail": shared[6:].reshape(2, 2),
    "state_dict.steps": np.array(7, np.int64),
    "state_dict.param": matrix,
  }
  return main, storages, expected


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_reads_a_hand_built_file(tmp_path, layout):
  main, storages, expected = state_dict_pickle(legacy=layout == "legacy")
  write = legacy_file if layout == "legacy" else zip_file
  loaded = torch_pickle.load(write(tmp_path / "small.pth", main, storages))
  assert list(loaded) == list(expected)
  for key, array in expected.items():
    assert loaded[key].dtype == array.dtype, key
    assert loaded[key].shape == array.shape, key
    assert np.array_equal(loaded[key], array), key


class _Calls:
  """Pickles as a call of `function(*args)`: what a malicious weight file contains."""

  def __init__(self, function, *args):
    self.function, self.args = function, args

  def __reduce__(self):
    return self.function, self.args


@pytest.mark.parametrize("layout", ["legacy", "zip", "plain pickle"])
@pytest.mark.parametrize("function", ["system", "eval"])
def test_refuses_a_pickle_that_calls_a_function(tmp_path, layout, function):
  marker = tmp_path / "ran"
  if function == "system":
    payload = _Calls(os.system, f"touch {marker}")
  else:
    payload = _Calls(eval, f"open({str(marker)!r}, 'w')")
  main = pickle.dumps({"weight": payload}, protocol=2)
  path = tmp_path / "evil.pth"
  if layout == "legacy":
    legacy_file(path, main, {})
  elif layout == "zip":
    zip_file(path, main, {})
  else:
    path.write_bytes(main)
  with pytest.raises(DataError) as caught:
    torch_pickle.load(path)
  message = str(caught.value)
  assert str(path) in message and "refused" in message and function in message, message
  assert "\n" not in message
  assert not marker.exists()


def test_refuses_setting_the_state_of_a_tensor(tmp_path):
  # BUILD on a tensor could rewrite its offset or shape after they were checked.
  tensor = tensor_opcodes("0", np.float32, 4, 0, (4,), (1,))
  forged = tensor + b"}" + _str("offset") + _int(10**6) + b"sb"
  main = b"\x80\x02" + dict_opcodes({"w": forged}) + b"."
  path = legacy_file(tmp_path / "forged.pth", main, {"0": np.zeros(4, np.float32)})
  with pytest.raises(DataError, match="forged.pth"):
    torch_pickle.load(path)


@pytest.mark.parametrize(
  "case, match",
  [
    ("text", "not a PyTorch weight file"),
    ("missing", "no such file"),
    ("truncated", "truncated"),
    ("past the end", "reaches element"),
    ("not a dict", "not a state dict"),
  ],
)
def test_broken_files(tmp_path, case, match):
  path = tmp_path / "broken.pth"
  main, storages, _ = state_dict_pickle()
  if case == "text":
    path.write_text("these are not weights\n")
  elif case == "truncated":
    legacy_file(path, main, storages)
    path.write_bytes(path.read_bytes()[:-20])
  elif case == "past the end":
    too_far = tensor_opcodes("0", np.float32, 4, 2, (2, 2), (2, 1))
    legacy_file(
      path, b"\x80\x02" + dict_opcodes({"w": too_far}) + b".", {"0": np.zeros(4, np.float32)}
    )
  elif case == "not a dict":
    legacy_file(path, pickle.dumps([1, 2], protocol=2), {})
  with pytest.raises(DataError, match=match) as caught:
    torch_pickle.load(path)
  assert str(caught.value).startswith(str(path))


def test_reads_the_efficientnet_weights():
  path = weights.package_file(efficientnet.PACKAGE, efficientnet.WEIGHT_FILE, efficientnet.INSTALL)
  state = torch_pickle.load(path)
  assert len(state) == 296
  assert sum(a.size for a in state.values()) == 4_694_073
  assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
  assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
  assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
  assert state["_fc.weight"].shape == (1000, 1280)
  assert state["_fc.weight"].dtype == np.float32
  assert state["_bn0.num_batches_tracked"].shape == ()
  assert state["_bn0.num_batches_tracked"].dtype == np.int64
  assert all(np.isfinite(a).all() for a in state.values())
