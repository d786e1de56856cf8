"""Row-paired datasets of K >= 2 modalities (labels optional) as in-memory numpy splits.

Every dataset is a TFDS builder (TensorFlow is not needed). The first `load_split` of a dataset
prepares it into a cache folder keyed by its source files; later calls read that cache.

Datasets (modalities in brackets):
  digits_halves        [left, right] scikit-learn digits halves (embedded, no data_dir needed)
  wikipedia            [image, text] <data_dir>/wikipedia/ (raw_features.mat, the .list files)
  uci_mfeat/<v1>_<v2>[_<v3>...]
                       [the views, as named] <data_dir>/uci_mfeat/mfeat-<view>.csv for 2 to 6
                       distinct views of fou fac kar pix zer mor, e.g. uci_mfeat/fou_kar_pix
  dscmr_mat            [2-5 of image, text, audio, video, 3d] <data_dir>/ itself:
                       <prefix>_<tag>.mat and <prefix>_<tag>_lab.mat, prefix train/valid/test,
                       tag img/txt/aud/vid/3d (see `DscmrMat`)
  features             [from the files] <data_dir>/ itself: train/, validation/, test/ folders
                       of <modality>.npy or .mat (+ labels.npy), or train.npz ...; optional
                       manifest.json (see `UserFeatures`)

Environment: MSCROSS_DATA_DIR is the default data_dir; MSCROSS_CACHE_DIR the cache root
(default ~/.cache/mscross/tfds).
"""

from __future__ import annotations

import os
from pathlib import Path

from mscross.data import base, cache, uci_mfeat
from mscross.data.base import SPLITS, Split, subset
from mscross.data.digits_halves import DigitsHalves
from mscross.data.dscmr_mat import DscmrMat
from mscross.data.features import UserFeatures
from mscross.data.uci_mfeat import UciMfeat
from mscross.data.wikipedia import Wikipedia
from mscross.errors import DataError

__all__ = [
  "SPLITS",
  "DigitsHalves",
  "DscmrMat",
  "Split",
  "UciMfeat",
  "UserFeatures",
  "Wikipedia",
  "available_datasets",
  "dataset_modalities",
  "load_split",
  "resolve_data_dir",
  "subset",
]

# Datasets with one fixed name, in the order `available_datasets` lists them.
_FIXED: dict[str, type[base.PairedBuilder]] = {
  "digits_halves": DigitsHalves,
  "wikipedia": Wikipedia,
  "dscmr_mat": DscmrMat,
  "features": UserFeatures,
}
_UCI_FAMILY = "uci_mfeat"


def available_datasets() -> list[str]:
  """Names accepted by `load_split`: fixed names, and the pattern of the uci_mfeat names.

  ["digits_halves", "wikipedia", "uci_mfeat/<view>_<view>[_<view>...]", "dscmr_mat",
  "features"]; a uci_mfeat name joins 2 to 6 distinct views of fou fac kar pix zer mor.
  """
  names = list(_FIXED)
  names.insert(2, uci_mfeat.NAME_PATTERN)
  return names


def _resolve(name: str) -> tuple[type[base.PairedBuilder], str | None]:
  """(builder class, config name) of a dataset name; DataError if it names no dataset."""
  if name in _FIXED:
    return _FIXED[name], None
  family, _, config_name = name.partition("/")
  if family == _UCI_FAMILY:
    uci_mfeat.parse_views(config_name)
    return UciMfeat, config_name
  raise DataError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")


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


def load_split(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Split:
  """Loads one split of a dataset into memory, preparing and caching it on first use.

  Safe to call from several processes at once: one prepares, the others wait and reuse it.

  Args:
    name: a dataset name (see `available_datasets()`), e.g. "uci_mfeat/fou_kar_pix".
    split: "train", "validation" or "test".
    data_dir: folder holding the source data (see the module docstring for each dataset's
      layout); defaults to $MSCROSS_DATA_DIR. Not needed for "digits_halves".

  Returns:
    The split's float32 features per modality, multi-hot float32 labels (None when the
    dataset is unlabelled), ids and class names.

  Raises:
    DataError: unknown dataset or split, missing data directory, or missing/malformed source.
  """
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
  builder_cls, config_name = _resolve(name)

  source_dir = None
  if builder_cls.SOURCE_SUBDIR is not None:
    root = resolve_data_dir(data_dir)
    if root is None:
      raise DataError(
        f"dataset {name!r} needs a data directory: pass data_dir or set {base.DATA_ENV}"
      )
    source_dir = (Path(root).expanduser() / builder_cls.SOURCE_SUBDIR).resolve()

  return cache.read(cache.prepare(builder_cls, config_name, source_dir), split)
