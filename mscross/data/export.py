"""A split's arrays as plain files: the two export layouts.

`write_features`: a dataset's prepared features, in the layout the `features` dataset reads back
(what `extract.py` does):

  <out>/manifest.json            {"modalities": [...], "class_names": [...]}
  <out>/<split>/<modality>.npy   float32 [N, d] per modality, for train, validation and test
  <out>/<split>/labels.npy       class indices [N] (single-label data) or 0/1 rows [N, C]
  <out>/<split>/ids.txt          the pair ids, one a line, in row order
  <out>/data_problems.tsv        raw items skipped or converted (when there were any)

`write_embeddings`: one split's embeddings by a trained model (`eval.py --export`):

  <out>/emb_<modality>.npy       float32 [N, e] per modality, rows in the split's order
  <out>/ids.npy                  the pair ids
  <out>/labels.npy               0/1 rows [N, C] (labelled data)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mscross import atomic
from mscross.data import raw
from mscross.data.splits import Split


def write_features(
  splits: dict[str, Split], problems: list[raw.Problem], out: str | os.PathLike
) -> dict:
  """Writes `splits` (every split of one dataset) and `problems` under `out`; returns a summary
  {split: rows, "dims": {modality: d}, "skipped": pairs skipped}."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  train = splits["train"]
  single = train.label is not None and all(
    np.all(s.label.sum(axis=1) == 1) for s in splits.values()
  )
  for name, split in splits.items():
    folder = out / name
    folder.mkdir(exist_ok=True)
    arrays = dict(split.features)
    if split.label is not None:
      arrays["labels"] = np.argmax(split.label, axis=1) if single else split.label
    for key, array in arrays.items():
      with atomic.replacing(folder / f"{key}.npy", suffix=".npy") as tmp:
        np.save(tmp, array)
    atomic.write_lines(folder / "ids.txt", [f"{i}\n" for i in split.ids])
  manifest = {"modalities": list(train.modalities)}
  if train.label is not None:
    manifest["class_names"] = list(train.class_names)
  atomic.write_text(out / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False))
  table = out / "data_problems.tsv"
  if problems:
    atomic.write_text(table, raw.problems_tsv(problems))
  elif table.exists():
    table.unlink()
  summary: dict = {name: len(split) for name, split in splits.items()}
  summary["dims"] = {m: int(a.shape[1]) for m, a in train.features.items()}
  summary["skipped"] = sum(p.action == "skipped" for p in problems)
  return summary


def write_embeddings(
  out: str | os.PathLike, embeddings: dict[str, np.ndarray], split: Split
) -> str:
  """Writes `embeddings` ({modality: [N, e]}) of `split`, with its ids and labels, under `out`."""
  os.makedirs(out, exist_ok=True)
  for m, emb in embeddings.items():
    np.save(os.path.join(out, f"emb_{m}.npy"), emb)
  np.save(os.path.join(out, "ids.npy"), split.ids)
  if split.label is not None:
    np.save(os.path.join(out, "labels.npy"), split.label)
  return os.fspath(out)
