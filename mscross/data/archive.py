"""`archive` and `web_news`: raw image-text pairs in the layout of the Wikipedia dataset's
original archive, extracted into features by pretrained extractors (`data.extractors`).

Layout of the folder:

  categories.list                  the class names, one a line, in class order 1..C
  trainset_txt_img_cat.list        one pair a line: <text id> TAB <image id> TAB <class 1..C>
  testset_txt_img_cat.list         the same for the test split
  images/<class name>/<image id>.jpg   (or .jpeg, .png, ...: any file named <image id>.<ext>)
  texts/<text id>.txt              UTF-8 text (or .xml: the <text> element, as in the archive)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mscross.data import base, checks, image_text, raw
from mscross.data.splits import Split, carve_validation
from mscross.errors import DataError

TRAIN_LIST = "trainset_txt_img_cat.list"
TEST_LIST = "testset_txt_img_cat.list"
CATEGORIES_FILE = "categories.list"
VALIDATION_FRACTION = 0.1
LISTS = {"train": TRAIN_LIST, "test": TEST_LIST}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
TEXT_SUFFIXES = (".txt", ".xml")


def read_list(path: Path) -> tuple[list[str], np.ndarray, list[int]]:
  """Reads a `<text id>\\t<image id>\\t<class>` file into ids "<text id>/<image id>", classes
  and the line number of each.

  Classes come back as float with NaN for an empty class field, for `checks.class_indices`.
  """
  ids, classes, numbers = [], [], []
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
    numbers.append(number)
  return ids, np.asarray(classes, dtype=np.float64), numbers


def _find(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path:
  """`folder/<stem><suffix>` for the first suffix that exists, else the first suffix's path
  (whose absence is then reported as that pair's problem)."""
  for suffix in suffixes:
    candidate = folder / f"{stem}{suffix}"
    if candidate.is_file():
      return candidate
  return folder / f"{stem}{suffixes[0]}"


def listed_pairs(folder: Path) -> tuple[tuple[str, ...], list[raw.Pair]]:
  """(class names, the pairs of both split lists) of an archive folder; DataError if a list or
  the categories file is missing or malformed."""
  categories, train_list, test_list = checks.require_files(
    folder, (CATEGORIES_FILE, TRAIN_LIST, TEST_LIST)
  )
  class_names = tuple(line.strip() for line in checks.read_lines(categories) if line.strip())
  if not class_names:
    raise DataError(f"{categories}: no class names")
  pairs = []
  for split, path in (("train", train_list), ("test", test_list)):
    ids, classes, lines = read_list(path)
    indices = checks.class_indices(classes, 1, len(class_names), str(path))
    checks.nonempty(len(ids), str(path), split)
    for pair_id, index, line in zip(ids, indices, lines, strict=True):
      text_id, image_id = pair_id.split("/", 1)
      pairs.append(
        raw.Pair(
          split=split,
          id=pair_id,
          classes=(int(index),),
          items={
            "image": _find(folder / "images" / class_names[index], image_id, IMAGE_SUFFIXES),
            "text": _find(folder / "texts", text_id, TEXT_SUFFIXES),
          },
          where=f"{path}:{line}",
        )
      )
  return class_names, pairs


class Archive(image_text.ImageTextBuilder, skip_registration=True):
  """Raw image-text pairs in the Wikipedia archive layout, extracted by pretrained extractors.

  Modalities `image` and `text`; the extractors are `data.extractors.image` (default
  efficientnet_lite0) and `data.extractors.text` (default minilm). The lists give train and
  test; `validation` is a seeded (seed 0), class-stratified 10% of train. A pair whose image
  or text cannot be read is skipped and listed (`data.bad_input=stop` stops instead).
  Ids are "<text id>/<image id>".
  """

  NAME = "archive"
  # Deep features of a few thousand pairs: z-scored inputs, a larger batch than the default.
  PRESET: ClassVar[dict[str, Any]] = {
    **base.PairedBuilder.PRESET,
    "train.batch_size": 64,
    "train.steps": 3000,
    "train.eval_every": 100,
    "train.checkpoint_every": 300,
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Pass as data_dir a folder with categories.list, trainset_txt_img_cat.list, "
    "testset_txt_img_cat.list, images/<class name>/<image id>.jpg and texts/<text id>.txt."
  )

  @classmethod
  def listed(cls, folder: Path) -> tuple[list[Path], list[raw.Pair]]:
    _, pairs = listed_pairs(folder)
    return [folder / name for name in (CATEGORIES_FILE, TRAIN_LIST, TEST_LIST)], pairs

  def read_source(self) -> dict[str, Split]:
    class_names, pairs = listed_pairs(self._source_dir)
    kept, features = self.extract_raw(pairs)
    official = {}
    for split in LISTS:
      rows = [i for i, pair in enumerate(kept) if pair.split == split]
      checks.nonempty(len(rows), str(self._source_dir / LISTS[split]), split)
      official[split] = Split(
        {m: array[rows] for m, array in features.items()},
        checks.one_hot(np.asarray([kept[i].classes[0] for i in rows]), len(class_names)),
        np.asarray([kept[i].id for i in rows], dtype=str),
        class_names,
      )
    train, validation = carve_validation(
      official["train"], VALIDATION_FRACTION, str(self._source_dir / TRAIN_LIST)
    )
    return {"train": train, "validation": validation, "test": official["test"]}


class WebNews(Archive, skip_registration=True):
  """Web news photos and their Chinese captions, 10 classes, in the archive layout (`archive`).

  Reads <data_dir>/web_news/. Text extractor by default wordllama, whose vocabulary covers
  Chinese (minilm's is English: most Chinese characters become unknown tokens).
  """

  NAME = "web_news"
  SOURCE_SUBDIR = "web_news"
  DEFAULT_EXTRACTORS: ClassVar[dict[str, str]] = {
    "image": "efficientnet_lite0",
    "text": "wordllama",
  }
