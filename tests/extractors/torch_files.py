"""PyTorch weight files built by hand, without torch: the opcodes torch writes for a state dict,
its two layouts around them, a zip writer that sets every header field itself, and the crafted
files that try to make `mscross.extractors.torch_pickle` run out of memory or time (`CRAFTED`,
used by tests/extractors/test_torch_pickle.py and bench/crafted_weights.py).
"""

from __future__ import annotations

import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mscross.extractors import torch_pickle

STORAGE_NAMES = {np.dtype(v): k for k, v in torch_pickle.STORAGE_DTYPES.items()}


def global_(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode()


def str_(text: str) -> bytes:
  raw = text.encode()
  return b"X" + struct.pack("<I", len(raw)) + raw


def int_(value: int) -> bytes:
  return b"J" + struct.pack("<i", value)


def tuple_(items) -> bytes:
  return b"(" + b"".join(items) + b"t"


def tensor_opcodes(
  key: str, dtype, numel: int, offset, shape, stride, legacy=True, *, ints=int_
) -> bytes:
  """The pickle opcodes torch writes for one tensor on storage `key`; `ints` writes its offset
  and the entries of its shape and stride."""
  storage = [str_("storage"), global_("torch", STORAGE_NAMES[np.dtype(dtype)]), str_(key)]
  storage += [str_("cpu"), int_(numel)] + ([b"N"] if legacy else [])
  hooks = global_("collections", "OrderedDict") + b")R"
  args = [tuple_(storage) + b"Q", ints(offset), tuple_(map(ints, shape)), tuple_(map(ints, stride))]
  return global_("torch._utils", "_rebuild_tensor_v2") + tuple_(args + [b"\x89", hooks]) + b"R"


def dict_opcodes(items: dict[str, bytes]) -> bytes:
  """An OrderedDict of already-pickled values, as a value (no protocol header or STOP)."""
  body = b"".join(str_(k) + v for k, v in items.items())
  return global_("collections", "OrderedDict") + b")R(" + body + b"u"


def state_pickle(items: dict[str, bytes]) -> bytes:
  """A whole protocol-2 pickle of an OrderedDict of already-pickled values."""
  return b"\x80\x02" + dict_opcodes(items) + b"."


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


class Entry:
  """One entry of `raw_zip`: its name, the bytes written after its local header, and the header
  fields to declare: `stored` bytes (default: those written), `size` once decompressed."""

  def __init__(self, name, data=b"", *, method=0, flags=0, stored=None, size=None, crc=None):
    self.name, self.data, self.method, self.flags = name.encode(), data, method, flags
    self.stored = len(data) if stored is None else stored
    self.size = self.stored if size is None else size
    self.crc = zlib.crc32(data) if crc is None else crc


def _fields(e: Entry) -> bytes:
  return struct.pack(
    "<HHHHHIIIH", 20, e.flags, e.method, 0, 0, e.crc, e.stored, e.size, len(e.name)
  )


def _local_header(e: Entry) -> bytes:
  return b"PK\x03\x04" + _fields(e) + struct.pack("<H", 0) + e.name


def raw_zip(path: Path, entries: list[Entry]) -> Path:
  """A zip archive written field by field, so that any field can lie."""
  out, central = bytearray(), bytearray()
  for e in entries:
    central += b"PK\x01\x02" + struct.pack("<H", 20) + _fields(e)
    central += struct.pack("<HHHHII", 0, 0, 0, 0, 0, len(out)) + e.name
    out += _local_header(e) + e.data
  end = struct.pack("<HHHHIIH", 0, 0, len(entries), len(entries), len(central), len(out), 0)
  path.write_bytes(bytes(out + central + b"PK\x05\x06" + end))
  return path


def _one_tensor_zip(path: Path, pickle_entry: Entry, *, byteorder: Entry | None = None) -> Path:
  return raw_zip(path, [pickle_entry, byteorder or Entry("archive/byteorder", b"little")])


def _small_state() -> tuple[bytes, dict[str, np.ndarray]]:
  weight = tensor_opcodes("0", np.float32, 4, 0, (4,), (1,), legacy=False)
  return state_pickle({"w": weight}), {"0": np.arange(4, dtype=np.float32)}


# The declared-size bomb: BINBYTES8 of 2**40 bytes, 20 bytes in all.
BYTES8_BOMB = b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"\x00" * 8 + b"."


def _bytes8_legacy(folder: Path) -> Path:
  return legacy_file(folder / "bytes8.pth", BYTES8_BOMB, {})


def _bytes8_zip(folder: Path) -> Path:
  return _one_tensor_zip(folder / "bytes8.pt", Entry("archive/data.pkl", BYTES8_BOMB))


def _encrypted(member: str) -> Callable[[Path], Path]:
  def build(folder: Path) -> Path:
    main, _ = _small_state()
    pkl = Entry("archive/data.pkl", main, flags=0x1 if member == "data.pkl" else 0)
    order = Entry("archive/byteorder", b"little", flags=0x1 if member == "byteorder" else 0)
    return _one_tensor_zip(folder / "encrypted.pt", pkl, byteorder=order)

  return build


def _method_9(folder: Path) -> Path:
  main, _ = _small_state()
  return _one_tensor_zip(folder / "deflate64.pt", Entry("archive/data.pkl", main, method=9))


def _corrupt(method: int) -> Callable[[Path], Path]:
  def build(folder: Path) -> Path:
    path = folder / f"corrupt{method}.pt"
    main, _ = _small_state()
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("archive/data.pkl", main * 8, compress_type=method)
      archive.writestr("archive/byteorder", "little")
    blob = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", blob[26:30])
    middle = 30 + name_len + extra_len + zipfile.ZipFile(path).infolist()[0].compress_size // 2
    blob[middle : middle + 8] = b"\xff" * 8
    path.write_bytes(bytes(blob))
    return path

  return build


def _zip_bomb(gib: float) -> Callable[[Path], Path]:
  """data.pkl deflated from `gib` GiB of zeros: one compressed MiB repeated (byte-aligned
  deflate blocks that refer only to themselves), so building it takes no time. (The CRC is left
  zero: zipfile checks it only once the entry has been inflated.)"""

  def build(folder: Path) -> Path:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(b"\x00" * (1 << 20)) + c.flush(zlib.Z_SYNC_FLUSH)
    count = int(gib * 1024)
    stream = block * count + b"\x03\x00"  # a final, empty fixed-Huffman block
    pkl = Entry("archive/data.pkl", stream, method=zipfile.ZIP_DEFLATED, size=count << 20, crc=0)
    return _one_tensor_zip(folder / f"bomb{gib:g}.pt", pkl)

  return build


def _huge_view(folder: Path) -> Path:
  view = tensor_opcodes("0", np.float32, 1, 0, (20000, 20000), (0, 0))
  return legacy_file(folder / "view.pth", state_pickle({"w": view}), {"0": np.ones(1, np.float32)})


def _self_containing(folder: Path) -> Path:
  # EMPTY_DICT, BINPUT 0, a 1 MiB key, BINGET 0, SETITEM: {key: itself}.
  main = b"\x80\x02}q\x00" + str_("k" * (1 << 20)) + b"h\x00s."
  return legacy_file(folder / "cycle.pth", main, {})


def _memoised_big_int(folder: Path, references: int = 15) -> Path:
  # LONG4 of 1 MiB, memoised as 1 and popped; the offset, shape and stride all refer to it.
  big = b"\x8b" + struct.pack("<i", 1 << 20) + b"\x01" * (1 << 20) + b"q\x010"
  dims = (0,) * ((references - 1) // 2)
  view = tensor_opcodes("0", np.float32, 4, 0, dims, dims, ints=lambda _: b"h\x01")
  main = b"\x80\x02" + big + dict_opcodes({"w": view}) + b"."
  return legacy_file(folder / "bigint.pth", main, {"0": np.ones(4, np.float32)})


ESCAPES = "\n\x1b[2J\x1b[31mowned"


def _escaping_global(folder: Path) -> Path:
  # STACK_GLOBAL takes its names from strings, which may hold anything.
  module, name = b"os" + ESCAPES.encode(), b"system" + ESCAPES.encode()
  main = b"\x80\x04\x8c" + bytes([len(module)]) + module + b"\x8c" + bytes([len(name)]) + name
  return legacy_file(folder / "global.pth", main + b"\x93.", {})


def _escaping_key(folder: Path) -> Path:
  main = b"\x80\x02}" + str_("layer" + ESCAPES) + b"]s."  # {key: []}
  return legacy_file(folder / "key.pth", main, {})


def _colliding_keys(folder: Path) -> Path:
  t0 = tensor_opcodes("0", np.float32, 2, 0, (1,), (1,))
  t1 = tensor_opcodes("0", np.float32, 2, 1, (1,), (1,))
  main = state_pickle({"a.b": t0, "a": dict_opcodes({"b": t1})})
  return legacy_file(folder / "collide.pth", main, {"0": np.arange(2, dtype=np.float32)})


def _overlapping(folder: Path, entries: int = 300, payload: int = 16 << 20) -> Path:
  """Stored entries whose data nest: each declares as its data the local headers after it and
  the payload, so the file holds the payload once and reading every entry reads it `entries`
  times. Every header is true otherwise, CRCs included."""
  names = [f"archive/data/{i:03d}" for i in range(entries)]
  keys = [name.rsplit("/", 1)[1] for name in names]
  main = state_pickle(
    {key: tensor_opcodes(key, np.uint8, 1, 0, (1,), (1,), legacy=False) for key in keys}
  )
  # From the last entry back: each one's data is the next one's local header and data.
  data, crc, chain = b"\x00" * payload, zlib.crc32(b"\x00" * payload), []
  tail = [memoryview(data)]
  for name in reversed(names):
    entry = Entry(name, stored=sum(map(len, tail)), crc=crc)
    chain.append(entry)
    local = _local_header(entry)
    tail.insert(0, local)
    crc = 0
    for part in tail:
      crc = zlib.crc32(part, crc)
  chain.reverse()
  chain[-1].data = data
  head = [Entry("archive/data.pkl", main), Entry("archive/byteorder", b"little")]
  return raw_zip(folder / "overlapping.pt", head + chain)


# Each row of the threat table: (what it tries, how the file is built). Every one must end in
# one printable DataError line, in bounded time and memory.
CRAFTED: dict[str, Callable[[Path], Path]] = {
  "BINBYTES8 of 2^40 bytes in a 20-byte pickle (legacy)": _bytes8_legacy,
  "BINBYTES8 of 2^40 bytes in a 20-byte pickle (zip data.pkl)": _bytes8_zip,
  "data.pkl stored encrypted": _encrypted("data.pkl"),
  "byteorder stored encrypted": _encrypted("byteorder"),
  "data.pkl with compression method 9": _method_9,
  "corrupt deflate stream in data.pkl": _corrupt(zipfile.ZIP_DEFLATED),
  "corrupt bzip2 stream in data.pkl": _corrupt(zipfile.ZIP_BZIP2),
  "corrupt lzma stream in data.pkl": _corrupt(zipfile.ZIP_LZMA),
  "data.pkl deflated from 1 GiB into 1 MB": _zip_bomb(1),
  "data.pkl deflated from 3.75 GiB into 3.8 MB": _zip_bomb(3.75),
  "300 overlapping stored entries over 16 MiB": _overlapping,
  "a (20000, 20000) view with strides (0, 0) of a 1-element storage": _huge_view,
  "a dict that contains itself under a 1 MiB key": _self_containing,
  "sizes and strides: 15 references to a memoised 1 MiB integer": _memoised_big_int,
  "a refused global name with newlines and ANSI escapes": _escaping_global,
  "a dict key with newlines and ANSI escapes": _escaping_key,
  '{"a.b": t0, "a": {"b": t1}}': _colliding_keys,
}
