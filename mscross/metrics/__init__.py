"""Retrieval metrics: queries of one modality rank the items of another by cosine similarity.

Every metric ranks the WHOLE gallery by cosine similarity (`similarity`: rows scaled to unit
length, a zero row has similarity 0 to everything). The exact definitions, the project's
reference, are in the docstrings of the modules that compute them:

- `ranking`: labelled data. An item is relevant to a query when the two share at least one label
  (multi-hot [N, C] labels). mAP@all ("map", scikit-learn's tie rule: tied relevant items share
  the precision at the end of their tie group), mAP@R, mAP@k and P@k (ties broken by lower
  gallery index); means over the queries that have a relevant item ("num_queries").
- `instance`: paired data without labels. Query i's only relevant item is gallery item i, its
  pair. Recall@k ("r@<k>"), median and mean rank (ties broken by lower gallery index), MRR and
  "map" (= MRR, the AP of a single relevant item, with scikit-learn's tie rule).
- `curves`: labelled data. Interpolated precision-recall curves (101 levels, the 11-point curve
  among them), precision@K on a log grid of K, and AP per class.
- `directions`: the directions between K >= 2 paired modalities and their keys ("i2t" and "t2i"
  for two modalities, "<q>2<g>" for three or more), and `retrieval_metrics`, the metrics of
  every direction with "avg_<metric>" the mean over all directions.

Queries are scored in blocks against the whole gallery, so memory grows with block_size x G,
not Q x G; NaN or infinite embeddings are rejected with a one-line DataError.
"""

from mscross.metrics.curves import (
  ELEVEN_POINT_STRIDE,
  RECALL_STEPS,
  per_class_ap,
  precision_at_k_grid,
  ranking_curves,
)
from mscross.metrics.directions import Direction, direction_names, retrieval_metrics
from mscross.metrics.instance import instance_metrics, instance_ranks
from mscross.metrics.ranking import MEMORY_BUDGET, auto_block_size, ranking_metrics
from mscross.metrics.similarity import cosine_similarity, normalize, normalize_jit
from mscross.metrics.summary import mean_and_std

__all__ = [
  "ELEVEN_POINT_STRIDE",
  "MEMORY_BUDGET",
  "RECALL_STEPS",
  "Direction",
  "auto_block_size",
  "cosine_similarity",
  "direction_names",
  "instance_metrics",
  "instance_ranks",
  "mean_and_std",
  "normalize",
  "normalize_jit",
  "per_class_ap",
  "precision_at_k_grid",
  "ranking_curves",
  "ranking_metrics",
  "retrieval_metrics",
]
