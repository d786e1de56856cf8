"""What a report holds, typed, and how it is built from a split's embeddings: every number from
`mscross.metrics`. `build` makes the `Report`; `Report.to_json` is report.json; the pages and
plots (`report_pages`, `report_plots`) render the same record.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from mscross import metrics
from mscross.errors import DataError

TOP_RESULTS = 10
ARROW = "\u2192"


class SplitLike(Protocol):
  """The attributes of `mscross.data.Split` that the report reads."""

  label: np.ndarray | None  # float32 [N, C] multi-hot, or None for unlabelled data
  ids: np.ndarray  # str [N]
  class_names: tuple[str, ...]  # C names, empty when unlabelled
  modalities: tuple[str, ...]  # K >= 2 modality names


@dataclasses.dataclass(frozen=True)
class Direction:
  key: str  # "i2t", "a2b", ...
  query: str
  gallery: str
  name: str  # "image → text"


@dataclasses.dataclass
class Result:
  """One of a shown query's top results."""

  rank: int
  index: int
  id: str
  classes: list[str] | None  # None for unlabelled data
  similarity: float
  hit: bool
  is_pair: bool
  item: dict | None = None  # the raw item's entry (`report_items`), where there are raw items


@dataclasses.dataclass
class Query:
  """A shown query of one direction and its top results."""

  direction: str
  index: int
  id: str
  classes: list[str] | None
  results: list[Result]
  item: dict | None = None


@dataclasses.dataclass
class Curve:
  """One direction's curves (labelled data)."""

  recall: np.ndarray
  precision: np.ndarray
  eleven_point: np.ndarray
  k: np.ndarray
  precision_at_k: np.ndarray
  map: float


@dataclasses.dataclass
class Report:
  title: str
  modalities: list[str]
  num_items: int
  labelled: bool
  directions: list[Direction]
  metrics: dict  # `metrics.retrieval_metrics`, as given
  game: dict | None  # {"chance", "last": {...}, "best": {...}}; None without an adversary
  examples: list[Query]
  curves: dict[str, Curve] = dataclasses.field(default_factory=dict)  # labelled only
  per_class_ap: list[dict] = dataclasses.field(default_factory=list)  # labelled only
  overall: dict = dataclasses.field(default_factory=dict)  # labelled only: mAP per direction

  def names(self) -> dict[str, str]:
    return {d.key: d.name for d in self.directions}

  def to_json(self) -> dict:
    """report.json: plain JSON types, NaN as null."""
    out = {
      "title": self.title,
      "modalities": self.modalities,
      "num_items": self.num_items,
      "labelled": self.labelled,
      "directions": [dataclasses.asdict(d) for d in self.directions],
      "metrics": self.metrics,
      "game": self.game,
    }
    if self.labelled:
      keys = [d.key for d in self.directions]
      first = self.curves[keys[0]]
      out["pr_curve"] = {
        "definition": "mean over queries of interpolated precision max_{k: recall(k) >= r} P(k)",
        "recall": first.recall,
        **{k: self.curves[k].precision for k in keys},
      }
      out["pr_11_point"] = {
        "recall": first.recall[:: metrics.ELEVEN_POINT_STRIDE],
        **{k: self.curves[k].eleven_point for k in keys},
      }
      out["precision_at_k"] = {"k": first.k, **{k: self.curves[k].precision_at_k for k in keys}}
      out["per_class_ap"] = self.per_class_ap
      out["overall"] = self.overall
    out["examples"] = [_query_json(q) for q in self.examples]
    return _json_ready(out)


def _query_json(q: Query) -> dict:
  def strip(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if not (k in ("classes", "item") and v is None)}

  out = strip({k: v for k, v in dataclasses.asdict(q).items() if k != "results"})
  out["results"] = [strip(dataclasses.asdict(r)) for r in q.results]
  return out


def _json_ready(x):
  if isinstance(x, dict):
    return {k: _json_ready(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_json_ready(v) for v in x]
  if isinstance(x, np.ndarray):
    return _json_ready(x.tolist())
  if isinstance(x, np.generic):
    return _json_ready(x.item())
  if isinstance(x, float) and not math.isfinite(x):
    return None  # strict JSON has no NaN
  return x


def checked_embeddings(split: SplitLike, embeddings: Mapping[str, np.ndarray]) -> dict:
  """modality -> float32 [N, d] in the split's modality order; DataError on any mismatch."""
  modalities = tuple(split.modalities)
  if set(embeddings) != set(modalities):
    raise DataError(
      f"embeddings are for modalities {sorted(embeddings)}, the split has {list(modalities)}"
    )
  num = len(split.ids)
  out = {}
  for m in modalities:
    x = np.asarray(embeddings[m], np.float32)
    if x.ndim != 2 or x.shape[0] != num:
      raise DataError(f"{m} embeddings must be [N, d] with N = {num} items, got shape {x.shape}")
    out[m] = x
  return out


def _example_queries(num_items: int, num_queries: int) -> np.ndarray:
  """Evenly spaced query indices, the first and the last included: deterministic, and spread over
  the split (whose order usually follows the source, often grouped by class)."""
  n = min(num_queries, num_items)
  if n <= 0:
    return np.zeros(0, np.int64)
  return np.unique(np.linspace(0, num_items - 1, n).round().astype(np.int64))


def _top_results(query_emb, gallery_emb, indices, top: int) -> tuple[np.ndarray, np.ndarray]:
  """Top-`top` gallery indices [n, top] and similarities [n, top] of the queries `indices`,
  ties by lower index as in metrics' P@k."""
  s = np.asarray(metrics.cosine_similarity(query_emb[indices], gallery_emb))
  s = np.where(s == 0, 0.0, s).astype(np.float32)
  order = np.argsort(-s, axis=1, kind="stable")[:, :top]
  return order, np.take_along_axis(s, order, axis=1)


def _class_list(label_row: np.ndarray, class_names) -> list[str]:
  return [str(class_names[c]) for c in np.flatnonzero(label_row > 0)]


def _examples(d: Direction, emb: dict, split: SplitLike, class_names, num_queries: int):
  """The shown queries of one direction and their top results."""
  query_emb, gallery_emb = emb[d.query], emb[d.gallery]
  indices = _example_queries(len(query_emb), num_queries)
  order, sims = _top_results(query_emb, gallery_emb, indices, TOP_RESULTS)
  labelled = split.label is not None
  has = split.label > 0 if labelled else None
  classes = lambda i: _class_list(split.label[i], class_names) if labelled else None
  out = []
  for row, qi in enumerate(indices):
    results = [
      # Paired data: item i of one modality is the partner of item i of every other.
      Result(
        rank=rank,
        index=int(gi),
        id=str(split.ids[gi]),
        classes=classes(gi),
        similarity=float(sim),
        hit=bool((has[qi] & has[gi]).any()) if labelled else bool(gi == qi),
        is_pair=bool(gi == qi),
      )
      for rank, (gi, sim) in enumerate(zip(order[row], sims[row], strict=True), start=1)
    ]
    out.append(Query(d.key, int(qi), str(split.ids[qi]), classes(qi), results))
  return out


def _labelled_parts(report: Report, split, emb, class_names, block_size) -> None:
  """Fills the report's curves, per-class AP and overall mAP (labelled split)."""
  per_class = {}
  for d in report.directions:
    q, g = emb[d.query], emb[d.gallery]
    c = metrics.ranking_curves(q, g, split.label, split.label, block_size=block_size)
    report.curves[d.key] = Curve(
      recall=c["recall"],
      precision=c["precision"],
      eleven_point=c["precision"][:: metrics.ELEVEN_POINT_STRIDE],
      k=c["k"],
      precision_at_k=c["precision_at_k"],
      map=report.metrics.get(f"{d.key}_map", float("nan")),
    )
    per_class[d.key] = metrics.per_class_ap(q, g, split.label, split.label, block_size=block_size)
  for ci, name in enumerate(class_names):
    row = {"class": str(name)}
    for d in report.directions:
      row[f"{d.key}_queries"] = int(per_class[d.key][1][ci])
    aps = [float(per_class[d.key][0][ci]) for d in report.directions]
    for d, ap in zip(report.directions, aps, strict=True):
      row[f"{d.key}_map"] = ap
    row["avg_map"] = float(np.mean(aps))
    report.per_class_ap.append(row)
  keys = [d.key for d in report.directions]
  report.overall = {
    **{f"{k}_map": report.metrics.get(f"{k}_map", float("nan")) for k in keys},
    "avg_map": report.metrics.get("avg_map", float("nan")),
  }


def build(
  *,
  title: str,
  split: SplitLike,
  embeddings: Mapping[str, np.ndarray],
  summary: dict,
  num_queries: int,
  block_size: int | None,
  game: Mapping[str, Mapping[str, object]] | None,
) -> Report:
  """The report of one split's retrieval embeddings (see `report.write_report`)."""
  emb = checked_embeddings(split, embeddings)
  directions = [
    Direction(key, q, g, f"{q} {ARROW} {g}")
    for key, q, g in metrics.direction_names(split.modalities)
  ]
  missing = [d.key for d in directions if f"{d.key}_num_queries" not in summary]
  if missing:
    raise DataError(f"the metrics summary has no results for the directions {missing}")
  labelled = split.label is not None
  report = Report(
    title=str(title),
    modalities=list(split.modalities),
    num_items=len(split.ids),
    labelled=labelled,
    directions=directions,
    metrics=dict(summary),
    game=(
      {"chance": 1.0 / len(split.modalities), **{k: dict(v) for k, v in game.items()}}
      if game
      else None
    ),
    examples=[],
  )
  class_names = ()
  if labelled:
    num_classes = np.shape(split.label)[1]
    class_names = tuple(split.class_names)
    if len(class_names) != num_classes:
      # Classes without names (or a mismatched list) are shown by their column.
      class_names = tuple(str(c) for c in range(num_classes))
    _labelled_parts(report, split, emb, class_names, block_size)
  report.examples = [
    q for d in directions for q in _examples(d, emb, split, class_names, num_queries)
  ]
  return report
