"""`dscmr_mat`: row-paired features in the .mat layout of DSCMR-style feature releases.

Pascal Sentences, NUS-WIDE-10k and XMediaNet features are commonly shared as one .mat file per
array, the file holding one variable named like the file (`train_img.mat` holds `train_img`).
This builder reads that layout from the data directory itself:

  <prefix>_<tag>.mat       features [N, d] of one medium in one split
  <prefix>_<tag>_lab.mat   labels of that split (variable `<prefix>_<tag>_lab`)

with prefix train, valid (optional) or test, and tag img, txt, aud, vid or 3d (modalities
image, text, audio, video, 3d, in this order). Examples:

  two media    train_img.mat train_txt.mat train_img_lab.mat
               test_img.mat  test_txt.mat  test_img_lab.mat
  five media   train_img.mat train_txt.mat train_aud.mat train_vid.mat train_3d.mat
               train_img_lab.mat (and, if present, train_txt_lab.mat ... train_3d_lab.mat),
               the same with test_, and optionally all of them with valid_

The labels of the first medium present (in tag order) are required; other media's label files
are optional and checked against them. The rows of all media of a split must be paired.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from mscross.data import base, checks, labels
from mscross.data.splits import SPLITS, Split, carve_validation, class_name_range, row_ids
from mscross.errors import DataError

VALIDATION_FRACTION = 0.1
# File-name tag -> modality name, in modality order.
MEDIA = {"img": "image", "txt": "text", "aud": "audio", "vid": "video", "3d": "3d"}
# File-name prefix of each split; validation files are optional.
PREFIX = {"train": "train", "validation": "valid", "test": "test"}


def _stem(split: str, tag: str, label: bool = False) -> str:
  """File stem and variable name of a split's features (or labels) of one medium."""
  return f"{PREFIX[split]}_{tag}" + ("_lab" if label else "")


def _file(split: str, tag: str, label: bool = False) -> str:
  return f"{_stem(split, tag, label)}.mat"


def _media(source_dir: Path) -> list[str]:
  """The tags of the media with a train file, in modality order."""
  return [tag for tag in MEDIA if (source_dir / _file("train", tag)).is_file()]


def _split_files(split: str, media: list[str]) -> list[str]:
  """Required files of a split: every medium's features and the first medium's labels."""
  return [_file(split, tag) for tag in media] + [_file(split, media[0], label=True)]


class DscmrMat(base.PairedBuilder, skip_registration=True):
  """Row-paired features of 2-5 media from DSCMR-style .mat files in the data directory itself.

  Files, each holding the variable named like the file:
    train_<tag>.mat and test_<tag>.mat for every medium used (tags img, txt, aud, vid, 3d for
    modalities image, text, audio, video, 3d; the media are those with a train file, at
    least two); train_<first>_lab.mat and test_<first>_lab.mat, labels, where <first> is the
    first medium in that tag order (img for the usual image-text release); optionally the
    same with prefix valid_ for a validation split, all of them if any.
  Other media's label files (test_txt_lab.mat, ...) may be present; they must then agree with
  the first medium's labels row by row, since mscross needs paired rows: row i of every file
  of a split describes the same example. Without validation files, a seeded (seed 0) 10% of
  train becomes validation: class-stratified for single-label data, plain random otherwise.

  Labels are either class indices, as a vector, (N, 1) or (1, N), or an (N, C) 0/1 matrix
  (several 1s per row allowed). Class indices are 0-based if their minimum over all splits is
  0 and 1-based if it is 1 (any other minimum is an error); C is then the largest index plus one
  (0-based) or the largest index (1-based), at most 10 x the number of labelled examples and
  65,536 (a larger index is taken for a corrupted label). Labels come out multi-hot, classes
  named "0".."C-1". Ids are the example's row index within its source files.
  """

  NAME = "dscmr_mat"
  SOURCE_SUBDIR = ""
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Pass as data_dir the folder holding train_<tag>.mat, test_<tag>.mat (and optionally "
    "valid_<tag>.mat) for at least two of the tags img, txt, aud, vid, 3d, plus the labels "
    "train_<tag>_lab.mat, test_<tag>_lab.mat of the first of them (DSCMR feature-release layout)."
  )

  @classmethod
  def source_files(cls, source_dir: Path | None, config_name: str | None) -> list[Path]:
    del config_name
    source_dir = Path(source_dir)
    media = _media(source_dir)
    if not media:
      # Names the files of the common two-media release, the layout most folders follow.
      checks.require_files(
        source_dir, [*_split_files("train", ["img", "txt"]), *_split_files("test", ["img", "txt"])]
      )
    if len(media) < 2:
      raise DataError(
        f"{source_dir}: found only {_file('train', media[0])}; dscmr_mat needs paired features "
        f"of at least two media ({', '.join(_file('train', tag) for tag in MEDIA)})"
      )
    paths = checks.require_files(
      source_dir, _split_files("train", media) + _split_files("test", media)
    )
    optional = _split_files("validation", media)
    any_validation = optional + [_file("validation", tag, label=True) for tag in media]
    if any((source_dir / name).exists() for name in any_validation):
      # Half a validation set is more likely a copying mistake than an intent to carve one.
      paths += checks.require_files(source_dir, optional)
    for split in SPLITS:
      for tag in MEDIA:
        if tag not in media and (source_dir / _file(split, tag)).exists():
          raise DataError(
            f"{source_dir / _file(split, tag)}: no {_file('train', tag)} beside it; every split "
            "needs the same media"
          )
        path = source_dir / _file(split, tag, label=True)
        if tag in media[1:] and path.is_file() and path not in paths:
          paths.append(path)
    return paths

  @functools.cached_property
  def _layout(self) -> tuple[list[str], tuple[str, ...], set[Path]]:
    """(media tags, splits present in the source, every source file)."""
    files = set(self.source_files(self._source_dir, None))
    media = _media(self._source_dir)
    splits = tuple(s for s in SPLITS if self._path(s, media[0]) in files)
    return media, splits, files

  def _path(self, split: str, tag: str, label: bool = False) -> Path:
    return self._source_dir / _file(split, tag, label)

  def _where(self, split: str, tag: str, label: bool = False) -> str:
    return f"{self._path(split, tag, label)} [{_stem(split, tag, label)}]"

  def _labels_of(self, tag: str, splits: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One medium's labels, multi-hot, for the given splits (all holding its label file)."""
    raw, counts, where = {}, {}, {}
    for split in splits:
      key = _stem(split, tag, label=True)
      raw[split] = np.asarray(checks.load_mat(self._path(split, tag, True), [key])[key])
      counts[split] = checks.mat_shape(self._path(split, tag), _stem(split, tag))[0]
      where[split] = self._where(split, tag, True)
    return labels.to_multi_hot(raw, counts, where, first_index=None, folder=str(self._source_dir))

  def _check_other_labels(self, first: dict[str, np.ndarray]) -> None:
    """Other media's label files, where present, must match the first medium's row by row."""
    media, splits, files = self._layout
    for tag in media[1:]:
      present = tuple(s for s in splits if self._path(s, tag, True) in files)
      if not present:
        continue
      other = self._labels_of(tag, present)
      for split in present:
        reference, where = self._where(split, media[0], True), self._where(split, tag, True)
        if other[split].shape != first[split].shape:
          raise DataError(
            f"{reference} and {where}: labels differ ({first[split].shape[1]} vs "
            f"{other[split].shape[1]} classes, {len(first[split])} vs {len(other[split])} "
            "examples); mscross needs paired rows (row i of every file describes the same example)"
          )
        checks.same_labels(first[split], other[split], reference, where)

  def read_source(self) -> dict[str, Split]:
    media, splits_present, _ = self._layout
    label = self._labels_of(media[0], splits_present)
    self._check_other_labels(label)
    num_classes = label["train"].shape[1]
    widths = {
      tag: checks.feature_width(
        checks.mat_shape(self._path("train", tag), _stem("train", tag)), self._where("train", tag)
      )
      for tag in media
    }
    splits = {}
    for split in splits_present:
      features = {}
      for tag in media:
        key = _stem(split, tag)
        array = checks.load_mat(self._path(split, tag), [key])[key]
        features[MEDIA[tag]] = checks.features(array, self._where(split, tag), widths[tag])
      counts = {self._where(split, tag): len(features[MEDIA[tag]]) for tag in media}
      counts[self._where(split, media[0], True)] = len(label[split])
      num_examples = checks.same_count(counts)
      checks.nonempty(num_examples, str(self._path(split, media[0])), split)
      splits[split] = Split(
        features, label[split], row_ids(num_examples), class_name_range(num_classes)
      )
    if "validation" not in splits:
      splits["train"], splits["validation"] = carve_validation(
        splits["train"], VALIDATION_FRACTION, str(self._path("train", media[0], True))
      )
    return splits
