"""Raw items (image files, texts) to features: the shared part of the raw-data builders.

A raw dataset lists pairs (`Pair`: split, id, classes, and per modality an image file, a text
file or an inline text). `extract` runs the chosen extractor of each modality over every listed
item and returns the features of the pairs whose items could all be read. An unreadable item
(a missing or corrupt image, an empty or non-UTF-8 text, an id listed twice) is a `Problem`
naming its file and reason: by default its pair is skipped and the problem listed (in the
prepared data's metadata, from which a training run copies it into its workdir); with
`bad_input="stop"` the first one stops the preparation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mscross import atomic, extractors
from mscross.errors import ConfigError, DataError

BAD_INPUT_CHOICES = ("skip", "stop")
# Folded into the key of every cached encoding and prepared dataset: bump when the reading of
# items, or what is recorded of an encoding, changes.
EXTRACTED_VERSION = "2"
# The share of a text extractor's tokens unknown to its vocabulary from which the texts are named
# as poorly covered (MiniLM on Chinese captions: 61%; on English articles: 0%).
UNKNOWN_WARNING = 0.25
PROBLEM_FIELDS = ("split", "id", "modality", "file", "reason", "action")
_XML_TEXT = re.compile(r"<text>(.*?)</text>", re.DOTALL)
_XML_TAG = re.compile(r"<[^>]+>")


@dataclasses.dataclass(frozen=True)
class Options:
  """How a dataset's raw items become features.

  Attributes:
    extractors: modality -> extractor name; a modality left out uses the dataset's default.
    bad_input: "skip" (skip and list pairs with an unreadable item) or "stop".
    batch_size: items per extractor call.
  """

  extractors: Mapping[str, str] = dataclasses.field(default_factory=dict)
  bad_input: str = "skip"
  batch_size: int = 32

  def __post_init__(self):
    object.__setattr__(self, "extractors", {k: v for k, v in dict(self.extractors).items() if v})
    if self.bad_input not in BAD_INPUT_CHOICES:
      raise ConfigError(
        f"data.bad_input={self.bad_input!r}; choose one of {', '.join(BAD_INPUT_CHOICES)}"
      )
    if self.batch_size < 1:
      raise ConfigError(f"data.extract_batch={self.batch_size}; must be at least 1")


@dataclasses.dataclass(frozen=True)
class Pair:
  """One listed example of a raw dataset.

  Attributes:
    split: "train", "validation" or "test".
    id: the example's id, unique in the dataset.
    classes: 0-based class indices (empty when unlabelled).
    items: modality -> an image file (Path), a text file (Path) or an inline text (str).
    where: where the pair is listed ("<file>:<line>"), for messages.
  """

  split: str
  id: str
  classes: tuple[int, ...]
  items: Mapping[str, Path | str]
  where: str


@dataclasses.dataclass(frozen=True)
class Problem:
  split: str
  id: str
  modality: str
  file: str
  reason: str
  action: str

  def line(self) -> str:
    return f"{self.split} pair {self.id!r} ({self.modality}): {self.reason} [{self.action}]"


def read_text(item: Path | str) -> str:
  """The text of an inline text or a text file (UTF-8; for .xml files the <text> element, as in
  the Wikipedia archive, whose files are often not well-formed XML); BadInput if unusable."""
  if isinstance(item, str):
    text, where = item, "inline text"
  else:
    if not item.is_file():
      raise extractors.BadInput(f"{item}: no such text file")
    try:
      text = item.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
      raise extractors.BadInput(
        f"{item}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r})"
      ) from exc
    where = str(item)
    if item.suffix.lower() == ".xml":
      found = _XML_TEXT.search(text)
      text = _XML_TAG.sub(" ", found.group(1) if found else text)
  text = " ".join(text.split())
  if not text:
    raise extractors.BadInput(f"{where}: empty text")
  return text


def extractor_for(
  modality: str, kind: str, options: Options, defaults: Mapping[str, str]
) -> extractors.Extractor:
  """The extractor of one raw modality: the configured one, else the dataset's default."""
  name = options.extractors.get(modality) or defaults.get(modality)
  if not name:
    raise ConfigError(f"no extractor for modality {modality!r}: set data.extractors.{modality}")
  return extractors.get(name, kind)


def check_extractors(
  options: Options, raw: Mapping[str, str], dataset: str, note: str = ""
) -> None:
  """ConfigError when `data.extractors` names a modality the dataset has no raw items for."""
  for modality in options.extractors:
    if modality not in raw:
      has = f"raw {', '.join(raw)} only" if raw else "no raw items"
      raise ConfigError(f"data.extractors.{modality}: dataset {dataset!r} has {has}{note}")


def fingerprint(options: Options, raw: Mapping[str, str], defaults: Mapping[str, str]) -> dict:
  """The part of a prepared dataset's cache key that the extractors make: each raw modality's
  extractor and its weights' fingerprint, and the bad-input policy."""
  key: dict[str, Any] = {"bad_input": options.bad_input, "extracted": EXTRACTED_VERSION}
  for modality, kind in raw.items():
    extractor = extractor_for(modality, kind, options, defaults)
    key[modality] = [extractor.name, extractor.load().fingerprint]
  return key


def duplicates(pairs: Sequence[Pair]) -> tuple[list[Pair], list[Problem]]:
  """The pairs with each id's first listing kept, and a problem for every later listing."""
  seen: dict[str, Pair] = {}
  kept, problems = [], []
  for pair in pairs:
    if pair.id in seen:
      problems.append(
        Problem(
          pair.split,
          pair.id,
          "id",
          pair.where,
          f"{pair.where}: id {pair.id!r} listed again (first at {seen[pair.id].where})",
          "skipped",
        )
      )
      continue
    seen[pair.id] = pair
    kept.append(pair)
  return kept, problems


def _reader(kind: str, items: Sequence[Path | str], notes: dict[int, str]):
  """row -> the raw input of item `row`; image mode conversions are noted in `notes`."""

  def read(row: int):
    item = items[row]
    if kind == "text":
      return read_text(item)
    if not isinstance(item, Path):
      raise extractors.BadInput(f"{item!r}: an image must be a file path")
    image, note = extractors.images.open_rgb(item)
    if note:
      notes[row] = note
    return image

  return read


def extract_items(
  extractor_name: str, items: Sequence[Path | str], *, batch_size: int = 32, progress: bool = False
) -> np.ndarray:
  """float32 [N, dim] features of raw items (image files, or texts / text files) by the named
  extractor; DataError naming the first item that cannot be read."""
  extractor = extractors.get(extractor_name)
  items = [Path(item) if extractor.kind == "image" else item for item in items]
  features, failures, _ = extractors.extract(
    extractor.load(),
    list(range(len(items))),
    _reader(extractor.kind, items, {}),
    batch_size=batch_size,
    desc=extractor.name,
    progress=progress,
  )
  if failures:
    row = min(failures)
    raise DataError(f"item {row}: {failures[row]} ({len(failures)} unreadable in all)")
  return features


def _items_key(
  extractor: extractors.Extractor, fingerprint: str, items: Sequence[Path | str]
) -> str:
  digest = hashlib.sha256(f"{EXTRACTED_VERSION}|{extractor.name}|{fingerprint}".encode())
  for item in items:
    if isinstance(item, Path):
      try:
        info = item.stat()
        digest.update(f"|f:{item}:{info.st_size}:{info.st_mtime_ns}".encode())
      except OSError:
        digest.update(f"|f:{item}:-".encode())
    else:
      digest.update(b"|t:" + hashlib.sha256(item.encode()).digest())
  return digest.hexdigest()[:24]


def _extracted(
  extractor: extractors.Extractor,
  items: Sequence[Path | str],
  options: Options,
  desc: str,
  cache_dir: Path | None,
  pairs: Sequence[Pair],
) -> tuple[np.ndarray, dict[int, str], dict[int, str], tuple[int, int]]:
  """(features with NaN rows, {row: failure}, {row: conversion note}, (tokens unknown to the
  extractor, tokens)) of `items`, from the cache when these items were extracted by this extractor
  before."""
  model = extractor.load()
  path = None
  if cache_dir is not None:
    path = cache_dir / f"{extractor.name}-{_items_key(extractor, model.fingerprint, items)}.npz"
    if path.is_file():
      with np.load(path, allow_pickle=False) as f:
        failures = dict(zip(f["failed_rows"].tolist(), f["failed"].tolist(), strict=True))
        notes = dict(zip(f["noted_rows"].tolist(), f["noted"].tolist(), strict=True))
        print(
          f"{desc}: {len(items):,} items extracted by {extractor.name} earlier", file=sys.stderr
        )
        return f["features"], failures, notes, tuple(f["unknown_tokens"].tolist())
  kind = extractor.kind
  notes: dict[int, str] = {}
  if options.bad_input == "stop":
    # Read every item before encoding any, so that the first unreadable one stops at once.
    read = _reader(kind, items, {})
    for row in range(len(items)):
      try:
        read(row)
      except extractors.BadInput as exc:
        raise DataError(
          f"{exc} (pair {pairs[row].id!r}, listed at {pairs[row].where}); "
          "set data.bad_input=skip to skip such pairs"
        ) from exc
  print(f"{desc}: encoding {len(items):,} items with {extractor.name}", file=sys.stderr)
  array, failures, unknown = extractors.extract(
    model,
    list(range(len(items))),
    _reader(kind, items, notes),
    batch_size=options.batch_size,
    desc=f"{desc} ({extractor.name})",
  )
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path, suffix=".npz") as tmp:
      np.savez(
        tmp,
        features=array,
        failed_rows=np.asarray(sorted(failures), np.int64),
        failed=np.asarray([failures[r] for r in sorted(failures)], dtype=str),
        noted_rows=np.asarray(sorted(notes), np.int64),
        noted=np.asarray([notes[r] for r in sorted(notes)], dtype=str),
        unknown_tokens=np.asarray(unknown, np.int64),
      )
  return array, failures, notes, unknown


def extract(
  pairs: Sequence[Pair],
  raw: Mapping[str, str],
  options: Options,
  defaults: Mapping[str, str],
  dataset: str,
  cache_dir: Path | None = None,
) -> tuple[list[Pair], dict[str, np.ndarray], list[Problem]]:
  """Encodes the raw modalities of every pair.

  Args:
    pairs: the listed pairs, ids unique (see `duplicates`).
    raw: modality -> kind ("image" or "text") of each modality extracted here.
    options: the extractors and the bad-input policy.
    defaults: modality -> the dataset's default extractor name.
    dataset: the dataset's name, for messages.
    cache_dir: where each modality's extracted items are kept, keyed by the extractor (with its
      weights) and the items (files by path, size and modification time; texts by content);
      None: no such cache.

  Returns:
    (pairs kept, modality -> float32 [kept, dim] features in the order of the kept pairs,
    problems: every unreadable item, and every image converted to RGB).

  Raises:
    DataError: an item is unreadable and `options.bad_input` is "stop", or no pair is left.
  """
  problems: list[Problem] = []
  features: dict[str, np.ndarray] = {}
  bad = np.zeros(len(pairs), dtype=bool)
  for modality, kind in raw.items():
    extractor = extractor_for(modality, kind, options, defaults)
    items = [pair.items[modality] for pair in pairs]
    array, failures, notes, unknown = _extracted(
      extractor, items, options, f"{dataset} {modality}", cache_dir, pairs
    )
    covered = unknown_tokens_problem(extractor, modality, *unknown)
    if covered is not None:
      print(f"{dataset}: {covered.reason}", file=sys.stderr)
      problems.append(covered)
    if failures and options.bad_input == "stop":
      row = min(failures)
      raise DataError(
        f"{dataset}: {failures[row]} (pair {pairs[row].id!r}, listed at {pairs[row].where}); "
        "set data.bad_input=skip to skip such pairs"
      )
    for row, reason in sorted(failures.items()):
      bad[row] = True
      pair = pairs[row]
      problems.append(
        Problem(pair.split, pair.id, modality, str(pair.items[modality]), reason, "skipped")
      )
    for row, note in sorted(notes.items()):
      pair = pairs[row]
      problems.append(
        Problem(pair.split, pair.id, modality, str(pair.items[modality]), note, "converted")
      )
    features[modality] = array
  kept_rows = np.flatnonzero(~bad)
  kept = [pairs[i] for i in kept_rows]
  if not kept:
    raise DataError(f"{dataset}: no pair is left after skipping unreadable items")
  return kept, {m: a[kept_rows] for m, a in features.items()}, problems


def unknown_tokens_problem(
  extractor: extractors.Extractor, modality: str, unknown: int, tokens: int
) -> Problem | None:
  """A warning (a `Problem` of the whole modality) when UNKNOWN_WARNING or more of the tokens
  of a modality's texts are unknown to its extractor's vocabulary, naming the extractors to try."""
  if not tokens or unknown / tokens < UNKNOWN_WARNING:
    return None
  others = [name for name in extractors.names(extractor.kind) if name != extractor.name]
  instead = f"; try data.extractors.{modality}={others[0]}" if others else ""
  if len(others) > 1:
    instead += f" (or {', '.join(others[1:])})"
  reason = (
    f"{unknown / tokens:.0%} of the {tokens:,} tokens of the {modality!r} texts are unknown to "
    f"{extractor.name}'s vocabulary, which does not cover their language{instead}"
  )
  return Problem("-", "-", modality, "-", reason, "warned")


def report_skipped(dataset: str, listed: int, kept: int) -> None:
  """The console line saying how many listed pairs were skipped, if any."""
  if kept < listed:
    print(
      f"{dataset}: skipped {listed - kept} of {listed:,} pairs with an unreadable item "
      "(data.bad_input=stop stops instead); each is listed with its reason in a training "
      "run's workdir (data_problems.tsv) and by mscross.data.load_problems",
      file=sys.stderr,
    )


def problems_tsv(problems: Iterable[Problem]) -> str:
  """Problems as a tab-separated table with a header row (the workdir's data_problems.tsv)."""
  rows = [PROBLEM_FIELDS] + [
    tuple(" ".join(str(getattr(p, f)).split()) for f in PROBLEM_FIELDS) for p in problems
  ]
  return "".join("\t".join(row) + "\n" for row in rows)


def problem_rows(problems: Iterable[Problem]) -> list[list[str]]:
  """Problems as rows of PROBLEM_FIELDS (JSON-friendly, for a prepared dataset's metadata)."""
  return [[getattr(p, f) for f in PROBLEM_FIELDS] for p in problems]
