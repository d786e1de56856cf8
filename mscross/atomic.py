"""Files written whole or not at all: a crash mid-write never leaves a truncated config.json,
metrics.json or cache entry behind, because the content goes to a temporary file beside the
target first and `os.replace` then swaps it in (atomic on POSIX within one filesystem)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator


@contextlib.contextmanager
def replacing(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
  """`with replacing(path) as tmp:` write to `tmp`; on success it becomes `path`. `suffix` ends
  the temporary name (writers such as `np.savez` append an extension otherwise)."""
  path = os.fspath(path)
  tmp = f"{path}.{os.getpid()}.tmp{suffix}"
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
  with replacing(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  with replacing(path) as tmp, open(tmp, "wb") as f:
    f.write(data)


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 2) -> None:
  write_text(path, json.dumps(obj, indent=indent, sort_keys=True))


def write_lines(path: str | os.PathLike, lines: list[str]) -> None:
  with replacing(path) as tmp, open(tmp, "w") as f:
    f.writelines(lines)
