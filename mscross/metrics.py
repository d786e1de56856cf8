"""Retrieval metrics: a query set ranks a gallery by cosine similarity.

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
there than XLA's sort and scans) and per-query values are float64; on other backends the whole
block runs in XLA and per-query values are float32. Either way they are averaged over queries in
float64 on the host. NaN or infinite embeddings are rejected.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mscross.errors import ConfigError, DataError

Array = jax.Array

_EPS = 1e-12
# Shapes are rounded up (gallery rows to a multiple of 128; embedding and label widths and the
# number of ks to a multiple of 8; the number of map_ks to a multiple of 4; a query set smaller
# than a block to a power of two) so that evaluation sets of similar sizes share one compiled
# block function. The padding is masked out and costs little.
_GALLERY_MULTIPLE = 128
_MINOR_MULTIPLE = 8
_MAP_KS_MULTIPLE = 4
_INT64_MAX = np.iinfo(np.int64).max

# Bytes per (query, gallery item) entry of a block at its peak. CPU: the similarities of the
# block being ranked and of the next one, which XLA computes meanwhile (4 each; the slices that
# NumPy ranks add at most _SLICE_BUDGET per core). Other backends sort and scan in XLA: about 40.
_HOST_BYTES_PER_ENTRY = 8
_XLA_BYTES_PER_ENTRY = 40
MEMORY_BUDGET = 512 * 2**20  # bytes per block when block_size is None
_MAX_AUTO_BLOCK = 1024
_SLICE_BUDGET = 64 * 2**20


def _enable_x64():
  # `jax.enable_x64` replaced `jax.experimental.enable_x64`; the project admits both versions.
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pragma: no cover

  return enable_x64(True)  # pragma: no cover


def _normalize(x: Array) -> Array:
  x = jnp.asarray(x, jnp.float32)
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  # A zero vector stays zero (similarity 0 to everything) instead of becoming NaN.
  return x / jnp.maximum(norm, _EPS)


_normalize_jit = jax.jit(_normalize)


@jax.jit
def cosine_similarity(q: Array, g: Array) -> Array:
  """All-pairs cosine similarity.

  Args:
    q: [Q, d] query embeddings.
    g: [G, d] gallery embeddings.

  Returns:
    [Q, G] float32 similarities; a zero vector has similarity 0 to every item.
  """
  return jnp.matmul(_normalize(q), _normalize(g).T, precision=lax.Precision.HIGHEST)


def _descending_key(s: Array) -> Array:
  """int32 keys whose ascending order is the descending order of the float32 scores `s`."""
  # -0.0 and 0.0 must tie, as they do for scikit-learn, but their bit patterns differ.
  s = jnp.where(s == 0, jnp.zeros_like(s), s)
  bits = lax.bitcast_convert_type(s, jnp.int32)
  # Flipping the magnitude bits of negative floats makes the integer order the float order.
  ascending = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
  return ~ascending


def _cpu_count() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on every platform
    return os.cpu_count() or 1


def _sort_rows(x: Array) -> Array:
  """Sorts every row of a [B, N] array in ascending order."""
  # XLA's CPU sort runs on one thread, but independent sorts run concurrently (seen in per-thread
  # CPU times), so on CPU the rows are split into one slice per core.
  parts = min(_cpu_count(), x.shape[0]) if jax.default_backend() == "cpu" else 1
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
  s = jnp.matmul(_normalize(q), g_unit.T, precision=lax.Precision.HIGHEST)
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


def _check_ranks(name: str, values: Sequence[int]) -> tuple[int, ...]:
  out = []
  for v in values:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
      raise ConfigError(f"{name} must hold positive integers, got {v!r}")
    if int(v) not in out:
      out.append(int(v))
  return tuple(out)


def _as_2d(name: str, x) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim != 2:
    raise DataError(f"{name} must be 2-D, got shape {x.shape}")
  return x


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _power_of_two_at_least(n: int) -> int:
  return max(_MINOR_MULTIPLE, 1 << (n - 1).bit_length())


def _padded_ranks(ks: tuple[int, ...], num_gallery: int, multiple: int) -> Array:
  """ks clipped to the gallery, padded with rank 1 to a multiple of `multiple` entries."""
  clipped = [min(k, num_gallery) for k in ks]
  return jnp.asarray(clipped + [1] * (_round_up(max(len(ks), 1), multiple) - len(ks)), jnp.int32)


def _pad_to(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
  return np.pad(x, ((0, rows - x.shape[0]), (0, cols - x.shape[1])))


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
  """Retrieval metrics of queries ranking a gallery by cosine similarity (see module docstring).

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
  q = _as_2d("query_emb", query_emb)
  g = _as_2d("gallery_emb", gallery_emb)
  ql = _as_2d("query_labels", query_labels)
  gl = _as_2d("gallery_labels", gallery_labels)
  if q.shape[1] != g.shape[1]:
    raise DataError(f"query and gallery embedding sizes differ: {q.shape[1]} vs {g.shape[1]}")
  if ql.shape[0] != q.shape[0] or gl.shape[0] != g.shape[0]:
    raise DataError(
      f"labels do not match embeddings: {ql.shape[0]} label rows for {q.shape[0]} queries, "
      f"{gl.shape[0]} label rows for {g.shape[0]} gallery items"
    )
  if ql.shape[1] != gl.shape[1]:
    raise DataError(f"query and gallery label sizes differ: {ql.shape[1]} vs {gl.shape[1]}")
  if q.shape[0] == 0 or g.shape[0] == 0:
    raise DataError(f"empty query or gallery set: {q.shape[0]} queries, {g.shape[0]} items")
  if not (np.isfinite(q).all() and np.isfinite(g).all()):
    raise DataError("embeddings contain NaN or infinite values")
  ks = _check_ranks("ks", ks)
  map_ks = _check_ranks("map_ks", map_ks)
  host = _host_ranking()
  if block_size is None:
    block_size = auto_block_size(g.shape[0], host=host)
  if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer) or block_size < 1:
    raise ConfigError(f"block_size must be a positive integer or None, got {block_size!r}")

  num_q, num_g = q.shape[0], g.shape[0]
  dim = _round_up(q.shape[1], _MINOR_MULTIPLE)
  num_classes = _round_up(ql.shape[1], _MINOR_MULTIPLE)
  # A block larger than the query set would only score padding.
  block = min(int(block_size), _power_of_two_at_least(num_q))
  num_blocks = math.ceil(num_q / block)
  # Padded queries have no label, hence R = 0, and are dropped like every such query.
  q = _pad_to(q, num_blocks * block, dim)
  ql = _pad_to((ql > 0).astype(np.float32), num_blocks * block, num_classes)
  gallery_rows = _round_up(num_g, _GALLERY_MULTIPLE)
  g = _pad_to(g, gallery_rows, dim)
  gl = _pad_to((gl > 0).astype(np.float32), gallery_rows, num_classes)

  with _enable_x64():
    g_unit = _normalize_jit(g)
    gl = jnp.asarray(gl)
    num_gallery = jnp.asarray(num_g, jnp.int32)
    if host:
      outs = _host_blocks(q, ql, g_unit, gl, num_gallery, block, ks, map_ks)
    else:
      ks_arr = _padded_ranks(ks, num_g, _MINOR_MULTIPLE)
      map_ks_arr = _padded_ranks(map_ks, num_g, _MAP_KS_MULTIPLE)
      top = min(
        gallery_rows, max(_GALLERY_MULTIPLE, _power_of_two_at_least(max(map_ks, default=1)))
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
  ap_k, p_k = ap_k[: len(map_ks)], p_k[: len(ks)]

  valid = num_rel > 0
  count = int(valid.sum())

  def mean(x: np.ndarray) -> float:
    return float(np.mean(x[valid], dtype=np.float64)) if count else float("nan")

  result = {"map": mean(ap_all), "map@R": mean(ap_r)}
  for i, k in enumerate(map_ks):
    result[f"map@{k}"] = mean(ap_k[i])
  for i, k in enumerate(ks):
    result[f"p@{k}"] = mean(p_k[i])
  result["num_queries"] = float(count)
  return result


def _host_blocks(q, ql, g_unit, gl, num_gallery, block, ks, map_ks) -> list[tuple]:
  """`_host_rank_rows` outputs of every block of `block` queries, in order (CPU backend).

  XLA computes each block's similarities; NumPy packs, sorts and scans them in slices of rows
  on a thread per core. On 1024 x 20k here XLA's sort of the packed keys took 1.25 s against
  NumPy's 0.35 s, and XLA's cumulative sums and minima (lowered as associative scans) another
  1.3 s, while the scans below only touch the ~R relevant items of a row.
  """
  num_g = int(num_gallery)
  ks = tuple(min(k, num_g) for k in ks)
  map_ks = tuple(min(k, num_g) for k in map_ks)
  relevance = _relevance_fn(ql, np.asarray(gl)[:num_g])
  # Slices small enough that their NumPy temporaries (about 40 bytes per entry when every item
  # is relevant) stay well below the block's own memory.
  rows_per_slice = max(1, min(block, _SLICE_BUDGET // (40 * num_g)))

  def similarities(b):
    # XLA rather than NumPy for the matmul, although OpenBLAS took half the CPU time: OpenBLAS
    # gave two identical gallery rows scores 1 ulp apart depending on their position, which
    # breaks the ties that duplicate items must form; XLA's scores did not depend on it.
    return _similarities_jit(q[b * block : (b + 1) * block], g_unit)

  def rank_slice(sims, b, start):
    stop = min(start + rows_per_slice, block)
    rel = relevance(slice(b * block + start, b * block + stop))
    return _host_rank_rows(sims[start:stop, :num_g], rel, ks, map_ks)

  outs = []
  num_blocks = q.shape[0] // block
  # NumPy releases the GIL in its array loops and sorts, so the threads use every core; the
  # next block's matmul is dispatched first and runs alongside (JAX dispatches asynchronously).
  with concurrent.futures.ThreadPoolExecutor(_cpu_count()) as pool:
    pending = similarities(0)
    for b in range(num_blocks):
      sims = np.asarray(pending)
      pending = similarities(b + 1) if b + 1 < num_blocks else None
      parts = [pool.submit(rank_slice, sims, b, i) for i in range(0, block, rows_per_slice)]
      parts = [p.result() for p in parts]
      outs.append(tuple(np.concatenate([p[i] for p in parts], axis=-1) for i in range(5)))
      del sims
  return outs


@jax.jit
def _similarities_jit(q: Array, g_unit: Array) -> Array:
  """[B, N] float32 cosine similarities of raw queries [B, d] to unit gallery rows [N, d]."""
  return jnp.matmul(_normalize(q), g_unit.T, precision=lax.Precision.HIGHEST)


def _relevance_fn(q_labels: np.ndarray, g_labels: np.ndarray):
  """fn(query rows) -> [rows, G] bool relevance, from 0/1 labels [Q, C] and [G, C]."""
  num_classes = q_labels.shape[1]
  if num_classes > 64:
    return lambda rows: (q_labels[rows] @ g_labels.T) > 0
  # As bit masks in the narrowest integer that holds C bits, one AND per entry decides
  # relevance: several times cheaper than a matmul with so few columns.
  dtype = next(
    t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if 8 * t().itemsize >= num_classes
  )
  bits = np.left_shift(dtype(1), np.arange(num_classes, dtype=dtype))
  q_mask = np.bitwise_or.reduce(np.where(q_labels > 0, bits, dtype(0)), axis=1)
  g_mask = np.bitwise_or.reduce(np.where(g_labels > 0, bits, dtype(0)), axis=1)
  return lambda rows: (q_mask[rows, None] & g_mask[None, :]) != 0


def _host_keys(s: np.ndarray, rel: np.ndarray) -> np.ndarray:
  """NumPy twin of `_packed_keys` for real gallery items: [b, G] int64 from similarities
  [b, G] float32 and relevance [b, G] bool."""
  # Adding +0.0 turns -0.0 into +0.0, so that signed zeros tie as in `_descending_key`.
  bits = np.add(s, np.float32(0)).view(np.int32)
  # An arithmetic shift spreads the sign bit: flips the magnitude bits of negative floats only.
  flip = bits >> 31
  flip &= np.int32(0x7FFFFFFF)
  flip ^= bits
  # Both 32-bit halves are written in place, which measured faster than shifting and OR-ing
  # whole int64 arrays.
  packed = np.empty(s.shape, np.int64)
  words = packed.view(np.int32).reshape(*s.shape, 2)
  high, low = (1, 0) if sys.byteorder == "little" else (0, 1)
  np.invert(flip, out=words[..., high])
  np.bitwise_or(np.arange(s.shape[1], dtype=np.int32) << 1, rel, out=words[..., low])
  return packed


def _search_right(values, lo: np.ndarray, hi: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Per element, the first position in [lo, hi) whose value exceeds `target` (hi if none),
  given values(lo) <= target and a sequence non-decreasing on [lo, hi); values(pos) reads the
  value at each of an array of positions."""
  lo, hi = lo.copy(), hi.copy()
  while np.any(hi - lo > 1):
    mid = (lo + hi) // 2
    # Finished elements have mid == lo, which satisfies the test and stays put.
    le = values(mid) <= target
    lo = np.where(le, mid, lo)
    hi = np.where(le, hi, mid)
  return hi


def _host_rank_rows(s: np.ndarray, rel: np.ndarray, ks: tuple[int, ...], map_ks: tuple[int, ...]):
  """Per-query metrics of a slice of queries, ranked with NumPy.

  Only the relevant items of a row enter the sums, so after the sort the work is on their
  positions (about R per row) rather than on all G; `_block_metrics` is the same computation
  in XLA.

  Args:
    s: [b, G] float32 similarities to the real gallery items.
    rel: [b, G] bool relevance.
    ks, map_ks: ranks, already clipped to G.

  Returns:
    R [b] int64, AP@all [b], AP@R [b], AP@k [M, b], P@k [K, b] (float64).
  """
  srt = _host_keys(s, rel)
  srt.sort(axis=1)
  b, n = srt.shape
  # The lowest byte holds the relevance bit; reading it avoids an int64 temporary, and NumPy
  # finds the nonzero entries of a bool array fastest.
  low = 0 if sys.byteorder == "little" else 7
  hit = (srt.view(np.uint8).reshape(b, n, 8)[:, :, low] & np.uint8(1)).view(bool)
  flat = np.flatnonzero(hit)  # by row, then by rank
  rows, cols = np.divmod(flat, n)
  num_rel = np.count_nonzero(hit, axis=1)
  first = np.cumsum(num_rel) - num_rel  # where each row starts among `rows`
  hits = np.arange(1, len(rows) + 1) - first[rows]  # the hit count at each relevant item
  rank = cols + 1
  prec = hits / rank
  denom = np.maximum(num_rel, 1)

  def per_row(weights):
    return np.bincount(rows, weights=weights, minlength=b)

  ap_r = per_row(np.where(rank <= num_rel[rows], prec, 0.0)) / denom

  # Tie groups: a relevant item tied with the next item takes the rank and the hit count at the
  # end of its group, found by binary search (exact ties are rare in float32 scores, but a
  # degenerate model can tie everything).
  score = srt.ravel()[flat] >> 32
  tied = np.flatnonzero(
    (cols + 1 < n) & (srt.ravel()[np.minimum(flat + 1, srt.size - 1)] >> 32 == score)
  )
  end_rank, end_hits = rank, hits
  if len(tied):
    end_rank, end_hits = rank.copy(), hits.copy()
    r = rows[tied]
    end_rank[tied] = _search_right(
      lambda pos: srt[r, pos] >> 32, cols[tied], np.full(len(tied), n), score[tied]
    )
    row_end = first[r] + num_rel[r]
    end_hits[tied] = _search_right(lambda j: score[j], tied, row_end, score[tied]) - first[r]
  ap_all = per_row(end_hits / end_rank) / denom

  hits_at = {k: np.count_nonzero(hit[:, :k], axis=1) for k in set(ks) | set(map_ks)}
  ap_k = np.array(
    [per_row(np.where(rank <= k, prec, 0.0)) / np.maximum(hits_at[k], 1) for k in map_ks]
  ).reshape(len(map_ks), b)
  p_k = np.array([hits_at[k] / k for k in ks]).reshape(len(ks), b)
  return num_rel, ap_all, ap_r, ap_k, p_k


def auto_block_size(num_gallery: int, *, host: bool | None = None) -> int:
  """The `block_size=None` choice: the largest power of two in [8, 1024] whose block fits in
  MEMORY_BUDGET bytes against `num_gallery` items (host: the CPU path, default by backend)."""
  host = _host_ranking() if host is None else host
  per_entry = _HOST_BYTES_PER_ENTRY if host else _XLA_BYTES_PER_ENTRY
  fit = MEMORY_BUDGET // (per_entry * _round_up(max(num_gallery, 1), _GALLERY_MULTIPLE))
  return max(_MINOR_MULTIPLE, min(_MAX_AUTO_BLOCK, 1 << max(int(fit), 1).bit_length() - 1))


def _host_ranking() -> bool:
  """Whether blocks are sorted by NumPy (CPU backend) rather than by XLA (other backends)."""
  return jax.default_backend() == "cpu"


def retrieval_metrics(
  img_emb,
  txt_emb,
  labels=None,
  *,
  img_labels=None,
  txt_labels=None,
  **kw,
) -> dict[str, float]:
  """Image->text and text->image retrieval metrics and their average.

  Args:
    img_emb: [N_img, d] image embeddings: the queries of i2t, the gallery of t2i.
    txt_emb: [N_txt, d] text embeddings: the gallery of i2t, the queries of t2i.
    labels: [N, C] labels of paired data (N_img == N_txt == N), used for both modalities.
    img_labels: [N_img, C] image labels; overrides `labels`.
    txt_labels: [N_txt, C] text labels; overrides `labels`.
    **kw: ks, map_ks, block_size, passed on to `ranking_metrics`.

  Returns:
    Plain Python floats keyed "i2t_<m>", "t2i_<m>" and "avg_<m>" (the mean of the two
    directions) for every metric m of `ranking_metrics` ("map", "map@R", "map@50", "p@1", ...),
    plus "i2t_num_queries" and "t2i_num_queries".

  Raises:
    DataError: no labels for a modality, or as `ranking_metrics`.
  """
  img_labels = labels if img_labels is None else img_labels
  txt_labels = labels if txt_labels is None else txt_labels
  if img_labels is None or txt_labels is None:
    raise DataError("retrieval_metrics needs `labels`, or both `img_labels` and `txt_labels`")
  i2t = ranking_metrics(img_emb, txt_emb, img_labels, txt_labels, **kw)
  t2i = ranking_metrics(txt_emb, img_emb, txt_labels, img_labels, **kw)
  result = {}
  for name in i2t:
    if name != "num_queries":
      result[f"i2t_{name}"] = i2t[name]
      result[f"t2i_{name}"] = t2i[name]
      result[f"avg_{name}"] = (i2t[name] + t2i[name]) / 2
  result["i2t_num_queries"] = i2t["num_queries"]
  result["t2i_num_queries"] = t2i["num_queries"]
  return result
