"""The prepared-data cache: where a dataset is prepared, how concurrent preparations are kept
apart, and how a prepared split is read back into a `Split`.

Layout: <cache root>/<builder>/<fingerprint>/ holds one TFDS data directory per source state;
<cache root>/<builder>/<fingerprint>.lock exists while a process prepares it. Reading needs no
source files and no builder code: the prepared folder describes itself (features.json,
metadata.json), so a warm load never touches the source.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from mscross import caches
from mscross.data import base, raw
from mscross.data.splits import Split

try:
  import fcntl
except ImportError:  # not POSIX (Windows): no lock; the lost-rename fallback in `prepare` remains
  fcntl = None


def _fingerprint(
  builder_cls: type[base.PairedBuilder],
  config_name: str | None,
  source_dir: Path | None,
  files: Sequence[Path],
  options: raw.Options,
) -> str:
  """A short hash identifying the source as it is now (location, file names, sizes, mtimes)."""
  stats = []
  for path in files:
    info = path.stat()
    stats.append([os.fspath(path), info.st_size, info.st_mtime_ns])
  key = {
    "builder": builder_cls.name,
    "config": config_name,
    "modalities": builder_cls.modalities_for(config_name),
    "version": str(builder_cls.VERSION),
    "source": os.fspath(source_dir) if source_dir is not None else None,
    "files": stats,
    "extra": builder_cls.source_fingerprint_extra(),
    "options": builder_cls.options_key(options),
  }
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _is_prepared(data_path: Path) -> bool:
  # TFDS renames a finished preparation into place, so these files never appear half-written.
  return (data_path / "dataset_info.json").is_file() and (data_path / "features.json").is_file()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
  """Holds an exclusive OS lock on `lock_path` for the block; the OS releases it if we die.

  The file is deleted on release, while still locked, so the cache keeps no lock files. A
  waiter may thus end up holding a deleted file; it then checks that the path still names the
  file it locked and otherwise locks the new one, so only one holder is ever in the block.
  """
  fd = None
  while fcntl is not None:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
      # Some network file systems refuse flock: go on unlocked, as without fcntl.
      os.close(fd)
      fd = None
      break
    try:
      current = os.stat(lock_path)
    except FileNotFoundError:
      current = None
    held = os.fstat(fd)
    if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
      break
    os.close(fd)
  try:
    yield
  finally:
    if fd is not None:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path)
      os.close(fd)


def _data_path(root: Path, builder_cls: type[base.PairedBuilder], config_name: str | None) -> Path:
  """Where TFDS puts a builder's prepared data under `root` (<name>[/<config>]/<version>)."""
  parts = [builder_cls.name] + ([config_name] if config_name else []) + [str(builder_cls.VERSION)]
  return root.joinpath(*parts)


def prepare(
  builder_cls: type[base.PairedBuilder],
  config_name: str | None,
  source_dir: Path | None,
  options: raw.Options | None = None,
) -> Path:
  """Returns the folder of the prepared data of this source, preparing it first if it is new.

  The TFDS data directory is keyed by a fingerprint of the source, so a different folder or an
  edited file gets its own freshly prepared copy and a stale cache is never served. Processes
  preparing the same source at once take turns on a lock file: the first prepares, the others
  wait and then read its result. `options` (the extractors of raw items) are part of the key.
  """
  options = options or raw.Options()
  # A config mistake is named before the source is looked for: it holds whatever the folder.
  builder_cls.extracted_modalities(options)
  files = builder_cls.source_files(source_dir, config_name)
  fingerprint = _fingerprint(builder_cls, config_name, source_dir, files, options)
  root = caches.prepared() / builder_cls.name / fingerprint
  data_path = _data_path(root, builder_cls, config_name)
  # Checked before locking too: warm loads, the common case, then never wait on a preparation.
  if _is_prepared(data_path):
    return data_path
  root.parent.mkdir(parents=True, exist_ok=True)
  with _exclusive(root.parent / f"{fingerprint}.lock"):
    if _is_prepared(data_path):
      return data_path

    def make_builder() -> base.PairedBuilder:
      return builder_cls(
        source_dir=source_dir,
        options=options,
        data_dir=root,
        config=config_name,
        file_format="array_record",
      )

    builder = make_builder()
    download_config = tfds.download.DownloadConfig(
      manual_dir=os.fspath(source_dir) if source_dir is not None else None
    )
    try:
      builder.download_and_prepare(download_config=download_config)
    except OSError:
      # Without a working lock, another process preparing the same source can win the final
      # rename; its result is identical, so read that instead of failing.
      if not _is_prepared(data_path):
        raise
    if Path(os.fspath(builder.data_path)) != data_path:
      raise RuntimeError(f"TFDS prepared into {builder.data_path}, expected {data_path}")
  return data_path


def _decode_direct(records: Sequence[bytes], widths: dict[str, int]) -> dict[str, Any]:
  """Decodes serialized examples straight from their tf.train.Example protos."""
  features = [tf_example_pb2.Example.FromString(record).features.feature for record in records]
  decoded: dict[str, Any] = {
    key: np.asarray([f[key].float_list.value for f in features], dtype=np.float32).reshape(
      len(features), width
    )
    for key, width in widths.items()
  }
  decoded["id"] = [f["id"].bytes_list.value[0].decode("utf-8") for f in features]
  return decoded


def _decode_with_tfds(
  builder: tfds.core.DatasetBuilder, records: Sequence[bytes], keys: Sequence[str]
) -> dict[str, Any]:
  """Decodes serialized examples with TFDS's own (slower, per-example) numpy decoder."""
  examples = [builder.info.features.deserialize_example_np(record) for record in records]
  decoded: dict[str, Any] = {
    key: np.stack([e[key] for e in examples]).astype(np.float32, copy=False) for key in keys
  }
  decoded["id"] = [
    e["id"].decode("utf-8") if isinstance(e["id"], bytes) else e["id"] for e in examples
  ]
  return decoded


def _same_decoding(first: dict[str, Any], second: dict[str, Any], keys: Sequence[str]) -> bool:
  return first["id"] == second["id"] and all(
    first[key].shape == second[key].shape and np.array_equal(first[key], second[key])
    for key in keys
  )


def read(data_path: Path, split: str) -> Split:
  """Reads one split of the data prepared in `data_path` (from `prepare`) into numpy arrays."""
  builder = tfds.builder_from_directory(os.fspath(data_path))
  metadata = builder.info.metadata
  modalities = list(metadata["modalities"])
  labelled = bool(metadata["labelled"])
  keys = modalities + (["label"] if labelled else [])
  widths = {key: int(builder.info.features[key].shape[0]) for key in keys}
  source = builder.as_data_source(
    split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
  )
  # One batched read: ArrayRecord then fetches the records in parallel.
  records = source.__getitems__(range(len(source)))
  # TFDS's decoder spends ~0.2 ms of Python per example, most of a warm load; parsing the
  # protos directly is several times faster. It relies on how TFDS encodes these features, so
  # it is checked against TFDS's decoder on the first example, and TFDS's is used on mismatch.
  try:
    decoded = _decode_direct(records, widths)
    trusted = _same_decoding(
      _decode_with_tfds(builder, records[:1], keys),
      {k: v[:1] for k, v in decoded.items()},
      keys,
    )
  except (KeyError, IndexError, ValueError, UnicodeDecodeError):
    trusted = False
  if not trusted:
    decoded = _decode_with_tfds(builder, records, keys)
  return Split(
    features={name: decoded[name] for name in modalities},
    label=decoded["label"] if labelled else None,
    ids=np.asarray(decoded["id"], dtype=str),
    class_names=tuple(metadata["class_names"]),
  )


def read_problems(data_path: Path) -> list[raw.Problem]:
  """The problems with raw items met when the data in `data_path` was prepared."""
  builder = tfds.builder_from_directory(os.fspath(data_path))
  rows = builder.info.metadata.get("problems", [])
  return [raw.Problem(*row) for row in rows]
