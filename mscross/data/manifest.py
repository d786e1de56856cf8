"""`manifest`: raw image-text pairs listed in a CSV or JSON-lines file of your own, extracted into
features by pretrained extractors (`data.extractors`).

The data directory holds `manifest.csv` (a header row) or `manifest.jsonl` (one JSON object a
line) with, per pair:

  image       the image file, relative to the data directory (or absolute)
  text        the text itself, or
  text_path   a UTF-8 text file holding it, relative to the data directory (or absolute)
  label       optional: the pair's class name (all rows labelled, or none)
  split       optional: train, validation or test (all rows, or none)
  group       optional: pairs of one group (the same event, the same photo shoot) are never
              split apart: a drawn split keeps each group whole, and given splits may not
              part one (all rows, or none)
  id          optional: a unique id (default: the row number, from 1)

For example (manifest.csv):

  image,text,label,split
  photos/001.jpg,A red fox crossing a snowy field,animals,train
  photos/002.jpg,The harbour at dawn,places,test
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from mscross.data import checks, image_text, raw
from mscross.data.splits import SPLITS, Split, carve_validation, split_60_20_20, subset
from mscross.errors import DataError

NAMES = ("manifest.csv", "manifest.jsonl")
COLUMNS = ("image", "text", "text_path", "label", "split", "group", "id")
VALIDATION_FRACTION = 0.1


def find(folder: Path) -> Path:
  """The manifest file of `folder`; DataError if there is none or more than one."""
  found = [folder / name for name in NAMES if (folder / name).is_file()]
  if not found:
    raise DataError(f"{folder}: no {' or '.join(NAMES)} (one row per image-text pair)")
  if len(found) > 1:
    raise DataError(f"{folder}: both {' and '.join(p.name for p in found)}; keep one")
  return found[0]


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
  """(line number, row) of every non-empty row; DataError for a malformed file."""
  try:
    text = path.read_bytes().decode("utf-8-sig")
  except UnicodeDecodeError as exc:
    raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
  if path.suffix == ".jsonl":
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{number}: not a JSON object ({exc.msg})") from exc
      if not isinstance(row, dict):
        raise DataError(f"{path}:{number}: not a JSON object")
      rows.append((number, row))
    return rows
  reader = csv.DictReader(text.splitlines())
  if not reader.fieldnames:
    raise DataError(f"{path}: empty; the first row names the columns ({', '.join(COLUMNS)})")
  unknown = [c for c in reader.fieldnames if c not in COLUMNS]
  if unknown:
    raise DataError(f"{path}: unknown column {unknown[0]!r}; columns: {', '.join(COLUMNS)}")
  # Line numbers of the file (the header is line 1), for messages.
  return [(number, row) for number, row in enumerate(reader, start=2) if any(row.values())]


def _field(row: dict[str, Any], key: str) -> str:
  value = row.get(key)
  return "" if value is None else str(value).strip()


def read_pairs(folder: Path) -> tuple[Path, tuple[str, ...], list[raw.Pair], bool, dict]:
  """(manifest file, class names, pairs, whether the manifest gives the split, each pair's
  group by pair id: empty without a group column)."""
  path = find(folder)
  rows = _rows(path)
  if not rows:
    raise DataError(f"{path}: no pairs listed")
  keys = set().union(*(row.keys() for _, row in rows))
  if "image" not in keys or not keys & {"text", "text_path"}:
    raise DataError(f"{path}: needs an 'image' column and a 'text' or 'text_path' column")
  for key in ("label", "split", "group"):
    given = [number for number, row in rows if _field(row, key)]
    if given and len(given) != len(rows):
      missing = next(number for number, row in rows if not _field(row, key))
      raise DataError(f"{path}:{missing}: no {key}; give a {key} on every row or on none")
  class_names = tuple(sorted({_field(row, "label") for _, row in rows} - {""}))
  has_split = any(_field(row, "split") for _, row in rows)
  pairs, groups = [], {}
  for number, row in rows:
    where = f"{path}:{number}"
    # Without a split column the split is drawn after encoding: a pair skipped before has none.
    split = _field(row, "split") if has_split else "-"
    if has_split and split not in SPLITS:
      raise DataError(f"{where}: split {split!r}; use one of {', '.join(SPLITS)}")
    image = _field(row, "image")
    text: Path | str = _field(row, "text")
    if _field(row, "text_path"):
      text = folder / _field(row, "text_path")
    label = _field(row, "label")
    pair_id = _field(row, "id") or str(number - (1 if path.suffix == ".csv" else 0))
    if _field(row, "group"):
      groups[pair_id] = _field(row, "group")
    pairs.append(
      raw.Pair(
        split=split,
        id=pair_id,
        classes=(class_names.index(label),) if label else (),
        # An empty image field becomes the folder itself, reported as "no such image file".
        items={"image": folder / image if image else Path(where), "text": text},
        where=where,
      )
    )
  if groups and has_split:
    _check_groups_whole(path, pairs, groups)
  return path, class_names, pairs, has_split, groups


def _check_groups_whole(path: Path, pairs: list[raw.Pair], groups: dict[str, str]) -> None:
  seen: dict[str, raw.Pair] = {}
  for pair in pairs:
    first = seen.setdefault(groups[pair.id], pair)
    if first.split != pair.split:
      raise DataError(
        f"{pair.where}: group {groups[pair.id]!r} is in {pair.split} here and in "
        f"{first.split} at {first.where}; a group's pairs share one split"
      )


class Manifest(image_text.ImageTextBuilder, skip_registration=True):
  """Raw image-text pairs listed in manifest.csv or manifest.jsonl, extracted by pretrained
  extractors.

  Modalities `image` and `text`; the extractors are `data.extractors.image` (default
  efficientnet_lite0) and `data.extractors.text` (default minilm). Labels (class names) are
  optional. With a split column, its train/validation/test (validation, if absent, a seeded
  10% of train); without, a seeded (seed 0) 60/20/20 split, class-stratified when labelled.
  With a group column, drawn splits keep each group whole (and are then not stratified).
  A pair whose image or text cannot be read is skipped and listed (`data.bad_input=stop`
  stops instead).
  """

  NAME = "manifest"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Pass as data_dir a folder holding manifest.csv or manifest.jsonl (columns image, text or "
    "text_path, optional label, split and id) and the files it names."
  )

  @classmethod
  def listed(cls, folder: Path) -> tuple[list[Path], list[raw.Pair]]:
    path, _, pairs, _, _ = read_pairs(folder)
    return [path], pairs

  def read_source(self) -> dict[str, Split]:
    path, class_names, pairs, has_split, groups = read_pairs(self._source_dir)
    kept, features = self.extract_raw(pairs)
    group_of = np.asarray([groups[p.id] for p in kept], dtype=str) if groups else None
    labelled = bool(class_names)
    whole = Split(
      features,
      checks.one_hot(np.asarray([p.classes[0] for p in kept]), len(class_names))
      if labelled
      else None,
      np.asarray([p.id for p in kept], dtype=str),
      class_names,
    )
    if not has_split:
      classes = np.argmax(whole.label, axis=1) if labelled else None
      indices = split_60_20_20(classes, str(path), group_of, size=len(kept))
      # The items kept with a note (an image converted to RGB) now have a split to name.
      split_of = {str(whole.ids[row]): split for split, rows in indices.items() for row in rows}
      self._problems = [
        dataclasses.replace(p, split=split_of[p.id]) if p.action == "converted" else p
        for p in self._problems
      ]
      return {split: subset(whole, rows) for split, rows in indices.items()}
    splits, rows_of = {}, {}
    for split in SPLITS:
      rows = np.asarray([i for i, p in enumerate(kept) if p.split == split], dtype=np.int64)
      rows_of[split] = rows
      if split != "validation":
        checks.nonempty(len(rows), str(path), split)
      if len(rows):
        splits[split] = subset(whole, rows)
    if "validation" not in splits:
      train_groups = None if group_of is None else group_of[rows_of["train"]]
      splits["train"], splits["validation"] = carve_validation(
        splits["train"], VALIDATION_FRACTION, str(path), train_groups
      )
    return splits
