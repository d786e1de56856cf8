"""Labelled retrieval metrics: a query set ranks a gallery by cosine similarity.

An item of the gallery is relevant to a query when the two share at least one label. Labels are
multi-hot arrays [N, C] (single-label data is one-hot); an entry > 0 means "has the label". For one
query let rel(k) = 1 when the item at rank k is relevant, P(k) = (1/k) sum_{j<=k} rel(j) the
precision at rank k, and R the number of relevant items in the whole gallery of G items.

Definitions. Every metric is a mean over the queries with R >= 1: a query without any relevant
item is skipped, not counted as 0, and "num_queries" says how many queries were kept.

- mAP@all ("map"): AP = (1/R) sum_k P(k) rel(k) over the ranks k of the R relevant items, the
  whole gallery ranked.
  Tie rule: items with equal similarity form one threshold, as in scikit-learn's
  `average_precision_score`. Every relevant item of a tie group gets the precision at the END of
  its group: hits up to and including the whole group, divided by the rank of the group's last
  item. AP then does not depend on how ties are ordered and equals scikit-learn's AP, ties
  included.
- mAP@R ("map@R"; Musgrave et al., "A metric learning reality check", ECCV 2020): AP restricted to
  the top R ranks, (1/R) sum_{k<=R} P(k) rel(k).
- mAP@k ("map@<k>", e.g. "map@50"; never reported as "map"): AP over the top k ranks,
  (1/R_k) sum_{j<=k} P(j) rel(j), with R_k the number of relevant items within the top k; a query
  with R_k = 0 contributes 0. This is the truncated "mAP" of the DCMH and ACMR evaluation code,
  except that those divide by the number of all queries, while here queries with R = 0 are left
  out as for every other metric (the two agree when every query has a relevant item).
- P@k ("p@<k>"): fraction of relevant items among the top k.

mAP@R, mAP@k and P@k cut the ranking at a fixed rank and so need a total order: ties are broken
by gallery index, lower index first (a stable sort). A k larger than the gallery is clipped to the
gallery size; the key keeps the requested k.

Queries are scored in blocks of `block_size` against the whole gallery, so memory grows with
block_size x G, not Q x G; by default the block size follows from a memory budget. Similarities
are float32. On the CPU backend NumPy sorts and scans each block (it is several times faster
there than XLA's sort and scans; see `host_ranking`) and per-query values are float64; on other
backends the whole block runs in XLA and per-query values are float32. Either way they are
averaged over queries in float64 on the host. NaN or infinite embeddings are rejected.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mscross.errors import DataError
from mscross.metrics import inputs
from mscross.metrics.host_ranking import cpu_count, host_blocks
from mscross.metrics.similarity import normalize, normalize_jit

Array = jax.Array

# The number of map_ks is rounded up to a multiple of this (see `inputs` for the other shapes).
_MAP_KS_MULTIPLE = 4
_INT64_MAX = np.iinfo(np.int64).max

# Bytes per (query, gallery item) entry of a block at its peak. CPU: the similarities of the
# block being ranked and of the next one, which XLA computes meanwhile (4 each; the slices that
# NumPy ranks add at most host_ranking.SLICE_BUDGET per core). Other backends sort and scan in
# XLA: about 40.
_HOST_BYTES_PER_ENTRY = 8
_XLA_BYTES_PER_ENTRY = 40
MEMORY_BUDGET = 512 * 2**20  # bytes per block when block_size is None


def _enable_x64():
  # `jax.enable_x64` replaced `jax.experimental.enable_x64`; the project admits both versions.
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pragma: no cover

  return enable_x64(True)  # pragma: no cover


def _descending_key(s: Array) -> Array:
  """int32 keys whose ascending order is the descending order of the float32 scores `s`."""
  # -0.0 and 0.0 must tie, as they do for scikit-learn, but their bit patterns differ.
  s = jnp.where(s == 0, jnp.zeros_like(s), s)
  bits = lax.bitcast_convert_type(s, jnp.int32)
  # Flipping the magnitude bits of negative floats makes the integer order the float order.
  ascending = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
  return ~ascending


def _sort_rows(x: Array) -> Array:
  """Sorts every row of a [B, N] array in ascending order."""
  # XLA's CPU sort runs on one thread, but independent sorts run concurrently (seen in per-thread
  # CPU times), so on CPU the rows are split into one slice per core.
  parts = min(cpu_count(), x.shape[0]) if jax.default_backend() == "cpu" else 1
  if parts == 1:
    return lax.sort(x, dimension=1)
  bounds = [x.shape[0] * i // parts for i in range(parts + 1)]
  slices = [x[bounds[i] : bounds[i + 1]] for i in range(parts)]
  return jnp.concatenate([lax.sort(part, dimension=1) for part in slices])


def _packed_keys(q, q_labels, g_unit, g_labels, num_gallery):
  """[B, N] int64 keys whose ascending order per row is the stable ranking; trace with x64.

  Bits 63-32 hold the descending score key, bits 31-1 the gallery index and bit 0 relevance, so
  sorting ranks by score, breaks ties by lower gallery index and carries relevance along.
  Arguments as `_block_metrics`.
  """
  s = jnp.matmul(normalize(q), g_unit.T, precision=lax.Precision.HIGHEST)
  rel = (q_labels @ g_labels.T) > 0
  # XLA's CPU sort is several times faster on one integer operand than on float keys or on a
  # (score, payload) pair (0.2 s against 1.1-1.5 s for 1024 x 5000 here), hence one operand.
  index = lax.broadcasted_iota(jnp.int64, s.shape, 1)
  packed = (_descending_key(s).astype(jnp.int64) << 32) | (index << 1) | rel.astype(jnp.int64)
  # Padding gallery items sort after every real item, tie with none (NaN scores are rejected)
  # and, with the lowest bit clear, count as irrelevant.
  return jnp.where(index < num_gallery, packed, _INT64_MAX - 1)


@functools.partial(jax.jit, static_argnames="top")
def _block_metrics(q, q_labels, g_unit, g_labels, num_gallery, ks, map_ks, *, top):
  """Per-query metrics of one block of queries; trace and run it with x64 enabled.

  Args:
    q: [B, d] query embeddings (normalised here).
    q_labels: [B, C] 0/1 float32.
    g_unit: [N, d] unit-norm or zero gallery embeddings, the first `num_gallery` rows real.
    g_labels: [N, C] 0/1 float32.
    num_gallery: int32 scalar, the number of real gallery rows.
    ks, map_ks: int32 [K], [M] ranks, already clipped to num_gallery.
    top: static bound on map_ks, at most N.

  Returns:
    R [B] int32, AP@all [B], AP@R [B], AP@k [M, B], P@k [K, B] (float32).
  """
  packed = _sort_rows(_packed_keys(q, q_labels, g_unit, g_labels, num_gallery))
  hit = (packed & 1).astype(jnp.int32)
  score = packed >> 32

  rank = lax.broadcasted_iota(jnp.int32, packed.shape, 1) + 1
  hits = jnp.cumsum(hit, axis=1, dtype=jnp.int32)
  num_rel = hits[:, -1]
  prec_at_hit = jnp.where(hit > 0, hits.astype(jnp.float32) / rank.astype(jnp.float32), 0.0)

  # Tie groups: rank and hit count are both non-decreasing along the row, so a reverse running
  # minimum over values kept only at group ends gives every rank the values at the end of its
  # group; packed into one int64, both come out of a single scan.
  last = jnp.ones((score.shape[0], 1), bool)
  group_end = jnp.concatenate([score[:, 1:] != score[:, :-1], last], axis=1)
  ends = jnp.where(group_end, (rank.astype(jnp.int64) << 32) | hits.astype(jnp.int64), _INT64_MAX)
  ends = lax.cummin(ends, axis=1, reverse=True)
  end_rank = (ends >> 32).astype(jnp.float32)
  end_hits = (ends & 0xFFFFFFFF).astype(jnp.float32)
  ap_all_sum = jnp.sum(jnp.where(hit > 0, end_hits / end_rank, 0.0), axis=1)

  denom = jnp.maximum(num_rel, 1).astype(jnp.float32)
  ap_all = ap_all_sum / denom
  ap_r = jnp.sum(jnp.where(rank <= num_rel[:, None], prec_at_hit, 0.0), axis=1) / denom

  def hits_at(k):  # [len(k), B]
    return jnp.take(hits, k - 1, axis=1).T

  in_top = (jnp.arange(top)[None, :] < map_ks[:, None]).astype(jnp.float32)  # [M, top]
  top_sums = jnp.matmul(in_top, prec_at_hit[:, :top].T, precision=lax.Precision.HIGHEST)
  ap_k = top_sums / jnp.maximum(hits_at(map_ks), 1).astype(jnp.float32)
  p_k = hits_at(ks).astype(jnp.float32) / ks[:, None].astype(jnp.float32)
  return num_rel, ap_all, ap_r, ap_k, p_k


def _padded_ranks(ks: tuple[int, ...], num_gallery: int, multiple: int) -> Array:
  """ks clipped to the gallery, padded with rank 1 to a multiple of `multiple` entries."""
  clipped = [min(k, num_gallery) for k in ks]
  n = inputs.round_up(max(len(ks), 1), multiple)
  return jnp.asarray(clipped + [1] * (n - len(ks)), jnp.int32)


def per_query_ranking(
  query_emb,
  gallery_emb,
  query_labels,
  gallery_labels,
  *,
  ks: Sequence[int],
  map_ks: Sequence[int],
  block_size: int | None,
) -> tuple[tuple[int, ...], tuple[int, ...], dict[str, np.ndarray]]:
  """The per-query values that `ranking_metrics` averages; arguments and errors as there.

  Returns:
    (ks, map_ks) checked and deduplicated, and {"num_rel": R [Q], "map": AP@all [Q], "map@R":
    AP@R [Q], "map@k": AP@k [M, Q], "p@k": P@k [K, Q]}, in query order; a query with R = 0 has
    meaningless values and is left out of every mean.
  """
  q = inputs.as_2d("query_emb", query_emb)
  g = inputs.as_2d("gallery_emb", gallery_emb)
  ql = inputs.as_2d("query_labels", query_labels)
  gl = inputs.as_2d("gallery_labels", gallery_labels)
  if q.shape[1] != g.shape[1]:
    raise DataError(f"query and gallery embedding sizes differ: {q.shape[1]} vs {g.shape[1]}")
  if ql.shape[0] != q.shape[0] or gl.shape[0] != g.shape[0]:
    raise DataError(
      f"labels do not match embeddings: {ql.shape[0]} label rows for {q.shape[0]} queries, "
      f"{gl.shape[0]} label rows for {g.shape[0]} gallery items"
    )
  if ql.shape[1] != gl.shape[1]:
    raise DataError(f"query and gallery label sizes differ: {ql.shape[1]} vs {gl.shape[1]}")
  inputs.check_embeddings(q, g)
  ks = inputs.check_ranks("ks", ks)
  map_ks = inputs.check_ranks("map_ks", map_ks)
  host = _host_ranking()
  if block_size is None:
    block_size = auto_block_size(g.shape[0], host=host)
  block_size = inputs.check_block_size(block_size)

  num_q, num_g = q.shape[0], g.shape[0]
  dim = inputs.round_up(q.shape[1], inputs.MINOR_MULTIPLE)
  num_classes = inputs.round_up(ql.shape[1], inputs.MINOR_MULTIPLE)
  # A block larger than the query set would only score padding.
  block = min(block_size, inputs.power_of_two_at_least(num_q))
  num_blocks = math.ceil(num_q / block)
  # Padded queries have no label, hence R = 0, and are dropped like every such query.
  q = inputs.pad_to(q, num_blocks * block, dim)
  ql = inputs.pad_to((ql > 0).astype(np.float32), num_blocks * block, num_classes)
  gallery_rows = inputs.round_up(num_g, inputs.GALLERY_MULTIPLE)
  g = inputs.pad_to(g, gallery_rows, dim)
  gl = inputs.pad_to((gl > 0).astype(np.float32), gallery_rows, num_classes)

  with _enable_x64():
    g_unit = normalize_jit(g)
    gl = jnp.asarray(gl)
    num_gallery = jnp.asarray(num_g, jnp.int32)
    if host:
      outs = host_blocks(q, ql, g_unit, gl, num_gallery, block, ks, map_ks)
    else:
      ks_arr = _padded_ranks(ks, num_g, inputs.MINOR_MULTIPLE)
      map_ks_arr = _padded_ranks(map_ks, num_g, _MAP_KS_MULTIPLE)
      top = min(
        gallery_rows,
        max(inputs.GALLERY_MULTIPLE, inputs.power_of_two_at_least(max(map_ks, default=1))),
      )
      outs = []
      # Every block has the same shape, hence a single compilation. Queued blocks run one after
      # another (measured: with 8 blocks queued, peak memory stayed that of one block).
      for b in range(num_blocks):
        rows = slice(b * block, (b + 1) * block)
        outs.append(
          _block_metrics(q[rows], ql[rows], g_unit, gl, num_gallery, ks_arr, map_ks_arr, top=top)
        )
    num_rel, ap_all, ap_r, ap_k, p_k = (
      np.concatenate([np.asarray(out[i]) for out in outs], axis=-1)[..., :num_q] for i in range(5)
    )
  values = {
    "num_rel": num_rel,
    "map": ap_all,
    "map@R": ap_r,
    "map@k": ap_k[: len(map_ks)],
    "p@k": p_k[: len(ks)],
  }
  return ks, map_ks, values


def ranking_metrics(
  query_emb,
  gallery_emb,
  query_labels,
  gallery_labels,
  *,
  ks: Sequence[int] = (1, 5, 10, 50, 100),
  map_ks: Sequence[int] = (50,),
  block_size: int | None = None,
) -> dict[str, float]:
  """Retrieval metrics of queries ranking a gallery by cosine similarity (module docstring).

  Args:
    query_emb: [Q, d] query embeddings.
    gallery_emb: [G, d] gallery embeddings.
    query_labels: [Q, C] multi-hot (or one-hot) labels of the queries.
    gallery_labels: [G, C] multi-hot (or one-hot) labels of the gallery.
    ks: ranks k of the precisions P@k.
    map_ks: ranks k of the truncated mAP@k.
    block_size: queries scored at once; results do not depend on it. Peak memory is about
      8 bytes x block_size x G on CPU (plus up to 64 MB per core for the rows being ranked) and
      40 on other backends: 0.8 or 4 GB for 1024 queries against 100k items. None picks the
      largest power of two up to 1024 that keeps this under MEMORY_BUDGET.

  Returns:
    Plain Python floats: "map" (mAP@all), "map@R", "map@<k>" for k in map_ks, "p@<k>" for k in ks
    and "num_queries", the number of queries with at least one relevant item, over which every
    metric is averaged. If there is no such query the metrics are NaN.

  Raises:
    DataError: inconsistent shapes, an empty set or non-finite embeddings.
    ConfigError: a k or block_size that is not a positive integer.
  """
  ks, map_ks, values = per_query_ranking(
    query_emb,
    gallery_emb,
    query_labels,
    gallery_labels,
    ks=ks,
    map_ks=map_ks,
    block_size=block_size,
  )
  valid = values["num_rel"] > 0
  count = int(valid.sum())

  def mean(x: np.ndarray) -> float:
    return float(np.mean(x[valid], dtype=np.float64)) if count else float("nan")

  result = {"map": mean(values["map"]), "map@R": mean(values["map@R"])}
  for i, k in enumerate(map_ks):
    result[f"map@{k}"] = mean(values["map@k"][i])
  for i, k in enumerate(ks):
    result[f"p@{k}"] = mean(values["p@k"][i])
  result["num_queries"] = float(count)
  return result


def auto_block_size(num_gallery: int, *, host: bool | None = None) -> int:
  """The `block_size=None` choice of `ranking_metrics`: the largest power of two in [8, 1024]
  whose block fits in MEMORY_BUDGET bytes against `num_gallery` items (host: the CPU path,
  default by backend)."""
  host = _host_ranking() if host is None else host
  per_entry = _HOST_BYTES_PER_ENTRY if host else _XLA_BYTES_PER_ENTRY
  return inputs.block_for_budget(num_gallery, per_entry, MEMORY_BUDGET)


def _host_ranking() -> bool:
  """Whether blocks are sorted by NumPy (CPU backend) rather than by XLA (other backends)."""
  return jax.default_backend() == "cpu"
