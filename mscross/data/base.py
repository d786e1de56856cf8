"""The dataset builders' base: the TFDS builder class every dataset subclasses, the table they
register in, and modality names. (Splits and how builders draw them: `mscross.data.splits`.)

TFDS runs here without TensorFlow, which constrains a few choices: records are written as
ArrayRecord (the default TFRecord writer needs TensorFlow), `_info` builds its `DatasetInfo`
directly instead of from metadata files beside the module, and reading goes through
`as_data_source` (random access returning numpy) because `as_dataset` needs TensorFlow.
"""

from __future__ import annotations

import abc
import functools
import inspect
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from mscross import caches
from mscross.data import raw
from mscross.data.splits import SPLITS, Split
from mscross.errors import DataError

DATA_ENV = "MSCROSS_DATA_DIR"


# Every dataset builder, by name: a subclass of `PairedBuilder` with a `NAME` registers itself
# here where it is defined (`mscross.data` imports every module of the package).
BUILDERS: dict[str, type[PairedBuilder]] = {}

# Modality names become TFDS feature names beside "label" and "id", and config/file names.
MODALITY_NAME = re.compile(r"[A-Za-z0-9_]+")
RESERVED_NAMES = ("label", "id")


def check_modalities(names: Iterable[str], where: str) -> tuple[str, ...]:
  """Checks modality names (pattern, reserved words, uniqueness, at least two); returns them."""
  names = tuple(names)
  for name in names:
    if not isinstance(name, str) or not MODALITY_NAME.fullmatch(name):
      raise DataError(
        f"{where}: modality name {name!r} is invalid; use letters, digits and underscores"
      )
    if name in RESERVED_NAMES:
      raise DataError(
        f"{where}: {name!r} cannot name a modality (reserved: {', '.join(RESERVED_NAMES)})"
      )
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    raise DataError(f"{where}: modality {', '.join(map(repr, repeated))} named more than once")
  if len(names) < 2:
    found = f"{len(names)} {'modality' if len(names) == 1 else 'modalities'}"
    listing = f" ({', '.join(names)})" if names else ""
    raise DataError(f"{where}: found {found}{listing}; mscross needs at least 2")
  return names


def _check_consistent(splits: Mapping[str, Split], builder: str) -> None:
  """Guards the builders' contract: one modality list, width per modality and label set."""
  first = splits["train"]
  for name, split in splits.items():
    widths = {m: a.shape[1:] for m, a in split.features.items()}
    if widths != {m: a.shape[1:] for m, a in first.features.items()} or (
      (split.label is None) != (first.label is None)
      or (split.label is not None and split.label.shape[1:] != first.label.shape[1:])
      or split.class_names != first.class_names
    ):
      raise ValueError(f"{builder}: split {name!r} is shaped unlike train")


class PairedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the mscross builders: K >= 2 row-aligned modalities, multi-hot labels optional.

  Subclasses implement `read_source` and, when they read files, `source_files`; the TFDS
  features (one float32 vector per modality, "label" when labelled, "id") follow from the
  splits `read_source` returns. Builders skip TFDS's global registry: mscross looks them up in
  its own table, and a registered name would make a second import of the module (or a
  same-named builder elsewhere) fail with "already registered".
  """

  # Bump when the produced examples change for the same source files, so caches are rebuilt.
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    "1.0.0": "First release.",
    "2.0.0": "Features named by modality; labels optional; modalities and labelled in metadata.",
  }

  # Where the source lies under the user's data directory: None means the data is embedded
  # and no data directory is needed; "" means the data directory itself.
  SOURCE_SUBDIR: ClassVar[str | None] = None

  # The dataset's name in configs and `load_split`; a builder without one registers nothing.
  NAME: ClassVar[str | None] = None
  # A family of datasets is named "<NAME>/<config name>": how such names look, for listings.
  NAME_PATTERN: ClassVar[str | None] = None
  # Short names: {"mfeat": "uci_mfeat/fou_pix"}.
  ALIASES: ClassVar[dict[str, str]] = {}
  # The training preset of the dataset, as dotted config keys (`configs/default.py` applies it
  # before the method's settings). This default suits a user's own features: z-scored inputs
  # and a step cap that early stopping cuts short.
  PRESET: ClassVar[dict[str, Any]] = {
    "optim.lr": 1e-3,
    "train.steps": 20000,
    "train.eval_every": 250,
    "train.checkpoint_every": 1000,
    "train.patience": 10,
  }

  # Modalities this dataset can make from raw items, modality -> kind ("image" or "text"), and
  # the extractor each uses when `data.extractors.<modality>` is empty (none: the modality keeps
  # the dataset's own features unless an extractor is configured).
  RAW_MODALITIES: ClassVar[dict[str, str]] = {}
  DEFAULT_EXTRACTORS: ClassVar[dict[str, str]] = {}
  # Appended to the message when `data.extractors` names a modality without raw items.
  RAW_NOTE: ClassVar[str] = ""

  def __init_subclass__(cls, **kwargs: Any):
    super().__init_subclass__(**kwargs)
    name = cls.__dict__.get("NAME")
    if name:
      known = BUILDERS.get(name)
      if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"dataset name {name!r} is taken by {known.__qualname__}")
      BUILDERS[name] = cls

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> tfds.core.Path:
    """The file defining the builder (TFDS looks for a checksums file beside it)."""
    # TFDS 4.9.10 computes this via an isinstance check against `importlib_resources`, a
    # backport it only installs on Python < 3.9, and so fails for any builder in a package.
    return tfds.core.Path(inspect.getfile(cls))

  def __init__(
    self,
    *,
    source_dir: str | os.PathLike | None = None,
    options: raw.Options | None = None,
    **kwargs: Any,
  ):
    """Like any TFDS builder, plus `source_dir`, the folder holding the source files, and
    `options`, how raw items become features."""
    # Set before TFDS's constructor, which already calls `_info`, where the source is read.
    self._source_dir = Path(source_dir) if source_dir is not None else None
    self._options = options or raw.Options()
    # What `read_source` found wrong with raw items (skipped pairs, converted images).
    self._problems: list[raw.Problem] = []
    super().__init__(**kwargs)

  @classmethod
  def extracted_modalities(cls, options: raw.Options) -> dict[str, str]:
    """modality -> kind of the modalities made from raw items under `options`; ConfigError
    when `options` names an extractor for a modality without raw items."""
    raw.check_extractors(options, cls.RAW_MODALITIES, cls.NAME or cls.__name__, cls.RAW_NOTE)
    return {
      m: kind
      for m, kind in cls.RAW_MODALITIES.items()
      if options.extractors.get(m) or cls.DEFAULT_EXTRACTORS.get(m)
    }

  @classmethod
  def options_key(cls, options: raw.Options) -> dict[str, Any]:
    """What of `options` changes the prepared data, for the cache key."""
    extracted = cls.extracted_modalities(options)
    return raw.fingerprint(options, extracted, cls.DEFAULT_EXTRACTORS) if extracted else {}

  def extract_raw(self, pairs: list[raw.Pair]) -> tuple[list[raw.Pair], dict[str, np.ndarray]]:
    """Encodes the pairs' raw items (`raw.encode`), recording the problems found."""
    kept, problems = raw.duplicates(pairs)
    if problems and self._options.bad_input == "stop":
      raise DataError(f"{self.NAME}: {problems[0].reason}; set data.bad_input=skip to skip it")
    kept, features, found = raw.extract(
      kept,
      self.extracted_modalities(self._options),
      self._options,
      self.DEFAULT_EXTRACTORS,
      self.NAME or type(self).__name__,
      cache_dir=caches.extracted(),
    )
    self._problems += problems + found
    raw.report_skipped(self.NAME or type(self).__name__, len(pairs), len(kept))
    return kept, features

  @classmethod
  def modalities_for(cls, config_name: str | None) -> tuple[str, ...] | None:
    """The modality names when the dataset name fixes them; None when they come from files."""
    del config_name
    return None

  @classmethod
  def source_files(cls, source_dir: Path | None, config_name: str | None) -> list[Path]:
    """The source files read for `config_name`; DataError when a required one is missing."""
    del source_dir, config_name
    return []

  @classmethod
  def raw_items(cls, source_dir: Path | None) -> dict[str, dict[str, Path | str]]:
    """pair id -> modality -> its raw item (an image or text file, or an inline text), for
    datasets made from raw items; empty for datasets of feature arrays."""
    del source_dir
    return {}

  @classmethod
  def source_fingerprint_extra(cls) -> str:
    """Extra text to fold into the cache key, for sources that are not files (embedded data)."""
    return ""

  @abc.abstractmethod
  def read_source(self) -> dict[str, Split]:
    """Reads and validates the source in `self._source_dir`; returns all three splits."""

  @functools.cached_property
  def source_splits(self) -> dict[str, Split]:
    """The three splits of the source, read once per builder (only a cold prepare needs it)."""
    splits = self.read_source()
    _check_consistent(splits, type(self).__name__)
    return {name: splits[name] for name in SPLITS}

  def _info(self) -> tfds.core.DatasetInfo:
    train = self.source_splits["train"]
    features: dict[str, Any] = {
      name: tfds.features.Tensor(shape=(array.shape[1],), dtype=np.float32)
      for name, array in train.features.items()
    }
    if train.label is not None:
      features["label"] = tfds.features.Tensor(shape=(train.label.shape[1],), dtype=np.float32)
    features["id"] = tfds.features.Text()
    return tfds.core.DatasetInfo(
      builder=self,
      description=(self.__doc__ or "").strip().split("\n")[0],
      features=tfds.features.FeaturesDict(features),
      # Read back with the data: the modality order and class names can come from the source
      # files, and the features alone cannot tell an unlabelled dataset's intent.
      metadata=tfds.core.MetadataDict(
        modalities=list(train.modalities),
        labelled=train.label is not None,
        class_names=list(train.class_names),
        problems=raw.problem_rows(self._problems),
      ),
      # Keep source order: TFDS would otherwise shuffle by key hash when writing.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    del dl_manager  # the source was read from `self._source_dir` by `_info`
    return {name: self._generate_examples(split) for name, split in self.source_splits.items()}

  def _generate_examples(self, split: Split):
    for i in range(len(split)):
      example: dict[str, Any] = {name: array[i] for name, array in split.features.items()}
      if split.label is not None:
        example["label"] = split.label[i]
      example["id"] = split.ids[i]
      yield i, example
