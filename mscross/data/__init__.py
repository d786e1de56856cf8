"""Row-paired datasets of K >= 2 modalities (labels optional) as in-memory numpy splits.

Every dataset is a TFDS builder (TensorFlow is not needed), a subclass of
`base.PairedBuilder` that registers itself by its `NAME` where it is defined, with its layout,
its modalities and its training preset; this package imports every module in it, so a new
builder module is found without editing any list. `available_datasets()` lists the names. The
first `load_split` of a dataset prepares it into a cache folder keyed by its source files; later
calls read that cache.

Environment: MSCROSS_DATA_DIR is the default data_dir; MSCROSS_CACHE_DIR the cache root
(`mscross.caches`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from pathlib import Path

from mscross.data import base, cache, raw
from mscross.data.raw import Options, Problem
from mscross.data.splits import SPLITS, Split, subset
from mscross.errors import DataError

__all__ = [
  "SPLITS",
  "Options",
  "Prepared",
  "Problem",
  "Split",
  "available_datasets",
  "builder",
  "canonical_name",
  "dataset_modalities",
  "describe_datasets",
  "load_problems",
  "load_split",
  "prepare",
  "raw_items",
  "resolve_data_dir",
  "subset",
]

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")


def available_datasets() -> list[str]:
  """Names accepted by `load_split`, a family of datasets by its pattern, e.g.
  "uci_mfeat/<view>_<view>[_<view>...]"."""
  return [cls.NAME_PATTERN or name for name, cls in base.BUILDERS.items()]


def describe_datasets() -> list[str]:
  """One line per dataset: its name (or pattern) and the first line of its builder's doc."""
  lines = []
  for name, cls in base.BUILDERS.items():
    aliases = ", ".join(sorted(cls.ALIASES))
    summary = (cls.__doc__ or "").strip().split("\n")[0]
    lines.append(
      f"{cls.NAME_PATTERN or name}: {summary}" + (f" (alias {aliases})" if aliases else "")
    )
  return lines


def canonical_name(name: str) -> str:
  """`name` with a short name ("mfeat", "digits") replaced by the dataset it stands for."""
  for cls in base.BUILDERS.values():
    if name in cls.ALIASES:
      return cls.ALIASES[name]
  return name


def _resolve(name: str) -> tuple[type[base.PairedBuilder], str | None]:
  """(builder class, config name) of a dataset name; DataError if it names no dataset."""
  family, sep, config_name = name.partition("/")
  cls = base.BUILDERS.get(family)
  if cls is None or (sep and cls.NAME_PATTERN is None):
    raise DataError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
  if cls.NAME_PATTERN is None:
    return cls, None
  cls.modalities_for(config_name)  # raises DataError naming what is wrong with the name
  return cls, config_name


def builder(name: str) -> type[base.PairedBuilder]:
  """The builder class of a dataset name (its preset, its modalities); DataError if none."""
  return _resolve(canonical_name(name))[0]


def dataset_modalities(name: str) -> tuple[str, ...] | None:
  """The modality names of a dataset when its name alone fixes them, in the dataset's order.

  ("image", "text") for wikipedia, ("left", "right") for digits_halves, the views for
  uci_mfeat/... (uci_mfeat/fou_kar_pix -> ("fou", "kar", "pix")); None for dscmr_mat and
  features, whose modalities come from the files (load a split and read `Split.modalities`).

  Raises:
    DataError: the name is not a dataset.
  """
  builder_cls, config_name = _resolve(name)
  return builder_cls.modalities_for(config_name)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str | None:
  """The data directory to use: `data_dir` if given, else $MSCROSS_DATA_DIR, else None."""
  if data_dir:
    return os.fspath(data_dir)
  return os.environ.get(base.DATA_ENV) or None


def _source_dir(builder_cls, name: str, data_dir) -> Path | None:
  if builder_cls.SOURCE_SUBDIR is None:
    return None
  root = resolve_data_dir(data_dir)
  if root is None:
    raise DataError(
      f"dataset {name!r} needs a data directory: pass data_dir or set {base.DATA_ENV}"
    )
  return (Path(root).expanduser() / builder_cls.SOURCE_SUBDIR).resolve()


def raw_items(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, dict]:
  """pair id -> modality -> raw item (an image or text file `Path`, or an inline text `str`)
  of a dataset made from raw items, for showing results; empty for feature datasets."""
  builder_cls, _ = _resolve(name)
  return builder_cls.raw_items(_source_dir(builder_cls, name, data_dir))


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A dataset prepared (or found prepared) once: its splits and problems are read from the
  cache without looking at the source files again."""

  name: str
  path: Path

  def split(self, split: str) -> Split:
    """One split in memory (see `load_split`)."""
    if split not in SPLITS:
      raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return cache.read(self.path, split)

  def problems(self) -> list[Problem]:
    """The raw items skipped or converted when the dataset was prepared (see `load_problems`)."""
    return cache.read_problems(self.path)


def prepare(
  name: str, data_dir: str | os.PathLike | None = None, options: raw.Options | None = None
) -> Prepared:
  """The dataset `name`, prepared into the cache on first use (the arguments as `load_split`'s):
  for reading several of its splits, and its problems, at the cost of one look at the source."""
  builder_cls, config_name = _resolve(name)
  source_dir = _source_dir(builder_cls, name, data_dir)
  return Prepared(name, cache.prepare(builder_cls, config_name, source_dir, options))


def load_split(
  name: str,
  split: str,
  data_dir: str | os.PathLike | None = None,
  options: raw.Options | None = None,
) -> Split:
  """Loads one split of a dataset into memory, preparing and caching it on first use.

  Safe to call from several processes at once: one prepares, the others wait and reuse it.

  Args:
    name: a dataset name (see `available_datasets()`), e.g. "uci_mfeat/fou_kar_pix".
    split: "train", "validation" or "test".
    data_dir: folder holding the source data (see the module docstring for each dataset's
      layout); defaults to $MSCROSS_DATA_DIR. Not needed for "digits_halves".
    options: for datasets of raw images and texts, the extractor of each modality and what to
      do with unreadable items, e.g. `Options(extractors={"text": "minilm"})`; the prepared
      features are cached per choice of extractors.

  Returns:
    The split's float32 features per modality, multi-hot float32 labels (None when the
    dataset is unlabelled), ids and class names.

  Raises:
    DataError: unknown dataset or split, missing data directory, or missing/malformed source.
    ConfigError: an unknown extractor, or one named for a modality without raw items.
  """
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
  return prepare(name, data_dir, options).split(split)


def load_problems(
  name: str, data_dir: str | os.PathLike | None = None, options: raw.Options | None = None
) -> list[Problem]:
  """The raw items of a dataset that were skipped or converted when it was prepared (each with
  its split, pair id, file and reason); empty for datasets of feature arrays."""
  return prepare(name, data_dir, options).problems()
