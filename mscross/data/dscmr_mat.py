"""`dscmr_mat`: paired features in the .mat layout of DSCMR's public feature releases.

Pascal Sentences, NUS-WIDE-10k and XMediaNet features are commonly shared as one .mat file per
array (`train_img.mat` holding variable `train_img`, and so on); this builder reads that layout
from any folder, so the same code serves every such release.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from mscross.data import base, checks
from mscross.errors import DataError

VALIDATION_FRACTION = 0.1
REQUIRED_SPLITS = ("train", "test")
# File-name prefix of each split; validation files are optional.
PREFIX = {"train": "train", "validation": "valid", "test": "test"}


def _names(split: str) -> tuple[str, str, str]:
  """Variable names (= file stems) of a split's image features, text features and labels."""
  prefix = PREFIX[split]
  return f"{prefix}_img", f"{prefix}_txt", f"{prefix}_img_lab"


def _files(split: str) -> list[str]:
  return [f"{name}.mat" for name in _names(split)]


def _is_index_form(labels: np.ndarray, num_examples: int) -> bool:
  """Whether labels are class indices (vector, (N,1) or (1,N)) rather than an (N, C) matrix.

  A single column is always indices (a one-class matrix would carry no information), and so is
  a single row unless the split has one example, where (1, C) is that example's label row.
  """
  if labels.ndim <= 1:
    return True
  return labels.ndim == 2 and (labels.shape[1] == 1 or (labels.shape[0] == 1 and num_examples != 1))


class DscmrMat(base.PairedBuilder, skip_registration=True):
  """Paired features from DSCMR-style .mat files in the data directory itself.

  Files (each holding the variable named like the file): train_img.mat, train_txt.mat,
  train_img_lab.mat, test_img.mat, test_txt.mat, test_img_lab.mat, and optionally all three of
  valid_img.mat, valid_txt.mat, valid_img_lab.mat. Without validation files, a seeded (seed 0)
  10% of train becomes validation: class-stratified for single-label data, plain random for
  multi-label data.

  Labels are either class indices, as a vector, (N, 1) or (1, N), or an (N, C) 0/1 matrix
  (several 1s per row allowed). Class indices are 0-based if their minimum over all splits is
  0 and 1-based if it is 1 (any other minimum is an error); C is then the largest index plus one
  (0-based) or the largest index (1-based). Labels come out multi-hot, classes named "0".."C-1".
  Ids are the example's row index within its source file.
  """

  SOURCE_SUBDIR = ""
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Pass as data_dir the folder holding train_img.mat, train_txt.mat, train_img_lab.mat, "
    "test_img.mat, test_txt.mat, test_img_lab.mat and optionally valid_img.mat, "
    "valid_txt.mat, valid_img_lab.mat (DSCMR feature-release layout)."
  )

  @classmethod
  def source_files(cls, source_dir: Path | None, config_name: str | None) -> list[Path]:
    del config_name
    source_dir = Path(source_dir)
    required = [name for split in REQUIRED_SPLITS for name in _files(split)]
    paths = checks.require_files(source_dir, required)
    optional = _files("validation")
    if any((source_dir / name).exists() for name in optional):
      # Half a validation set is more likely a copying mistake than an intent to carve one.
      paths += checks.require_files(source_dir, optional)
    return paths

  def _splits_in_source(self) -> tuple[str, ...]:
    present = {path.name for path in self.source_files(self._source_dir, None)}
    return tuple(s for s in base.SPLITS if set(_files(s)) <= present)

  def _path(self, split: str, kind: int) -> Path:
    return self._source_dir / _files(split)[kind]

  def _where(self, split: str, kind: int) -> str:
    return f"{self._path(split, kind)} [{_names(split)[kind]}]"

  @functools.cached_property
  def _labels(self) -> dict[str, np.ndarray]:
    """Multi-hot float32 labels of every split present in the source, validated."""
    raw, counts = {}, {}
    for split in self._splits_in_source():
      key = _names(split)[2]
      raw[split] = np.asarray(checks.load_mat(self._path(split, 2), [key])[key])
      counts[split] = checks.mat_shape(self._path(split, 0), _names(split)[0])[0]
    forms = {split: _is_index_form(raw[split], counts[split]) for split in raw}
    if len(set(forms.values())) > 1:
      listing = ", ".join(
        f"{self._path(s, 2).name} {'class indices' if forms[s] else 'a 0/1 matrix'}" for s in raw
      )
      raise DataError(f"{self._source_dir}: label forms differ between splits ({listing})")
    if forms["train"]:
      return self._index_labels(raw)
    num_classes = raw["train"].shape[1] if raw["train"].ndim == 2 else None
    return {s: checks.multi_hot(raw[s], self._where(s, 2), num_classes) for s in raw}

  def _index_labels(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Missing labels are reported per file before they can confuse the base rule below.
    flat = {
      split: checks.all_labelled(values, self._where(split, 2)) for split, values in raw.items()
    }
    lowest = {split: values.min() for split, values in flat.items() if values.size}
    if not lowest:
      raise DataError(f"{self._where('train', 2)}: no examples")
    first = min(lowest.values())
    if first not in (0, 1):
      where = self._where(min(lowest, key=lowest.get), 2)
      raise DataError(
        f"{where}: labels out of range: smallest class index is {first:g}, "
        "expected 0 (0-based labels) or 1 (1-based labels)"
      )
    num_classes = int(max(values.max() for values in flat.values() if values.size) - first + 1)
    return {
      split: checks.one_hot(
        checks.class_indices(values, int(first), num_classes, self._where(split, 2)), num_classes
      )
      for split, values in flat.items()
    }

  def dims(self) -> tuple[int, int, int]:
    if self._source_dir is None:
      raise ValueError("DscmrMat needs source_dir: its feature and label sizes come from the files")
    image_width = checks.feature_width(
      checks.mat_shape(self._path("train", 0), _names("train")[0]), self._where("train", 0)
    )
    text_width = checks.feature_width(
      checks.mat_shape(self._path("train", 1), _names("train")[1]), self._where("train", 1)
    )
    return image_width, text_width, self._labels["train"].shape[1]

  def read_source(self, source_dir: Path | None) -> dict[str, base.Split]:
    if Path(source_dir).resolve() != self._source_dir.resolve():
      raise ValueError(f"manual_dir {source_dir} differs from source_dir {self._source_dir}")
    image_width, text_width, num_classes = self.dims()
    class_names = base.class_name_range(num_classes)
    splits = {}
    for split in self._splits_in_source():
      image_key, text_key, _ = _names(split)
      image = checks.load_mat(self._path(split, 0), [image_key])[image_key]
      text = checks.load_mat(self._path(split, 1), [text_key])[text_key]
      image = checks.features(image, self._where(split, 0), image_width)
      text = checks.features(text, self._where(split, 1), text_width)
      label = self._labels[split]
      counts = {self._where(split, k): n for k, n in enumerate((len(image), len(text), len(label)))}
      num_examples = checks.same_count(counts)
      checks.nonempty(num_examples, str(self._path(split, 0)), split)
      ids = np.asarray([str(i) for i in range(num_examples)])
      splits[split] = base.Split(image, text, label, ids, class_names)

    if "validation" not in splits:
      train = splits["train"]
      single_label = bool(np.all(train.label.sum(axis=1) == 1))
      strata = np.argmax(train.label, axis=1) if single_label else None
      kept, held = base.holdout(
        np.arange(len(train.ids)), VALIDATION_FRACTION, strata, str(self._path("train", 2))
      )
      splits["train"] = base.subset(train, kept)
      splits["validation"] = base.subset(train, held)
      checks.nonempty(len(kept), str(self._path("train", 0)), "train")
    return {split: splits[split] for split in base.SPLITS}
