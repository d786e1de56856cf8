"""The PyTorch weight-file reader: checkpoints written by torch itself (stored fixtures) and by
hand in both layouts (opcode by opcode, as torch writes them, so no torch is needed), files
whose pickle tries to run code, files crafted to exhaust memory or time, broken files, and the
real EfficientNet-Lite0 weights."""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from torch_files import (
  CRAFTED,
  ESCAPES,
  Entry,
  dict_opcodes,
  global_,
  int_,
  legacy_file,
  raw_zip,
  state_pickle,
  str_,
  tensor_opcodes,
  tuple_,
  zip_file,
)

from mscross.errors import DataError
from mscross.extractors import efficientnet, file_bounds, torch_pickle, weights

TORCH_FILES = Path(__file__).resolve().parent / "fixtures" / "torch_files"


def state_dict_pickle(legacy: bool = True) -> tuple[bytes, dict[str, np.ndarray], dict]:
  """(pickle, storages, expected arrays) of a small checkpoint exercising what a reader must get
  right: a strided (transposed) view, two tensors sharing a storage at different offsets, a
  scalar, a parameter, nesting, and a value that is not a tensor."""
  matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
  shared = np.arange(10, dtype=np.float16)
  steps = np.array([7], dtype=np.int64)
  storages = {"10": matrix.ravel(), "11": shared, "12": steps}
  transposed = tensor_opcodes("10", np.float32, 12, 0, (4, 3), (1, 4), legacy)
  parameter = global_("torch._utils", "_rebuild_parameter") + tuple_(
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
  main = b"\x80\x02" + dict_opcodes({"state_dict": inner, "epoch": int_(3)}) + b"."
  expected = {
    "state_dict.fc.weight": matrix.T,
    "state_dict.head": shared[:4],
    "state_dict.tail": shared[6:].reshape(2, 2),
    "state_dict.steps": np.array(7, np.int64),
    "state_dict.param": matrix,
  }
  return main, storages, expected


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_reads_what_torch_writes_as_torch_reads_it(layout):
  """The checkpoints of reference_torch_files.py, written by torch, against what
  torch.load(weights_only=True) read back from them."""
  with np.load(TORCH_FILES / "expected.npz", allow_pickle=False) as f:
    expected = {key: f[key] for key in f.files}
  dtypes = json.loads(str(expected.pop("__dtypes__")))
  assert str(expected.pop("__torch__")).startswith("2.13")
  loaded = torch_pickle.load(TORCH_FILES / f"{layout}.pt")
  assert sorted(loaded) == sorted(expected)
  for key, values in expected.items():
    assert loaded[key].dtype == np.dtype(dtypes[key]), key
    assert loaded[key].shape == values.shape, key
    np.testing.assert_array_equal(loaded[key].astype(np.float64), values, err_msg=key)
  # A tied weight is one array; the views of one storage are not.
  assert loaded["model.embed.weight"] is loaded["model.head.weight"]
  assert not np.shares_memory(loaded["model.first"], loaded["model.second"])


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
  forged = tensor + b"}" + str_("offset") + int_(10**6) + b"sb"
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


def _load_within(path: Path, megabytes: float = 200) -> str:
  """The one-line DataError of loading `path`, checked to stay under `megabytes` of Python and
  numpy allocations at its peak (tracemalloc sees both)."""
  tracemalloc.start()
  try:
    with pytest.raises(DataError) as caught:
      torch_pickle.load(path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  message = str(caught.value)
  assert peak < megabytes * 2**20, f"{peak / 2**20:.0f} MB at the peak"
  assert message.startswith(str(path)) and len(message.splitlines()) == 1, message
  assert message.isprintable() and "\x1b" not in message and len(message) <= 400, message
  return message


@pytest.mark.parametrize("name", list(CRAFTED))
def test_a_crafted_file_is_one_printable_error_in_bounded_memory(tmp_path, name):
  # bench/crafted_weights.py measures the same files' time and resident memory.
  message = _load_within(CRAFTED[name](tmp_path))
  if "ANSI" in name:
    assert repr(ESCAPES)[1:-1] in message  # named, escaped


def _legacy(tmp_path, main: bytes, storages=None) -> Path:
  return legacy_file(tmp_path / "crafted.pth", main, storages or {})


@pytest.mark.parametrize(
  ("main", "match"),
  [
    (b"\x80\x02}q\x00" + str_("k") + b"h\x00s.", "a dict met twice"),  # {k: itself}
    # {"a": d, "b": d}: one dict under two keys.
    (b"\x80\x02}(" + str_("a") + b"}q\x01" + str_("b") + b"h\x01u.", "a dict met twice"),
    (b"\x80\x02" + (b"}" + str_("k")) * 39 + b"}" + b"s" * 39 + b".", "nested more than 32"),
    (b"\x80\x02" + b"(" * (1 << 20) + b".", "more than 1,048,576 opcodes"),
    (b"\x80\x02}r\xff\xff\xff\xff.", "memo index 4,294,967,295"),
    (b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"}.", "frame of 1,099,511,627,776"),
    (b"I" + b"9" * 50 + b"\n.", "an integer of 50 digits"),
    (b"\x80\x02\x8a\x11" + b"\x01" * 17 + b".", "an integer of 17 bytes"),
    (b"\x80\x05\x97.", "never uses \\(NEXT_BUFFER\\)"),
    (b"\x80\x02}", "without its STOP"),
  ],
  ids=[
    "cycle",
    "shared dict",
    "depth",
    "opcodes",
    "memo index",
    "frame",
    "text int",
    "long1",
    "buffer",
    "no stop",
  ],
)
def test_pickles_that_ask_for_too_much(tmp_path, main, match):
  message = _load_within(_legacy(tmp_path, main))
  assert re.search(match, message), message


def test_views_that_repeat_a_storage_are_refused_past_twice_its_bytes(tmp_path):
  storage = {"0": np.zeros(1 << 18, np.float32)}  # 1 MiB
  whole = tensor_opcodes("0", np.float32, 1 << 18, 0, (1 << 18,), (1,))

  def views(count):
    # Each view starts one element further: distinct tensors, each within the storage.
    items = {
      f"v{i}": tensor_opcodes("0", np.float32, 1 << 18, i, ((1 << 18) - i,), (1,))
      for i in range(count)
    }
    return _legacy(tmp_path, state_pickle({"w": whole, **items}), storage)

  assert len(torch_pickle.load(views(1))) == 2  # a tensor and a view of it: fine
  assert "views that repeat their storages" in _load_within(views(8))


@pytest.mark.parametrize("case", ["duplicate name", "too many entries", "runs past the end"])
def test_archives_that_lie_about_their_entries(tmp_path, case):
  main, storages = (
    state_pickle({"w": tensor_opcodes("0", np.float32, 4, 0, (4,), (1,), False)}),
    {"0": np.zeros(4, np.float32)},
  )
  entries = [Entry("archive/data.pkl", main), Entry("archive/data/0", storages["0"].tobytes())]
  if case == "duplicate name":
    entries.append(Entry("archive/data/0", storages["0"].tobytes()))
    match = "holds 'archive/data/0' twice"
  elif case == "runs past the end":
    entries[1] = Entry("archive/data/0", storages["0"].tobytes(), stored=1 << 20)
    match = "runs past the end|overlap"
  path = raw_zip(tmp_path / "lying.pt", entries)
  if case == "too many entries":
    blob = bytearray(path.read_bytes())
    end = blob.rfind(b"PK\x05\x06")
    blob[end + 8 : end + 12] = struct.pack("<HH", 0xFFFE, 0xFFFE)
    path.write_bytes(bytes(blob))
    match = "65,534 entries"
  message = _load_within(path)
  assert re.search(match, message), message


def test_the_scan_accepts_every_pickle_python_writes():
  # Protocols 0-5 of a state-dict-like value: the walk must not refuse what is merely unusual.
  value = {"a": [1, 2.5, None, True, "x" * 300], "b": (b"\x00" * 300, -(2**70), 2**100)}
  for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
    data = pickle.dumps(value, protocol)
    assert file_bounds.scan_pickle(data + b"rest") == len(data), protocol
