"""Top-k retrieval over exported embeddings: an immutable cosine-similarity index.

    index = Index.from_export("runs/acmr_wiki/emb", "text")   # the gallery: text embeddings
    scores, indices = index.search(image_queries, k=10)          # [Q, 10] each, best first
    names = index.search_ids(image_queries, k=10)                # [[gallery id, ...], ...]

An export folder holds one `emb_<modality>.npy` [N, d] per modality of N paired items, their
`ids.npy` [N] and, for labelled data only, `labels.npy` [N, C].

Similarity is cosine, as in `mscross.metrics`: the gallery is normalised once when the index is
built, queries at search time, and a zero vector has similarity 0 to everything. Results come
best first; equal scores come in gallery order, lower index first, the tie rule of metrics' P@k
(and of a stable argsort on the negated scores). A k larger than the gallery is clipped to the
gallery size, so every row holds min(k, G) results.

Search is exact. Queries go in blocks of `block_size` and the gallery in chunks; each block
keeps a running top-k that every chunk's own top-k is merged into, so memory is bounded by
block_size x gallery_chunk scores, not by Q x G. `write_topk_files` writes the top-k neighbours
of every query of paired embeddings, for every retrieval direction between their modalities.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mscross import metrics
from mscross.errors import ConfigError, DataError

EMBEDDINGS_FILE, IDS_FILE, LABELS_FILE = "embeddings.npy", "ids.npy", "labels.npy"
# One file per modality in an export folder: emb_image.npy, emb_text.npy, ...
EXPORT_PREFIX, EXPORT_SUFFIX = "emb_", ".npy"
# Scores of one query block against one gallery chunk, and their top-k temporaries, stay under
# this many bytes when `gallery_chunk` is left to `search`.
SEARCH_BUDGET = 256 * 2**20
_GALLERY_MULTIPLE = 128  # chunk sizes are rounded up to this, so similar galleries share a compile
_MIN_BLOCK = 8
_BYTES_PER_SCORE = 16  # the float32 scores plus the copies XLA makes around them


@functools.partial(jax.jit, static_argnames="k")
def _search_block(q: jax.Array, chunks: jax.Array, num_gallery: jax.Array, *, k: int):
  """Top-k of one block of queries against a chunked gallery.

  Args:
    q: [B, d] raw queries (normalised here).
    chunks: [C, S, d] unit gallery rows, chunk c holding rows c*S .. c*S+S-1; rows at or past
      `num_gallery` are padding.
    num_gallery: int32 scalar, the number of real gallery rows.
    k: results per query, at most `num_gallery`.

  Returns:
    scores [B, k] float32 and indices [B, k] int32, best first, ties by lower index.
  """
  # Normalised as the metrics normalise, so that the index ranks exactly as they do.
  q = metrics.normalize(q)
  size = chunks.shape[1]
  per_chunk = min(k, size)

  def merge(carry, chunk_and_start):
    best, best_index = carry
    chunk, start = chunk_and_start
    s = jnp.matmul(q, chunk.T, precision=lax.Precision.HIGHEST)
    index = start + lax.broadcasted_iota(jnp.int32, s.shape, 1)
    # XLA's TopK orders floats by their bits, which puts -0.0 below 0.0; they must tie.
    s = jnp.where(s == 0, jnp.zeros_like(s), s)
    s = jnp.where(index < num_gallery, s, -jnp.inf)
    top, pos = lax.top_k(s, per_chunk)
    # TopK breaks ties by position. The running best holds lower gallery indices than this
    # chunk and sits first, and each part is already in (score, index) order, so ties come out
    # lower index first.
    both = jnp.concatenate([best, top], axis=1)
    both_index = jnp.concatenate([best_index, start + pos.astype(jnp.int32)], axis=1)
    best, pick = lax.top_k(both, k)
    return (best, jnp.take_along_axis(both_index, pick, axis=1)), None

  # The initial entries score -inf and are displaced, as k <= num_gallery real items score more.
  init = (
    jnp.full((q.shape[0], k), -jnp.inf, jnp.float32),
    jnp.full((q.shape[0], k), jnp.iinfo(jnp.int32).max, jnp.int32),
  )
  starts = jnp.arange(chunks.shape[0], dtype=jnp.int32) * size
  (best, best_index), _ = lax.scan(merge, init, (chunks, starts))
  return best, best_index


def _positive_int(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
    raise ConfigError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def _embeddings(name: str, x) -> np.ndarray:
  try:
    x = np.asarray(x, np.float32)
  except (TypeError, ValueError) as e:
    raise DataError(f"{name} must be a numeric array: {e}") from None
  if x.ndim != 2:
    raise DataError(f"{name} must be 2-D [N, d], got shape {x.shape}")
  if not np.isfinite(x).all():
    raise DataError(f"{name} contain NaN or infinite values")
  return x


def _frozen(x: np.ndarray) -> np.ndarray:
  x = np.array(x)  # a copy, so that freezing it leaves the caller's array alone
  x.flags.writeable = False
  return x


class Index:
  """An immutable gallery of unit-normalised embeddings [N, d], with optional ids and labels.

  Build it with `from_arrays`, `from_export` or `load`; the constructor takes embeddings that
  are already normalised.

  Attributes:
    embeddings: [N, d] float32 unit (or zero) rows, read-only.
    ids: [N] str, or None.
    labels: [N, ...] as given, or None.
  """

  def __init__(self, unit: np.ndarray, *, ids=None, labels=None):
    unit = _embeddings("gallery embeddings", unit)
    if unit.shape[0] == 0:
      raise DataError("the gallery is empty")
    n = unit.shape[0]
    if ids is not None:
      ids = np.asarray(ids)
      if ids.shape != (n,):
        raise DataError(f"ids must have shape ({n},), one per gallery row, got {ids.shape}")
      ids = ids.astype(str)
    if labels is not None:
      labels = np.asarray(labels)
      if labels.ndim == 0 or labels.shape[0] != n or labels.dtype == object:
        raise DataError(f"labels must be a numeric array with {n} rows, got shape {labels.shape}")
    self._unit = _frozen(unit)
    self._ids = None if ids is None else _frozen(ids)
    self._labels = None if labels is None else _frozen(labels)
    self._device = jnp.asarray(self._unit)
    self._chunked = {}  # chunk size -> [C, size, d] padded gallery on the device

  @classmethod
  def from_arrays(cls, embeddings, *, ids=None, labels=None) -> Index:
    """An index over `embeddings` [N, d] (any scale; normalised here), with ids [N] and labels
    [N, ...] if given."""
    raw = _embeddings("gallery embeddings", embeddings)
    if raw.shape[0] == 0:
      raise DataError("the gallery is empty")
    return cls(np.asarray(metrics.normalize_jit(jnp.asarray(raw))), ids=ids, labels=labels)

  @classmethod
  def from_export(cls, export_dir: str, modality: str) -> Index:
    """The index of one modality of an export folder: its emb_<modality>.npy [N, d], with
    ids.npy [N] and labels.npy [N, C] when present.

    Raises:
      ConfigError: a modality name that is empty or holds a path separator.
      DataError: no such folder, no embeddings of that modality (the message lists the
        modalities the folder has), or an unreadable or malformed file.
    """
    if not isinstance(modality, str) or not modality or any(c in modality for c in "/\\\0"):
      raise ConfigError(f"a modality must be a plain name, got {modality!r}")
    if not os.path.isdir(export_dir):
      raise DataError(f"no export folder at {export_dir!r}")
    name = export_file_name(modality)
    if not os.path.exists(os.path.join(export_dir, name)):
      available = ", ".join(export_modalities(export_dir)) or "none"
      raise DataError(
        f"no {name} for modality {modality!r} in {export_dir!r}; available modalities: {available}"
      )
    embeddings = _load_npy(export_dir, name, required=True)
    return cls.from_arrays(
      embeddings,
      ids=_load_npy(export_dir, IDS_FILE),
      labels=_load_npy(export_dir, LABELS_FILE),
    )

  @classmethod
  def load(cls, path: str) -> Index:
    """An index written by `save`."""
    if not os.path.isdir(path):
      raise DataError(f"no saved index at {path!r}")
    unit = _load_npy(path, EMBEDDINGS_FILE, required=True)
    return cls(unit, ids=_load_npy(path, IDS_FILE), labels=_load_npy(path, LABELS_FILE))

  def save(self, path: str) -> None:
    """Writes the index as .npy files (no pickles) into the folder `path`, created if needed."""
    os.makedirs(path, exist_ok=True)
    for name, array in (
      (EMBEDDINGS_FILE, self._unit),
      (IDS_FILE, self._ids),
      (LABELS_FILE, self._labels),
    ):
      file = os.path.join(path, name)
      if array is not None:
        np.save(file, array, allow_pickle=False)
      elif os.path.exists(file):
        # A file left from an earlier index would be loaded as this one's.
        os.remove(file)

  @property
  def embeddings(self) -> np.ndarray:
    return self._unit

  @property
  def ids(self) -> np.ndarray | None:
    return self._ids

  @property
  def labels(self) -> np.ndarray | None:
    return self._labels

  def __len__(self) -> int:
    return self._unit.shape[0]

  @property
  def dim(self) -> int:
    return self._unit.shape[1]

  def __repr__(self) -> str:
    extras = [name for name in ("ids", "labels") if getattr(self, name) is not None]
    return f"Index({len(self)} x {self.dim}{''.join(', ' + e for e in extras)})"

  def search(
    self, queries, k: int, *, block_size: int = 1024, gallery_chunk: int | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar gallery rows of every query.

    Args:
      queries: [Q, d] query embeddings (any scale).
      k: results per query; clipped to the gallery size G.
      block_size: queries scored at once.
      gallery_chunk: gallery rows scored at once; None keeps block_size x gallery_chunk scores
        within SEARCH_BUDGET. A gallery smaller than a chunk is scored whole.

    Returns:
      scores [Q, min(k, G)] float32 cosine similarities, descending, and indices
      [Q, min(k, G)] int64 gallery rows; equal scores come lower index first.

    Raises:
      DataError: queries that are not [Q, d] with this index's d, or hold NaN or inf.
      ConfigError: k, block_size or gallery_chunk not a positive integer.
    """
    q = _embeddings("queries", queries)
    if q.shape[1] != self.dim:
      raise DataError(f"queries have dimension {q.shape[1]}, the index {self.dim}")
    k = min(_positive_int("k", k), len(self))
    block = _positive_int("block_size", block_size)
    if gallery_chunk is None:
      chunk = _round_up(SEARCH_BUDGET // (_BYTES_PER_SCORE * block), _GALLERY_MULTIPLE)
    else:
      chunk = _positive_int("gallery_chunk", gallery_chunk)
    # A gallery that fits in one chunk is padded as metrics pads it.
    chunk = min(chunk, _round_up(len(self), _GALLERY_MULTIPLE))
    if q.shape[0] == 0:
      return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)

    # Smaller query sets round up to a power of two, so that they share compiled shapes.
    block = min(block, max(_MIN_BLOCK, 1 << (q.shape[0] - 1).bit_length()))
    num_q = q.shape[0]
    q = np.pad(q, ((0, _round_up(num_q, block) - num_q), (0, 0)))
    chunks = self._chunks(chunk)
    num_gallery = jnp.asarray(len(self), jnp.int32)
    # Blocks are dispatched ahead (JAX runs them asynchronously) and gathered at the end; their
    # results are only [block, k].
    outs = [
      _search_block(jnp.asarray(q[i : i + block]), chunks, num_gallery, k=k)
      for i in range(0, q.shape[0], block)
    ]
    scores = np.concatenate([np.asarray(s) for s, _ in outs])[:num_q]
    indices = np.concatenate([np.asarray(i) for _, i in outs])[:num_q].astype(np.int64)
    return scores, indices

  def search_ids(self, queries, k: int, **kwargs) -> list[list[str]]:
    """The ids of the k most similar gallery rows of every query, best first; kwargs as
    `search`."""
    if self._ids is None:
      raise DataError("this index has no ids; build it with ids= or from an export with ids.npy")
    _, indices = self.search(queries, k, **kwargs)
    return [[str(self._ids[j]) for j in row] for row in indices]

  def _chunks(self, size: int) -> jax.Array:
    """[C, size, d] gallery, zero-padded to whole chunks."""
    # Kept for the next search with the same chunk size, one size at a time: repeated small
    # searches would otherwise copy the whole gallery each time.
    if size not in self._chunked:
      rows = _round_up(len(self), size)
      padded = jnp.pad(self._device, ((0, rows - len(self)), (0, 0)))
      self._chunked = {size: padded.reshape(rows // size, size, self.dim)}
    return self._chunked[size]


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _load_npy(folder: str, name: str, *, required: bool = False) -> np.ndarray | None:
  path = os.path.join(folder, name)
  if not os.path.exists(path):
    if required:
      raise DataError(f"missing {name} in {folder!r}")
    return None
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise DataError(f"cannot read {path!r}: {str(e).splitlines()[0]}") from None


def export_file_name(modality: str) -> str:
  """The file of `modality`'s embeddings in an export folder: "emb_<modality>.npy"."""
  return f"{EXPORT_PREFIX}{modality}{EXPORT_SUFFIX}"


def export_modalities(export_dir: str) -> list[str]:
  """The modalities with an emb_<modality>.npy file in `export_dir`, sorted by name."""
  if not os.path.isdir(export_dir):
    return []
  names = (
    n[len(EXPORT_PREFIX) : -len(EXPORT_SUFFIX)]
    for n in os.listdir(export_dir)
    if n.startswith(EXPORT_PREFIX) and n.endswith(EXPORT_SUFFIX)
  )
  return sorted(n for n in names if n)


# ----------------------------------------------------------------------------------------------
# Top-k files of paired embeddings


def write_topk_files(
  out_dir: str,
  embeddings: Mapping[str, np.ndarray],
  ids,
  k: int,
  *,
  directions: Sequence[tuple[str, str, str]] | None = None,
) -> dict[str, str]:
  """Top-k neighbours of paired embeddings, for every retrieval direction, written to `out_dir`.

  A direction (key, q, g) has the queries of modality q search the gallery of modality g (keys as
  `metrics.direction_names`: "i2t" and "t2i" for two modalities, "<q>2<g>" for more). Each gets
  <key>_indices.npy [N, k'] int64 and <key>_scores.npy [N, k'] float32 (k' = min(k, N)) and
  <key>.tsv with the columns query_id, rank (from 1), gallery_id and score.

  Args:
    out_dir: folder to write into, created if needed.
    embeddings: modality -> [N, d] embeddings of the same N paired items.
    ids: [N] ids of the pairs, naming both the queries and the gallery rows.
    k: neighbours per query.
    directions: (key, query modality, gallery modality) triples; default
      `metrics.direction_names(list(embeddings))`, every ordered pair of modalities.

  Returns:
    {"<key>_indices": path, "<key>_scores": path, "<key>_tsv": path} for every direction.

  Raises:
    DataError: not one id per item in every modality, a direction naming an absent modality,
      or embeddings as `Index.from_arrays` and `Index.search` reject them.
    ConfigError: k not a positive integer.
  """
  k = _positive_int("k", k)
  if directions is None:
    directions = metrics.direction_names(list(embeddings))
  ids = np.asarray(ids).astype(str)
  sizes = {name: len(x) for name, x in embeddings.items()}
  if any(n != len(ids) for n in sizes.values()):
    raise DataError(f"paired data needs one id per item: {len(ids)} ids, embeddings {sizes}")
  for key, q, g in directions:
    if not key or any(c in key for c in "/\\\0") or key.startswith("."):
      raise DataError(f"direction key {key!r} cannot name a file")
    missing = [m for m in (q, g) if m not in embeddings]
    if missing:
      raise DataError(
        f"direction {key!r} needs modalities {missing}, absent from {sorted(embeddings)}"
      )
  # Tabs and line breaks inside an id would break the table's rows and columns.
  clean = [" ".join(i.split()) if any(c in i for c in "\t\r\n") else i for i in ids]
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  indexes = {}  # gallery modality -> Index, each built once for all its directions
  for key, q, g in directions:
    if g not in indexes:
      indexes[g] = Index.from_arrays(embeddings[g], ids=ids)
    scores, indices = indexes[g].search(embeddings[q], k)
    for kind, array in (("indices", indices), ("scores", scores)):
      paths[f"{key}_{kind}"] = os.path.join(out_dir, f"{key}_{kind}.npy")
      np.save(paths[f"{key}_{kind}"], array, allow_pickle=False)
    paths[f"{key}_tsv"] = os.path.join(out_dir, f"{key}.tsv")
    with open(paths[f"{key}_tsv"], "w", encoding="utf-8") as f:
      f.write("query_id\trank\tgallery_id\tscore\n")
      for query, (row_scores, row_indices) in enumerate(zip(scores, indices, strict=True)):
        f.writelines(
          f"{clean[query]}\t{rank}\t{clean[j]}\t{s:.6f}\n"
          for rank, (s, j) in enumerate(zip(row_scores, row_indices, strict=True), start=1)
        )
  return paths
