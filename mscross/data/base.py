"""Shared machinery of the dataset builders: the `Split` record, the TFDS builder base class,
seeded splitting, and the source-specific cache that `load_split` reads from.

TFDS runs here without TensorFlow, which constrains a few choices: records are written as
ArrayRecord (the default TFRecord writer needs TensorFlow), `_info` builds its `DatasetInfo`
directly instead of from metadata files beside the module, and reading goes through
`as_data_source` (random access returning numpy) because `as_dataset` needs TensorFlow.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from mscross.data import checks
from mscross.errors import DataError

SPLITS = ("train", "validation", "test")

# Splits are a property of the dataset, not of a training run, so their seed is fixed here
# rather than taken from the training seed: every run and every model sees the same test set.
SPLIT_SEED = 0

CACHE_ENV = "MSCROSS_CACHE_DIR"
DATA_ENV = "MSCROSS_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a paired dataset, held in memory.

  Attributes:
    image: float32 [N, d_img] features of the first ("image") modality.
    text: float32 [N, d_txt] features of the second ("text") modality.
    label: float32 [N, C] multi-hot labels (one-hot for single-label data).
    ids: str [N], a human-readable id per pair.
    class_names: the C class names, in label-column order.
  """

  image: np.ndarray
  text: np.ndarray
  label: np.ndarray
  ids: np.ndarray
  class_names: tuple[str, ...]


def subset(split: Split, indices: np.ndarray) -> Split:
  """The examples of `split` at `indices`, in that order."""
  return Split(
    image=split.image[indices],
    text=split.text[indices],
    label=split.label[indices],
    ids=split.ids[indices],
    class_names=split.class_names,
  )


def holdout(
  indices: np.ndarray, fraction: float, strata: np.ndarray | None, where: str
) -> tuple[np.ndarray, np.ndarray]:
  """Splits `indices` into (kept, held out), holding out `fraction` of them with SPLIT_SEED.

  With `strata` (one class per index) the split keeps class proportions. Both parts come back
  sorted so that examples stay in source order, which keeps ids easy to trace back.
  """
  # Imported here: scikit-learn takes seconds to import and only a cold prepare needs it.
  from sklearn.model_selection import train_test_split

  try:
    kept, held = train_test_split(
      indices, test_size=fraction, random_state=SPLIT_SEED, stratify=strata
    )
  except ValueError as exc:
    kind = "a class-stratified" if strata is not None else "a"
    raise DataError(
      f"{where}: cannot hold out {kind} {fraction:.0%} of {len(indices)} examples "
      f"({checks.one_line(exc)})"
    ) from exc
  return np.sort(kept), np.sort(held)


def split_60_20_20(classes: np.ndarray, where: str) -> dict[str, np.ndarray]:
  """Class-stratified, seeded 60% train / 20% validation / 20% test indices."""
  train, rest = holdout(np.arange(len(classes)), 0.4, classes, where)
  validation, test = holdout(rest, 0.5, classes[rest], where)
  return {"train": train, "validation": validation, "test": test}


def class_name_range(num_classes: int) -> tuple[str, ...]:
  """Class names "0".."C-1" for data whose classes carry no names."""
  return tuple(str(c) for c in range(num_classes))


class PairedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the mscross builders: paired image/text features with multi-hot labels.

  Subclasses implement `dims`, `read_source` and, when they read files, `source_files`.
  Builders skip TFDS's global registry: mscross looks them up in its own table, and a
  registered name would make a second import of the module (or a same-named builder
  elsewhere) fail with "already registered".
  """

  # Bump when the produced examples change for the same source files, so caches are rebuilt.
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}

  # Where the source lies under the user's data directory: None means the data is embedded
  # and no data directory is needed; "" means the data directory itself.
  SOURCE_SUBDIR: ClassVar[str | None] = None

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> tfds.core.Path:
    """The file defining the builder (TFDS looks for a checksums file beside it)."""
    # TFDS 4.9.10 computes this via an isinstance check against `importlib_resources`, a
    # backport it only installs on Python < 3.9, and so fails for any builder in a package.
    return tfds.core.Path(inspect.getfile(cls))

  def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs: Any):
    """Like any TFDS builder, plus `source_dir`, the folder holding the source files."""
    # Set before TFDS's constructor, which already calls `_info`, where some builders need it.
    self._source_dir = Path(source_dir) if source_dir is not None else None
    super().__init__(**kwargs)

  @classmethod
  def source_files(cls, source_dir: Path | None, config_name: str | None) -> list[Path]:
    """The source files read for `config_name`; DataError when a required one is missing."""
    del source_dir, config_name
    return []

  @classmethod
  def source_fingerprint_extra(cls) -> str:
    """Extra text to fold into the cache key, for sources that are not files (embedded data)."""
    return ""

  @abc.abstractmethod
  def dims(self) -> tuple[int, int, int]:
    """(d_img, d_txt, number of classes) of the examples this builder produces."""

  @abc.abstractmethod
  def read_source(self, source_dir: Path | None) -> dict[str, Split]:
    """Reads and validates the source, returning all three splits in memory."""

  def _info(self) -> tfds.core.DatasetInfo:
    d_img, d_txt, num_classes = self.dims()
    return tfds.core.DatasetInfo(
      builder=self,
      description=(self.__doc__ or "").strip().split("\n")[0],
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(d_img,), dtype=np.float32),
          "text": tfds.features.Tensor(shape=(d_txt,), dtype=np.float32),
          "label": tfds.features.Tensor(shape=(num_classes,), dtype=np.float32),
          "id": tfds.features.Text(),
        }
      ),
      # Class names can come from the source (wikipedia's categories.list), so they are saved
      # with the prepared data rather than recomputed when reading.
      metadata=tfds.core.MetadataDict(),
      # Keep source order: TFDS would otherwise shuffle by key hash when writing.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    source_dir = None
    if self.MANUAL_DOWNLOAD_INSTRUCTIONS:
      source_dir = Path(os.fspath(dl_manager.manual_dir))
    splits = self.read_source(source_dir)
    first = splits["train"]
    self.info.metadata["class_names"] = list(first.class_names)
    return {name: self._generate_examples(split) for name, split in splits.items()}

  def _generate_examples(self, split: Split):
    for i in range(len(split.ids)):
      yield (
        i,
        {
          "image": split.image[i],
          "text": split.text[i],
          "label": split.label[i],
          "id": split.ids[i],
        },
      )


def cache_root() -> Path:
  """Root of the prepared-data cache: $MSCROSS_CACHE_DIR, else ~/.cache/mscross/tfds."""
  configured = os.environ.get(CACHE_ENV)
  if configured:
    return Path(configured).expanduser()
  return Path.home() / ".cache" / "mscross" / "tfds"


def _fingerprint(
  builder_cls: type[PairedBuilder],
  config_name: str | None,
  source_dir: Path | None,
  files: Sequence[Path],
) -> str:
  """A short hash identifying the source as it is now (location, file names, sizes, mtimes)."""
  stats = []
  for path in files:
    info = path.stat()
    stats.append([path.name, info.st_size, info.st_mtime_ns])
  key = {
    "builder": builder_cls.name,
    "config": config_name,
    "version": str(builder_cls.VERSION),
    "source": os.fspath(source_dir) if source_dir is not None else None,
    "files": stats,
    "extra": builder_cls.source_fingerprint_extra(),
  }
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def prepare(
  builder_cls: type[PairedBuilder], config_name: str | None, source_dir: Path | None
) -> PairedBuilder:
  """Returns a builder whose data is prepared, preparing it first if this source is new.

  The TFDS data directory is keyed by a fingerprint of the source, so a different folder or an
  edited file gets its own freshly prepared copy and a stale cache is never served.
  """
  files = builder_cls.source_files(source_dir, config_name)
  fingerprint = _fingerprint(builder_cls, config_name, source_dir, files)

  def make_builder() -> PairedBuilder:
    return builder_cls(
      source_dir=source_dir,
      data_dir=cache_root() / builder_cls.name / fingerprint,
      config=config_name,
      file_format="array_record",
    )

  builder = make_builder()
  # The data path only appears, by an atomic rename, once preparation has finished; checking it
  # first also spares TFDS's "has no dataset_info.json" warning on a cold cache.
  if builder.data_path.exists() and builder.is_prepared():
    return builder
  download_config = tfds.download.DownloadConfig(
    manual_dir=os.fspath(source_dir) if source_dir is not None else None
  )
  try:
    builder.download_and_prepare(download_config=download_config)
  except OSError:
    # Another process preparing the same source (parallel runs on a cold cache) can win the
    # final rename; its result is identical, so read that instead of failing.
    builder = make_builder()
    if not (builder.data_path.exists() and builder.is_prepared()):
      raise
  return builder


_FEATURE_KEYS = ("image", "text", "label")


def _decode_direct(records: Sequence[bytes]) -> dict[str, Any]:
  """Decodes serialized examples straight from their tf.train.Example protos."""
  features = [tf_example_pb2.Example.FromString(record).features.feature for record in records]
  decoded: dict[str, Any] = {
    key: np.asarray([f[key].float_list.value for f in features], dtype=np.float32)
    for key in _FEATURE_KEYS
  }
  decoded["id"] = [f["id"].bytes_list.value[0].decode("utf-8") for f in features]
  return decoded


def _decode_with_tfds(builder: PairedBuilder, records: Sequence[bytes]) -> dict[str, Any]:
  """Decodes serialized examples with TFDS's own (slower, per-example) numpy decoder."""
  examples = [builder.info.features.deserialize_example_np(record) for record in records]
  decoded: dict[str, Any] = {
    key: np.stack([e[key] for e in examples]).astype(np.float32, copy=False)
    for key in _FEATURE_KEYS
  }
  decoded["id"] = [
    e["id"].decode("utf-8") if isinstance(e["id"], bytes) else e["id"] for e in examples
  ]
  return decoded


def _same_decoding(first: dict[str, Any], second: dict[str, Any]) -> bool:
  return first["id"] == second["id"] and all(
    first[key].shape == second[key].shape and np.array_equal(first[key], second[key])
    for key in _FEATURE_KEYS
  )


def read(builder: PairedBuilder, split: str) -> Split:
  """Reads one prepared split into numpy arrays."""
  source = builder.as_data_source(
    split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
  )
  # One batched read: ArrayRecord then fetches the records in parallel.
  records = source.__getitems__(range(len(source)))
  # TFDS's decoder spends ~0.2 ms of Python per example, most of a warm load; parsing the
  # protos directly is several times faster. It relies on how TFDS encodes these features, so
  # it is checked against TFDS's decoder on the first example, and TFDS's is used on mismatch.
  try:
    decoded = _decode_direct(records)
    trusted = _same_decoding(
      _decode_with_tfds(builder, records[:1]), {k: v[:1] for k, v in decoded.items()}
    )
  except (KeyError, IndexError, ValueError, UnicodeDecodeError):
    trusted = False
  if not trusted:
    decoded = _decode_with_tfds(builder, records)
  return Split(
    image=decoded["image"],
    text=decoded["text"],
    label=decoded["label"],
    ids=np.asarray(decoded["id"], dtype=str),
    class_names=tuple(builder.info.metadata["class_names"]),
  )
