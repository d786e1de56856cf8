"""Paired (image, text, label) datasets for cross-modal retrieval, as in-memory numpy splits.

Every dataset is a TFDS builder (TensorFlow is not needed). The first `load_split` of a dataset
prepares it into a cache folder keyed by its source files; later calls read that cache.

Datasets:
  digits_halves       scikit-learn digits, left/right halves (embedded, no data_dir needed)
  wikipedia           <data_dir>/wikipedia/ (raw_features.mat and the .list files)
  uci_mfeat/<a>_<b>   <data_dir>/uci_mfeat/mfeat-<view>.csv, views fou fac kar pix zer mor
  dscmr_mat           <data_dir>/ itself, DSCMR-style train_img.mat ... test_img_lab.mat

Environment: MSCROSS_DATA_DIR is the default data_dir; MSCROSS_CACHE_DIR the cache root
(default ~/.cache/mscross/tfds).
"""

from __future__ import annotations

import os
from pathlib import Path

from mscross.data import base
from mscross.data.base import SPLITS, Split
from mscross.data.digits_halves import DigitsHalves
from mscross.data.dscmr_mat import DscmrMat
from mscross.data.uci_mfeat import UciMfeat
from mscross.data.wikipedia import Wikipedia
from mscross.errors import DataError

__all__ = [
  "SPLITS",
  "DigitsHalves",
  "DscmrMat",
  "Split",
  "UciMfeat",
  "Wikipedia",
  "available_datasets",
  "load_split",
  "resolve_data_dir",
]


def _registry() -> dict[str, tuple[type[base.PairedBuilder], str | None]]:
  """Public dataset name -> (builder class, builder config name)."""
  entries: dict[str, tuple[type[base.PairedBuilder], str | None]] = {
    "digits_halves": (DigitsHalves, None),
    "wikipedia": (Wikipedia, None),
  }
  for config in UciMfeat.BUILDER_CONFIGS:
    entries[f"uci_mfeat/{config.name}"] = (UciMfeat, config.name)
  entries["dscmr_mat"] = (DscmrMat, None)
  return entries


_REGISTRY = _registry()


def available_datasets() -> list[str]:
  """Names accepted by `load_split`, e.g. "digits_halves", "uci_mfeat/fou_pix", "dscmr_mat"."""
  return list(_REGISTRY)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str | None:
  """The data directory to use: `data_dir` if given, else $MSCROSS_DATA_DIR, else None."""
  if data_dir:
    return os.fspath(data_dir)
  return os.environ.get(base.DATA_ENV) or None


def load_split(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Split:
  """Loads one split of a dataset into memory, preparing and caching it on first use.

  Args:
    name: a name from `available_datasets()`.
    split: "train", "validation" or "test".
    data_dir: folder holding the source data (see the module docstring for each dataset's
      layout); defaults to $MSCROSS_DATA_DIR. Not needed for "digits_halves".

  Returns:
    The split's float32 image/text features, multi-hot float32 labels, ids and class names.

  Raises:
    DataError: unknown dataset or split, missing data directory, or missing/malformed source.
  """
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
  if name not in _REGISTRY:
    raise DataError(f"unknown dataset {name!r}; available: {', '.join(_REGISTRY)}")
  builder_cls, config_name = _REGISTRY[name]

  source_dir = None
  if builder_cls.SOURCE_SUBDIR is not None:
    root = resolve_data_dir(data_dir)
    if root is None:
      raise DataError(
        f"dataset {name!r} needs a data directory: pass data_dir or set {base.DATA_ENV}"
      )
    source_dir = (Path(root).expanduser() / builder_cls.SOURCE_SUBDIR).resolve()

  builder = base.prepare(builder_cls, config_name, source_dir)
  return base.read(builder, split)
