"""Checks of the arguments the metrics take, and the shape rounding their blocks share.

Shapes are rounded up (gallery rows to a multiple of 128; embedding and label widths and the
number of ks to a multiple of 8; a query set smaller than a block to a power of two) so that
evaluation sets of similar sizes share one compiled block function. The padding is masked out
and costs little.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mscross.errors import ConfigError, DataError

GALLERY_MULTIPLE = 128
MINOR_MULTIPLE = 8
MAX_AUTO_BLOCK = 1024


def check_ranks(name: str, values: Sequence[int]) -> tuple[int, ...]:
  """The positive integers of `values`, duplicates dropped, in order; ConfigError otherwise."""
  out = []
  for v in values:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
      raise ConfigError(f"{name} must hold positive integers, got {v!r}")
    if int(v) not in out:
      out.append(int(v))
  return tuple(out)


def check_block_size(block_size) -> int:
  """`block_size` as an int; ConfigError unless it is a positive integer."""
  if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer) or block_size < 1:
    raise ConfigError(f"block_size must be a positive integer or None, got {block_size!r}")
  return int(block_size)


def as_2d(name: str, x) -> np.ndarray:
  """`x` as a float32 [N, d] array; DataError if it is not 2-D."""
  x = np.asarray(x, np.float32)
  if x.ndim != 2:
    raise DataError(f"{name} must be 2-D, got shape {x.shape}")
  return x


def check_embeddings(q: np.ndarray, g: np.ndarray) -> None:
  """DataError unless queries [Q, d] and gallery [G, d] share d, are non-empty and finite."""
  if q.shape[1] != g.shape[1]:
    raise DataError(f"query and gallery embedding sizes differ: {q.shape[1]} vs {g.shape[1]}")
  if q.shape[0] == 0 or g.shape[0] == 0:
    raise DataError(f"empty query or gallery set: {q.shape[0]} queries, {g.shape[0]} items")
  if not (np.isfinite(q).all() and np.isfinite(g).all()):
    raise DataError("embeddings contain NaN or infinite values")


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def power_of_two_at_least(n: int) -> int:
  """The smallest power of two >= n, at least MINOR_MULTIPLE."""
  return max(MINOR_MULTIPLE, 1 << (n - 1).bit_length())


def block_for_budget(num_gallery: int, bytes_per_entry: int, budget: int) -> int:
  """The largest power of two in [8, 1024] whose block of queries against `num_gallery` padded
  items needs at most `budget` bytes at `bytes_per_entry` per (query, item) entry."""
  fit = budget // (bytes_per_entry * round_up(max(num_gallery, 1), GALLERY_MULTIPLE))
  return max(MINOR_MULTIPLE, min(MAX_AUTO_BLOCK, 1 << max(int(fit), 1).bit_length() - 1))


def pad_to(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
  """[n, c] zero-padded to [rows, cols]."""
  return np.pad(x, ((0, rows - x.shape[0]), (0, cols - x.shape[1])))
