"""Checks that bound what reading an untrusted PyTorch weight file can cost, made before the file
is unpickled or unzipped (`torch_pickle` uses them).

Python's unpickler allocates what an opcode declares before reading it (a 20-byte pickle can ask
for a terabyte), keeps its memo in an array indexed by the file's numbers, and turns any run of
digits into an integer; zipfile inflates, decrypts and reads whatever the archive's directory
says, overlapping entries included. So a pickle is first walked opcode by opcode, building
nothing, and refused unless every length it declares lies within the bytes present, every
integer fits in 128 bits, every memo index stays small and the opcodes are few; and an archive
is refused unless every entry is stored uncompressed and unencrypted (as torch writes them) in
byte ranges of its own.
"""

from __future__ import annotations

import pickletools
import zipfile

from mscross.errors import DataError, shown

# A state dict costs about 36 opcodes per tensor (EfficientNet-Lite0: 10,696 for 296 tensors);
# no unpickled object is much larger than an opcode's worth of memory or file bytes, so this
# bounds what a pickle can build to some hundred MB.
MAX_OPCODES = 1 << 20
# torch writes three entries plus one per storage.
MAX_ZIP_ENTRIES = 1 << 15
# Integers: 16 bytes hold torch's 80-bit magic number; 40 digits, any such value as text.
_MAX_INT_BYTES = 16
_MAX_DECIMAL = 40

_OPCODES = {op.code.encode("latin-1")[0]: op for op in pickletools.opcodes}
# Opcodes whose argument is a length-prefixed run of bytes: the prefix's width and signedness.
_COUNTED = {
  pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
  pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
  pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
  pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}
_BIG_INTS = {"LONG1", "LONG4"}
_TEXT_INTS = {"INT", "LONG", "PUT", "GET"}
_MEMO_PUTS = {"BINPUT", "LONG_BINPUT", "PUT"}
# Out-of-band buffers and the extension registry: a state dict never uses them.
_REFUSED = {"NEXT_BUFFER", "READONLY_BUFFER", "EXT1", "EXT2", "EXT4"}


def scan_pickle(buffer: bytes, start: int = 0) -> int:
  """Walks the pickle that starts at `buffer[start]` without unpickling it; returns the offset
  just past its STOP.

  Raises:
    DataError: the pickle declares more bytes than `buffer` holds, an integer wider than 128
      bits, a memo index beyond MAX_OPCODES, more than MAX_OPCODES opcodes, an opcode no state
      dict uses, or an unknown one; or it ends before its STOP.
  """
  end, pos = len(buffer), start
  for _ in range(MAX_OPCODES):
    if pos >= end:
      raise DataError(f"a pickle that ends at byte {end:,} without its STOP opcode")
    op = _OPCODES.get(buffer[pos])
    if op is None:
      raise DataError(f"an unknown pickle opcode {buffer[pos]:#04x} at byte {pos:,}")
    if op.name in _REFUSED:
      raise DataError(f"a pickle opcode a state dict never uses ({op.name}) at byte {pos:,}")
    at, pos = pos, pos + 1
    if op.name == "STOP":
      return pos
    arg = op.arg
    if arg is None:
      continue
    if arg.n >= 0:
      value = int.from_bytes(buffer[pos : pos + arg.n], "little")
      pos += arg.n
      if op.name == "FRAME" and value > end - pos:
        raise DataError(f"a pickle frame of {value:,} bytes at byte {at:,}; {end - pos:,} are left")
      if op.name in _MEMO_PUTS and value >= MAX_OPCODES:
        raise DataError(f"a pickle memo index {value:,} at byte {at:,}")
    elif arg.n == pickletools.UP_TO_NEWLINE:
      # GLOBAL and INST name a module and a class: two lines.
      for _ in range(2 if arg.name == "stringnl_noescape_pair" else 1):
        newline = buffer.find(b"\n", pos)
        if newline < 0:
          raise DataError(f"a pickle line at byte {at:,} that never ends")
        if op.name in _TEXT_INTS and newline - pos > _MAX_DECIMAL:
          raise DataError(f"an integer of {newline - pos:,} digits at byte {at:,}")
        pos = newline + 1
    else:
      width, signed = _COUNTED[arg.n]
      length = int.from_bytes(buffer[pos : pos + width], "little", signed=signed)
      pos += width
      if length < 0 or length > end - pos:
        raise DataError(
          f"a pickle opcode at byte {at:,} declares {length:,} bytes; {max(end - pos, 0):,} "
          "are left"
        )
      if op.name in _BIG_INTS and length > _MAX_INT_BYTES:
        raise DataError(f"an integer of {length:,} bytes at byte {at:,}")
      pos += length
    if pos > end:
      raise DataError(f"a pickle cut short at byte {end:,}")
  raise DataError(f"a pickle of more than {MAX_OPCODES:,} opcodes, more than a state dict needs")


def _end_record(handle, size: int) -> tuple[int, int]:
  """(entries, where the central directory starts) as the archive's end record declares them,
  read before zipfile builds an object per entry."""
  handle.seek(max(size - (1 << 16) - 22, 0))
  tail = handle.read()
  at = tail.rfind(b"PK\x05\x06")
  if at < 0 or len(tail) - at < 22:
    raise DataError("a zip archive without its end record")
  count = int.from_bytes(tail[at + 10 : at + 12], "little")
  start = int.from_bytes(tail[at + 16 : at + 20], "little")
  if count == 0xFFFF or start == 0xFFFFFFFF:
    # Zip64: a locator just before the end record points at the zip64 end record.
    locator = tail[max(at - 20, 0) : at]
    if len(locator) < 20 or locator[:4] != b"PK\x06\x07":
      raise DataError("a zip64 archive without its end record locator")
    handle.seek(int.from_bytes(locator[8:16], "little"))
    record = handle.read(56)
    if len(record) < 56 or record[:4] != b"PK\x06\x06":
      raise DataError("a zip64 archive without its end record")
    count = int.from_bytes(record[32:40], "little")
    start = int.from_bytes(record[48:56], "little")
  return count, start


def check_entry_count(handle, size: int) -> None:
  """DataError when the archive declares more than MAX_ZIP_ENTRIES entries: checked before
  zipfile reads its directory, which costs some hundred bytes per entry."""
  count, _ = _end_record(handle, size)
  if count > MAX_ZIP_ENTRIES:
    raise DataError(f"a zip archive of {count:,} entries, more than a weight file needs")


def check_zip(archive: zipfile.ZipFile, handle, size: int) -> None:
  """DataError unless every entry of `archive` (read from the open binary `handle` of `size`
  bytes) is stored uncompressed and unencrypted, under a name of its own, in a byte range that
  no other entry touches: then reading every entry costs at most the file's size."""
  names = set()
  ranges = []
  for info in archive.infolist():
    if info.filename in names:
      raise DataError(f"a zip archive that holds {shown(info.filename)} twice")
    names.add(info.filename)
    if info.flag_bits & 0x1:
      raise DataError(f"zip entry {shown(info.filename)} is encrypted, which torch never writes")
    if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
      raise DataError(f"zip entry {shown(info.filename)} is compressed, which torch never writes")
    handle.seek(info.header_offset)
    header = handle.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
      raise DataError(f"zip entry {shown(info.filename)} has no local header")
    stop = (
      info.header_offset
      + 30
      + int.from_bytes(header[26:28], "little")
      + int.from_bytes(header[28:30], "little")
      + info.compress_size
    )
    ranges.append((info.header_offset, stop, info.filename))
  ranges.sort()
  limit = min(size, _end_record(handle, size)[1])
  for (_, stop, name), (start, _, other) in zip(ranges, ranges[1:], strict=False):
    if stop > start:
      raise DataError(f"zip entries {shown(name)} and {shown(other)} overlap")
  if ranges and ranges[-1][1] > limit:
    raise DataError(f"zip entry {shown(ranges[-1][2])} runs past the end of the entries")
