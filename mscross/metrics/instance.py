"""Instance-level metrics of paired data without labels: each query has exactly one relevant
item, its own pair.

Query i (item i of one modality) ranks the G = Q items of another modality by cosine similarity,
and only gallery item i, its pair, is relevant. Ranks are 1-based.

- Recall@k ("r@<k>"): the fraction of queries whose pair is within the top k ranks. Ranks use the
  stable total order of P@k in `ranking`: equal similarities are broken by lower gallery index,
  so the rank of the pair is 1 + (items scoring more) + (items scoring the same with a lower
  index). A k larger than the gallery is not clipped: every pair is then within the top k.
- "median_rank", "mean_rank": the median and the mean of that rank over the queries.
- "mrr" and "map": the mean reciprocal rank, with the tie rule of mAP@all in `ranking` (the one
  of scikit-learn's `average_precision_score`): an item tied with others gets the rank at the END
  of its tie group, 1 + (items scoring more) + (other items scoring the same), whatever their
  indices. With a single relevant item AP = 1 / rank, so "map" is the same number as "mrr"; it is
  reported under both names so that a selection on "avg_map" works for unlabelled data too.
- "num_queries": Q; every query has its relevant item.

Without sorting: the pair's score is read from the query's row of similarities and the rank comes
from counts of the scores greater than it and equal to it. Queries go in jit-compiled blocks of
`block_size` against the whole gallery, so memory is bounded by block_size x G, not Q x G. Ranks
are exact integers; the means are taken in float64 on the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mscross.errors import DataError
from mscross.metrics import inputs
from mscross.metrics.similarity import normalize, normalize_jit

Array = jax.Array

# Bytes per (query, gallery item) entry of a block: the float32 scores, and room for a
# temporary in case XLA does not fuse the comparisons into the counts.
_BYTES_PER_ENTRY = 8
MEMORY_BUDGET = 512 * 2**20  # bytes per block when block_size is None


@jax.jit
def _pair_ranks(q: Array, g_unit: Array, first: Array, num_gallery: Array) -> tuple[Array, Array]:
  """Ranks of the pairs of one block of queries.

  Args:
    q: [B, d] raw queries (normalised here), query b being item first + b.
    g_unit: [N, d] unit (or zero) gallery rows, the first `num_gallery` real.
    first: int32 scalar, the item index of the block's first query.
    num_gallery: int32 scalar.

  Returns:
    int32 [B] stable ranks (ties by lower index) and [B] ranks at the end of the tie group.
    Rows whose item index is num_gallery or more (padding) hold meaningless values.
  """
  s = jnp.matmul(normalize(q), g_unit.T, precision=lax.Precision.HIGHEST)
  pair = first + lax.broadcasted_iota(jnp.int32, (q.shape[0], 1), 0)
  # The pair's score is read from the same matrix, so it ties exactly with equal scores.
  pair_score = jnp.take_along_axis(s, jnp.minimum(pair, g_unit.shape[0] - 1), axis=1)
  index = lax.broadcasted_iota(jnp.int32, s.shape, 1)
  real = index < num_gallery
  # Float comparison: -0.0 and 0.0 tie, as in the ranking metrics and scikit-learn.
  greater = jnp.sum(real & (s > pair_score), axis=1, dtype=jnp.int32)
  equal = real & (s == pair_score)
  before = jnp.sum(equal & (index < pair), axis=1, dtype=jnp.int32)
  tied = jnp.sum(equal, axis=1, dtype=jnp.int32)  # the pair included
  return greater + before + 1, greater + tied


def instance_ranks(
  query_emb, gallery_emb, *, block_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """The rank of every query's pair; arguments and errors as `instance_metrics`.

  Returns:
    int64 [Q] stable ranks (ties by lower gallery index) and int64 [Q] ranks at the end of
    the pair's tie group, both 1-based.
  """
  q = inputs.as_2d("query_emb", query_emb)
  g = inputs.as_2d("gallery_emb", gallery_emb)
  inputs.check_embeddings(q, g)
  if q.shape[0] != g.shape[0]:
    raise DataError(
      f"instance-level metrics need paired sets of equal size: {q.shape[0]} queries, "
      f"{g.shape[0]} gallery items"
    )
  if block_size is None:
    block_size = inputs.block_for_budget(g.shape[0], _BYTES_PER_ENTRY, MEMORY_BUDGET)
  block_size = inputs.check_block_size(block_size)

  num = q.shape[0]
  dim = inputs.round_up(q.shape[1], inputs.MINOR_MULTIPLE)
  block = min(block_size, inputs.power_of_two_at_least(num))
  num_blocks = math.ceil(num / block)
  q = inputs.pad_to(q, num_blocks * block, dim)
  g_unit = normalize_jit(inputs.pad_to(g, inputs.round_up(num, inputs.GALLERY_MULTIPLE), dim))
  num_gallery = jnp.asarray(num, jnp.int32)
  # Blocks are dispatched ahead (JAX runs them asynchronously) and gathered at the end; their
  # results are only [block] each. Same shapes, hence one compilation.
  outs = [
    _pair_ranks(q[b * block : (b + 1) * block], g_unit, jnp.int32(b * block), num_gallery)
    for b in range(num_blocks)
  ]
  stable = np.concatenate([np.asarray(o[0]) for o in outs])[:num].astype(np.int64)
  tie_end = np.concatenate([np.asarray(o[1]) for o in outs])[:num].astype(np.int64)
  return stable, tie_end


def instance_metrics(
  query_emb,
  gallery_emb,
  *,
  ks: Sequence[int] = (1, 5, 10),
  block_size: int | None = None,
) -> dict[str, float]:
  """Instance-level retrieval metrics of paired sets (module docstring): query i's only
  relevant item is gallery item i.

  Args:
    query_emb: [N, d] query embeddings.
    gallery_emb: [N, d] gallery embeddings, row i the pair of query i.
    ks: ranks k of Recall@k.
    block_size: queries scored at once; results do not depend on it. Peak memory is about
      8 bytes x block_size x N. None picks the largest power of two up to 1024 that keeps this
      under MEMORY_BUDGET.

  Returns:
    Plain Python floats: "r@<k>" for k in ks, "median_rank", "mean_rank", "mrr", "map" (equal
    to "mrr") and "num_queries" (N).

  Raises:
    DataError: differing set sizes or embedding widths, an empty set or non-finite embeddings.
    ConfigError: a k or block_size that is not a positive integer.
  """
  ks = inputs.check_ranks("ks", ks)
  stable, tie_end = instance_ranks(query_emb, gallery_emb, block_size=block_size)
  result = {f"r@{k}": float(np.mean(stable <= k)) for k in ks}
  result["median_rank"] = float(np.median(stable))
  result["mean_rank"] = float(np.mean(stable, dtype=np.float64))
  reciprocal = float(np.mean(1.0 / tie_end))
  result["mrr"] = reciprocal
  result["map"] = reciprocal
  result["num_queries"] = float(len(stable))
  return result
