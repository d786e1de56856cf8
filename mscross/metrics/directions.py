"""Retrieval directions between K >= 2 paired modalities, and their metrics.

A direction is an ordered pair of distinct modalities: queries of one rank the items of the
other. Its key names it in metric keys ("<key>_map", ...):

- exactly two modalities: "i2t" for the first -> the second and "t2i" for the second -> the
  first, whatever the modalities are called (the keys of the image/text setting, kept so that
  results stay comparable);
- three or more: "<q>2<g>" from the modality names, e.g. "image2audio", in the order of (query
  modality, gallery modality) indices.

`retrieval_metrics` computes the metrics of every direction over N paired items: with labels,
`ranking.ranking_metrics` (shared labels: items of different modalities are relevant when they
share a label); without, `instance.instance_metrics` (only the query's own pair is relevant). It
returns "<key>_<metric>" for every direction, "avg_<metric>" the unweighted mean over ALL
directions, and "<key>_num_queries" per direction (not averaged).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from mscross.errors import DataError
from mscross.metrics.instance import instance_metrics
from mscross.metrics.ranking import ranking_metrics

Direction = tuple[str, str, str]  # (key, query modality, gallery modality)


def direction_names(modalities: Sequence[str]) -> list[Direction]:
  """Every ordered pair of distinct modalities, with its key (module docstring).

  Args:
    modalities: K >= 2 distinct, non-empty modality names, in their order.

  Returns:
    [(key, query modality, gallery modality)] for the K (K - 1) directions, by query index, then
    gallery index: for two modalities [("i2t", a, b), ("t2i", b, a)].

  Raises:
    DataError: fewer than two modalities, a name repeated, empty or not a string, or two
      directions whose keys would be equal.
  """
  names = list(modalities)
  if len(names) < 2:
    raise DataError(f"retrieval needs at least two modalities, got {names}")
  if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
    raise DataError(f"modality names must be distinct non-empty strings, got {names}")
  if len(names) == 2:
    a, b = names
    return [("i2t", a, b), ("t2i", b, a)]
  out = [(f"{q}2{g}", q, g) for q in names for g in names if q != g]
  keys = [key for key, _, _ in out]
  if len(set(keys)) != len(keys):
    # e.g. "a" -> "b2c" and "a2b" -> "c" would both be "a2b2c".
    raise DataError(f"modality names {names} give ambiguous direction keys {sorted(keys)}")
  return out


def retrieval_metrics(
  embeddings: Mapping[str, np.ndarray],
  labels=None,
  *,
  ks: Sequence[int] = (1, 5, 10, 50, 100),
  map_ks: Sequence[int] = (50,),
  recall_ks: Sequence[int] = (1, 5, 10),
  block_size: int | None = None,
) -> dict[str, float]:
  """Metrics of every retrieval direction between paired modalities, and their averages.

  Args:
    embeddings: modality name -> [N, d] embeddings of the same N paired items (row i of every
      modality is item i), all of the same width d; K >= 2 modalities, in direction order.
    labels: [N, C] multi-hot labels of the items, shared by all modalities, or None for
      unlabelled data.
    ks, map_ks: P@k and mAP@k ranks of the labelled metrics (`ranking_metrics`).
    recall_ks: Recall@k ranks of the unlabelled metrics (`instance_metrics`).
    block_size: queries scored at once (None: from a memory budget); results do not depend on it.

  Returns:
    Plain Python floats: "<key>_<m>" for every direction key of `direction_names(embeddings)`
    and every metric m ("map", "map@R", "map@50", "p@1", ... with labels; "r@1", ...,
    "median_rank", "mean_rank", "mrr", "map" without), "avg_<m>" the mean of m over all
    directions, and "<key>_num_queries" per direction. Keys come metric by metric, each
    direction then the average, the query counts last.

  Raises:
    DataError: fewer than two modalities, embeddings that are not [N, d] with one N and one d,
      labels that are not [N, C], or as the metric functions.
    ConfigError: as the metric functions.
  """
  directions = direction_names(list(embeddings))
  arrays = {}
  for name, x in embeddings.items():
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
      raise DataError(f"{name} embeddings must be 2-D [N, d], got shape {x.shape}")
    arrays[name] = x
  shapes = {name: x.shape for name, x in arrays.items()}
  if len(set(shapes.values())) != 1:
    raise DataError(f"modalities need embeddings of one shape [N, d], got {shapes}")
  if labels is not None:
    labels = np.asarray(labels, np.float32)
    num = next(iter(shapes.values()))[0]
    if labels.ndim != 2 or labels.shape[0] != num:
      raise DataError(f"labels must be [N, C] with N = {num}, got shape {labels.shape}")

  per_direction = {}
  for key, q, g in directions:
    if labels is None:
      per_direction[key] = instance_metrics(
        arrays[q], arrays[g], ks=recall_ks, block_size=block_size
      )
    else:
      per_direction[key] = ranking_metrics(
        arrays[q], arrays[g], labels, labels, ks=ks, map_ks=map_ks, block_size=block_size
      )

  result = {}
  for name in per_direction[directions[0][0]]:
    if name == "num_queries":
      continue
    values = [per_direction[key][name] for key, _, _ in directions]
    for (key, _, _), v in zip(directions, values, strict=True):
      result[f"{key}_{name}"] = v
    result[f"avg_{name}"] = math.fsum(values) / len(values)
  for key, _, _ in directions:
    result[f"{key}_num_queries"] = per_direction[key]["num_queries"]
  return result
