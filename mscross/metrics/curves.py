"""Ranking curves of labelled retrieval: precision-recall, precision@K, and AP per class.

Definitions follow `ranking`: cosine similarity ranks the whole gallery, an item is relevant when
it shares at least one label with the query, and queries without any relevant item are left out
of every mean. They need labels; unlabelled data has `instance` metrics instead.

- Interpolated precision at recall r (the PR curves): p_interp(r) = max_{k : recall(k) >= r} P(k),
  with P(k) and recall(k) = hits(k) / R at cut-off rank k. It is computed per query on 101 recall
  levels r = 0, 0.01, ..., 1 and averaged over queries; the standard 11-point curve of the
  cross-modal retrieval literature (r = 0, 0.1, ..., 1) is the subset at every tenth level
  (ELEVEN_POINT_STRIDE). Cut-offs need a total order, so ties are broken by lower gallery index,
  as for P@k.
- Precision@K: hits(K) / K in that same order, on a log-spaced grid of K from 1 to the gallery
  size G (`precision_at_k_grid`). P@G is R / G, the expected precision of a random ranking.
- Per-class AP: for class c, the mean AP@all of the queries whose label includes c, against the
  full gallery. It is the per-query AP that `ranking_metrics` averages, so it has exactly its
  definition and tie rule (tied items share the precision at the end of their tie group, as in
  scikit-learn); a multi-label query counts towards each of its classes.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mscross.errors import ConfigError, DataError
from mscross.metrics.ranking import auto_block_size, per_query_ranking
from mscross.metrics.similarity import cosine_similarity

RECALL_STEPS = 100  # 101 recall levels; every tenth one is the 11-point curve
ELEVEN_POINT_STRIDE = RECALL_STEPS // 10


def precision_at_k_grid(num_gallery: int, num: int = 40) -> np.ndarray:
  """Roughly log-spaced ranks 1 <= K <= num_gallery, always including 1, 5, 10 and num_gallery.

  Returns:
    int64 [M] sorted, distinct ranks, M about `num`.
  """
  grid = np.geomspace(1, num_gallery, num=max(2, num)).round().astype(np.int64)
  fixed = [k for k in (1, 5, 10) if k <= num_gallery] + [num_gallery]
  return np.unique(np.concatenate([grid, fixed]))


@functools.partial(jax.jit, static_argnames="recall_steps")
def _curve_block(q, q_labels, g, g_labels, ks, *, recall_steps):
  """Per-query R [B], interpolated precision [B, recall_steps + 1] and P@K [B, len(ks)]."""
  s = cosine_similarity(q, g)
  # -0.0 and 0.0 must tie, as in the ranking metrics.
  s = jnp.where(s == 0, jnp.zeros_like(s), s)
  rel = (q_labels @ g_labels.T) > 0
  order = jnp.argsort(-s, axis=1, stable=True)
  hits = jnp.cumsum(jnp.take_along_axis(rel, order, axis=1), axis=1, dtype=jnp.int32)
  num_rel = hits[:, -1]
  rank = jnp.arange(1, g.shape[0] + 1, dtype=jnp.float32)
  # The best precision at this rank or any later one: recall only grows with the rank, so the
  # ranks that reach a recall level form a suffix of the ranking.
  best_from = lax.cummax(hits.astype(jnp.float32) / rank, axis=1, reverse=True)
  # Hits needed for recall i / steps, ceil(i * R / steps), in integers: with float levels,
  # rounding gives e.g. ceil((3 * 0.1) * 10) = 4, one hit too many.
  steps = jnp.arange(recall_steps + 1, dtype=jnp.int32)
  need = (steps[None, :] * num_rel[:, None] + recall_steps - 1) // recall_steps
  first = jax.vmap(functools.partial(jnp.searchsorted, side="left"))(hits, need)
  interp = jnp.take_along_axis(best_from, jnp.minimum(first, g.shape[0] - 1), axis=1)
  p_at_k = jnp.take(hits, ks - 1, axis=1).astype(jnp.float32) / ks.astype(jnp.float32)
  return num_rel, interp, p_at_k


def ranking_curves(
  query_emb,
  gallery_emb,
  query_labels,
  gallery_labels,
  *,
  ks=None,
  recall_steps: int = RECALL_STEPS,
  block_size: int | None = 1024,
) -> dict:
  """Mean interpolated precision-recall curve and precision@K of queries ranking a gallery.

  Queries are scored in blocks of `block_size`, so memory grows with block_size x G (about 40
  bytes per entry); only per-query curve values (a few dozen numbers each) are kept.

  Args:
    query_emb: [Q, d] query embeddings.
    gallery_emb: [G, d] gallery embeddings.
    query_labels: [Q, C] multi-hot labels of the queries.
    gallery_labels: [G, C] multi-hot labels of the gallery.
    ks: ranks K of precision@K (clipped to G); default `precision_at_k_grid(G)`.
    recall_steps: the curve is sampled at recall i / recall_steps, i = 0..recall_steps.
    block_size: queries scored at once; None sizes it from `ranking.MEMORY_BUDGET` as the
      XLA path of `ranking_metrics` does.

  Returns:
    {"recall": [recall_steps + 1] levels, "precision": mean interpolated precision at each level,
    "k": the ranks, "precision_at_k": mean P@K at each, "num_queries": queries with R >= 1}, as
    numpy arrays (float64 means) and an int. Means are NaN when no query has a relevant item.

  Raises:
    DataError: inconsistent shapes, an empty set or non-finite embeddings.
    ConfigError: a non-positive K, recall_steps or block_size.
  """
  q = np.asarray(query_emb, np.float32)
  g = np.asarray(gallery_emb, np.float32)
  ql = (np.asarray(query_labels) > 0).astype(np.float32)
  gl = (np.asarray(gallery_labels) > 0).astype(np.float32)
  if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1] or len(q) == 0 or len(g) == 0:
    raise DataError(f"bad embedding shapes: queries {q.shape}, gallery {g.shape}")
  labels_ok = ql.ndim == gl.ndim == 2 and ql.shape[1] == gl.shape[1]
  if not labels_ok or (len(ql), len(gl)) != (len(q), len(g)):
    raise DataError(f"labels {ql.shape} / {gl.shape} do not match embeddings {q.shape} / {g.shape}")
  if not (np.isfinite(q).all() and np.isfinite(g).all()):
    raise DataError("embeddings contain NaN or infinite values")
  if block_size is None:
    block_size = auto_block_size(len(g), host=False)
  if recall_steps < 1 or block_size < 1:
    raise ConfigError("recall_steps and block_size must be positive")
  num_g = len(g)
  ks = precision_at_k_grid(num_g) if ks is None else np.asarray(ks, np.int64)
  if ks.ndim != 1 or len(ks) == 0 or (ks < 1).any():
    raise ConfigError(f"ks must be positive ranks, got {ks!r}")
  ks = np.minimum(ks, num_g)

  block = min(block_size, len(q))
  num_blocks = math.ceil(len(q) / block)
  # Every block has the same shape (one compilation); padded queries have no label, so R = 0 and
  # they are dropped with the other queries that have nothing to find.
  pad = num_blocks * block - len(q)
  q = np.pad(q, ((0, pad), (0, 0)))
  ql = np.pad(ql, ((0, pad), (0, 0)))
  g_dev, gl_dev, ks_dev = jnp.asarray(g), jnp.asarray(gl), jnp.asarray(ks, jnp.int32)
  outs = [
    _curve_block(
      q[b * block : (b + 1) * block],
      ql[b * block : (b + 1) * block],
      g_dev,
      gl_dev,
      ks_dev,
      recall_steps=int(recall_steps),
    )
    for b in range(num_blocks)
  ]
  num_rel, interp, p_at_k = (np.concatenate([np.asarray(o[i]) for o in outs]) for i in range(3))
  valid = num_rel > 0
  count = int(valid.sum())

  def mean(x):
    if not count:
      return np.full(x.shape[1], np.nan)
    return np.mean(x[valid], axis=0, dtype=np.float64)

  return {
    "recall": np.arange(recall_steps + 1) / recall_steps,
    "precision": mean(interp),
    "k": ks,
    "precision_at_k": mean(p_at_k),
    "num_queries": count,
  }


def per_class_ap(
  query_emb, gallery_emb, query_labels, gallery_labels, *, block_size: int | None = 1024
) -> tuple[np.ndarray, np.ndarray]:
  """Per-class mAP@all: for each class, the mean AP of the queries whose label includes it.

  Args:
    query_emb: [Q, d] query embeddings.
    gallery_emb: [G, d] gallery embeddings.
    query_labels: [Q, C] multi-hot labels of the queries.
    gallery_labels: [G, C] multi-hot labels of the gallery.
    block_size: as `ranking_metrics` (None: from its memory budget).

  Returns:
    ([C] float64 mean AP, NaN for a class without a query that has a relevant item; [C] int64
    number of queries averaged).

  Raises:
    As `ranking_metrics`.
  """
  # One ranking of all queries; the per-query APs are the ones ranking_metrics averages.
  _, _, values = per_query_ranking(
    query_emb,
    gallery_emb,
    query_labels,
    gallery_labels,
    ks=(1,),
    map_ks=(1,),
    block_size=block_size,
  )
  member = (np.asarray(query_labels) > 0) & (values["num_rel"] > 0)[:, None]  # [Q, C]
  counts = member.sum(axis=0).astype(np.int64)
  aps = np.full(member.shape[1], np.nan)
  for c in np.flatnonzero(counts):
    aps[c] = np.mean(values["map"][member[:, c]], dtype=np.float64)
  return aps, counts
