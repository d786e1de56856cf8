"""`wikipedia`: the Wikipedia image-text benchmark (Rasiwasia et al., ACM MM 2010).

Shallow features of the original release: 128-d SIFT bag-of-visual-words for images and 10-d
LDA topic proportions for texts, 10 classes, one label per pair.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mscross.data import base, checks
from mscross.errors import DataError

IMAGE_DIM = 128
TEXT_DIM = 10
NUM_CLASSES = 10
MODALITIES = ("image", "text")
VALIDATION_FRACTION = 0.1

FEATURES_FILE = "raw_features.mat"
TRAIN_LIST = "trainset_txt_img_cat.list"
TEST_LIST = "testset_txt_img_cat.list"
CATEGORIES_FILE = "categories.list"
FILES = (FEATURES_FILE, TRAIN_LIST, TEST_LIST, CATEGORIES_FILE)


def _read_list(path: Path) -> tuple[list[str], np.ndarray]:
  """Reads a `<text id>\\t<image id>\\t<class>` file into ids "<text id>/<image id>" and classes.

  Classes come back as float with NaN for an empty class field, for `checks.class_indices`.
  """
  ids, classes = [], []
  for number, line in enumerate(checks.read_lines(path), start=1):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) != 3:
      raise DataError(
        f"{path}: line {number} has {len(fields)} tab-separated fields, "
        "expected 3 (text id, image id, class)"
      )
    text_id, image_id, label = (field.strip() for field in fields)
    try:
      classes.append(float(label) if label else np.nan)
    except ValueError as exc:
      raise DataError(f"{path}: line {number}: class {label!r} is not a number") from exc
    ids.append(f"{text_id}/{image_id}")
  return ids, np.asarray(classes, dtype=np.float64)


def _read_categories(path: Path) -> tuple[str, ...]:
  names = tuple(line.strip() for line in checks.read_lines(path) if line.strip())
  if len(names) != NUM_CLASSES:
    raise DataError(f"{path}: {len(names)} class names, expected {NUM_CLASSES}")
  return names


class Wikipedia(base.PairedBuilder, skip_registration=True):
  """Wikipedia image-text pairs: modality `image` (128-d SIFT BoVW), `text` (10-d LDA), 10 classes.

  Reads <data_dir>/wikipedia/: raw_features.mat (variables I_tr, T_tr, I_te, T_te),
  trainset_txt_img_cat.list and testset_txt_img_cat.list (`<text id>\t<image id>\t<class 1-10>`
  per line, rows aligned with the features) and categories.list (the class names).

  Official test split (693 pairs) is `test`; `validation` is a seeded (seed 0),
  class-stratified 10% of the official train split (2,173 pairs), the rest is `train`.
  """

  NAME = "wikipedia"
  SOURCE_SUBDIR = "wikipedia"
  # BoVW histograms and topic proportions are already on a common scale; the Hellinger map on
  # the histograms beat z-scoring on validation.
  PRESET: ClassVar[dict[str, Any]] = {
    "data.standardize": False,
    "data.powers": {"image": 0.5},
    "optim.lr": 3e-4,
    "train.batch_size": 64,
    "train.steps": 1500,
    "train.eval_every": 100,
    "train.checkpoint_every": 300,
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Put raw_features.mat, trainset_txt_img_cat.list, testset_txt_img_cat.list and "
    "categories.list (from the Wikipedia dataset release, e.g. the repository "
    "BMC-SDNU/Cross-Modal-Retrieval, JFSSL/wikipedia_info/) in <data_dir>/wikipedia/."
  )

  @classmethod
  def modalities_for(cls, config_name: str | None) -> tuple[str, ...]:
    del config_name
    return MODALITIES

  @classmethod
  def source_files(cls, source_dir: Path | None, config_name: str | None) -> list[Path]:
    del config_name
    return checks.require_files(Path(source_dir), FILES)

  def read_source(self) -> dict[str, base.Split]:
    paths = self.source_files(self._source_dir, None)
    features_path, train_path, test_path, categories_path = paths
    class_names = _read_categories(categories_path)
    arrays = checks.load_mat(features_path, ["I_tr", "T_tr", "I_te", "T_te"])
    official = {}
    for split, list_path, suffix in (("train", train_path, "tr"), ("test", test_path, "te")):
      image_where = f"{features_path} [I_{suffix}]"
      text_where = f"{features_path} [T_{suffix}]"
      image = checks.features(arrays[f"I_{suffix}"], image_where, IMAGE_DIM)
      text = checks.features(arrays[f"T_{suffix}"], text_where, TEXT_DIM)
      ids, classes = _read_list(list_path)
      checks.same_count({image_where: len(image), text_where: len(text), str(list_path): len(ids)})
      checks.nonempty(len(ids), str(list_path), split)
      label = checks.one_hot(
        checks.class_indices(classes, 1, NUM_CLASSES, str(list_path)), NUM_CLASSES
      )
      official[split] = base.Split(
        {"image": image, "text": text}, label, np.asarray(ids, dtype=str), class_names
      )

    train, validation = base.carve_validation(
      official["train"], VALIDATION_FRACTION, str(train_path)
    )
    return {"train": train, "validation": validation, "test": official["test"]}
