"""`wikipedia`: the Wikipedia image-text benchmark (Rasiwasia et al., ACM MM 2010).

Shallow features of the original release: 128-d SIFT bag-of-visual-words for images and 10-d
LDA topic proportions for texts, 10 classes, one label per pair.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mscross.data import base, checks, raw
from mscross.data.archive import CATEGORIES_FILE, TEST_LIST, TRAIN_LIST, read_list
from mscross.data.splits import Split, carve_validation, subset
from mscross.errors import DataError

IMAGE_DIM = 128
TEXT_DIM = 10
NUM_CLASSES = 10
MODALITIES = ("image", "text")
VALIDATION_FRACTION = 0.1

FEATURES_FILE = "raw_features.mat"
FILES = (FEATURES_FILE, TRAIN_LIST, TEST_LIST, CATEGORIES_FILE)
TEXTS_DIR = "texts"


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

  With `data.extractors.text=<extractor>` (e.g. minilm, wordllama) the text features are that
  extractor's, of the raw article sections in texts/<text id>.xml (the image features stay SIFT:
  the release's images are not available); a pair whose text cannot be read is skipped.

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
  RAW_MODALITIES: ClassVar[dict[str, str]] = {"text": "text"}
  RAW_NOTE = " (its images are not in the release: the image features are SIFT)"
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
    files = checks.require_files(Path(source_dir), FILES)
    texts = Path(source_dir) / TEXTS_DIR
    return files + (sorted(texts.glob("*.xml")) if texts.is_dir() else [])

  @classmethod
  def raw_items(cls, source_dir: Path | None) -> dict[str, dict[str, Path | str]]:
    # The texts only: the release's images are not available.
    texts = Path(source_dir) / TEXTS_DIR
    if not texts.is_dir():
      return {}
    items = {}
    for path in (Path(source_dir) / TRAIN_LIST, Path(source_dir) / TEST_LIST):
      for pair_id in read_list(path)[0]:
        items[pair_id] = {"text": texts / f"{pair_id.split('/')[0]}.xml"}
    return items

  def read_source(self) -> dict[str, Split]:
    paths = checks.require_files(self._source_dir, FILES)
    features_path, train_path, test_path, categories_path = paths
    class_names = _read_categories(categories_path)
    arrays = checks.load_mat(features_path, ["I_tr", "T_tr", "I_te", "T_te"])
    official, lines = {}, {}
    for split, list_path, suffix in (("train", train_path, "tr"), ("test", test_path, "te")):
      image_where = f"{features_path} [I_{suffix}]"
      text_where = f"{features_path} [T_{suffix}]"
      image = checks.features(arrays[f"I_{suffix}"], image_where, IMAGE_DIM)
      text = checks.features(arrays[f"T_{suffix}"], text_where, TEXT_DIM)
      ids, classes, lines[split] = read_list(list_path)
      checks.same_count({image_where: len(image), text_where: len(text), str(list_path): len(ids)})
      checks.nonempty(len(ids), str(list_path), split)
      label = checks.one_hot(
        checks.class_indices(classes, 1, NUM_CLASSES, str(list_path)), NUM_CLASSES
      )
      official[split] = Split(
        {"image": image, "text": text}, label, np.asarray(ids, dtype=str), class_names
      )

    if "text" in self.extracted_modalities(self._options):
      where = {
        split: [f"{path}:{n}" for n in lines[split]]
        for split, path in (("train", train_path), ("test", test_path))
      }
      official = self._encode_texts(official, where)
    train, validation = carve_validation(official["train"], VALIDATION_FRACTION, str(train_path))
    return {"train": train, "validation": validation, "test": official["test"]}

  def _encode_texts(
    self, official: dict[str, Split], where: dict[str, list[str]]
  ) -> dict[str, Split]:
    """The splits with their text features replaced by the text extractor's, of texts/; `where`
    gives each row's "<list file>:<line>"."""
    texts = self._source_dir / TEXTS_DIR
    if not texts.is_dir():
      raise DataError(f"{texts}: no such folder; data.extractors.text needs the raw article texts")
    pairs = [
      raw.Pair(split, pair_id, (), {"text": texts / f"{pair_id.split('/')[0]}.xml"}, line)
      for split, data in official.items()
      for pair_id, line in zip(data.ids, where[split], strict=True)
    ]
    kept, features = self.extract_raw(pairs)
    out = {}
    for split, data in official.items():
      row_of = {pair_id: row for row, pair_id in enumerate(data.ids)}
      own = [i for i, pair in enumerate(kept) if pair.split == split]
      rows = np.asarray([row_of[kept[i].id] for i in own], dtype=np.int64)
      checks.nonempty(len(rows), str(texts), split)
      kept_rows = subset(data, rows)
      out[split] = Split(
        {"image": kept_rows.features["image"], "text": features["text"][own]},
        kept_rows.label,
        kept_rows.ids,
        kept_rows.class_names,
      )
    return out
