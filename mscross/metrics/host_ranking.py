"""The CPU path of `ranking.ranking_metrics`: NumPy sorts and scans each block of queries.

XLA computes each block's similarities; NumPy packs, sorts and scans them in slices of rows on a
thread per core. On 1024 x 20k here XLA's sort of the packed keys took 1.25 s against NumPy's
0.35 s, and XLA's cumulative sums and minima (lowered as associative scans) another 1.3 s, while
the scans below only touch the ~R relevant items of a row. Per-query values are float64. The
same computation in XLA, for other backends, is `ranking._block_metrics`.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys

import numpy as np

from mscross.metrics.similarity import similarities_to_unit

# The NumPy temporaries of the rows being ranked stay under this many bytes per core.
SLICE_BUDGET = 64 * 2**20


def cpu_count() -> int:
  """The cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on every platform
    return os.cpu_count() or 1


def host_blocks(q, ql, g_unit, gl, num_gallery, block, ks, map_ks) -> list[tuple]:
  """`host_rank_rows` outputs of every block of `block` queries, in order.

  Args:
    q: [num_blocks * block, d] float32 queries (padded rows have no label).
    ql: [num_blocks * block, C] 0/1 float32 query labels.
    g_unit: [N, d] unit gallery rows on the device, the first `num_gallery` real.
    gl: [N, C] 0/1 gallery labels.
    num_gallery: the number of real gallery rows.
    block: queries per block.
    ks, map_ks: ranks of P@k and mAP@k.

  Returns:
    Per block: R [block], AP@all [block], AP@R [block], AP@k [M, block], P@k [K, block].
  """
  num_g = int(num_gallery)
  ks = tuple(min(k, num_g) for k in ks)
  map_ks = tuple(min(k, num_g) for k in map_ks)
  relevance = _relevance_fn(ql, np.asarray(gl)[:num_g])
  # Slices small enough that their NumPy temporaries (about 40 bytes per entry when every item
  # is relevant) stay well below the block's own memory.
  rows_per_slice = max(1, min(block, SLICE_BUDGET // (40 * num_g)))

  def similarities(b):
    # XLA rather than NumPy for the matmul, although OpenBLAS took half the CPU time: OpenBLAS
    # gave two identical gallery rows scores 1 ulp apart depending on their position, which
    # breaks the ties that duplicate items must form; XLA's scores did not depend on it.
    return similarities_to_unit(q[b * block : (b + 1) * block], g_unit)

  def rank_slice(sims, b, start):
    stop = min(start + rows_per_slice, block)
    rel = relevance(slice(b * block + start, b * block + stop))
    return host_rank_rows(sims[start:stop, :num_g], rel, ks, map_ks)

  outs = []
  num_blocks = q.shape[0] // block
  # NumPy releases the GIL in its array loops and sorts, so the threads use every core; the
  # next block's matmul is dispatched first and runs alongside (JAX dispatches asynchronously).
  with concurrent.futures.ThreadPoolExecutor(cpu_count()) as pool:
    pending = similarities(0)
    for b in range(num_blocks):
      sims = np.asarray(pending)
      pending = similarities(b + 1) if b + 1 < num_blocks else None
      parts = [pool.submit(rank_slice, sims, b, i) for i in range(0, block, rows_per_slice)]
      parts = [p.result() for p in parts]
      outs.append(tuple(np.concatenate([p[i] for p in parts], axis=-1) for i in range(5)))
      del sims
  return outs


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


def host_keys(s: np.ndarray, rel: np.ndarray) -> np.ndarray:
  """NumPy twin of `ranking._packed_keys` for real gallery items.

  Args:
    s: [b, G] float32 similarities.
    rel: [b, G] bool relevance.

  Returns:
    [b, G] int64 keys whose ascending order per row is the stable ranking: bits 63-32 the
    descending score key, bits 31-1 the gallery index, bit 0 relevance.
  """
  # Adding +0.0 turns -0.0 into +0.0, so that signed zeros tie as in `ranking._descending_key`.
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


def host_rank_rows(s: np.ndarray, rel: np.ndarray, ks: tuple[int, ...], map_ks: tuple[int, ...]):
  """Per-query metrics of a slice of queries, ranked with NumPy.

  Only the relevant items of a row enter the sums, so after the sort the work is on their
  positions (about R per row) rather than on all G.

  Args:
    s: [b, G] float32 similarities to the real gallery items.
    rel: [b, G] bool relevance.
    ks, map_ks: ranks, already clipped to G.

  Returns:
    R [b] int64, AP@all [b], AP@R [b], AP@k [M, b], P@k [K, b] (float64).
  """
  srt = host_keys(s, rel)
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
