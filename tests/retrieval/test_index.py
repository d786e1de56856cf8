"""Tests of mscross.retrieval: top-k search, persistence, export folders and top-k files.

Search results are checked against a stable argsort of float64 similarities. Test data keeps the
two orders equal: tied embeddings use entries 0 and +-1/2, whose norms and dot products float32
represents exactly, and continuous ones are re-drawn until no two similarities of a query are
closer than float32 rounding could swap.
"""

import os

import numpy as np
import pytest
from helpers import THREE_DIRECTIONS

from mscross.errors import ConfigError, DataError
from mscross.retrieval import index as retrieval
from mscross.retrieval.index import Index


def unit_np(x):
  x = np.asarray(x, np.float64)
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.where(norm > 0, norm, 1.0)


def topk_np(queries, gallery, k):
  """(scores, indices) [Q, min(k, G)]: descending cosine, ties by lower index."""
  s = unit_np(queries) @ unit_np(gallery).T
  order = np.argsort(-s, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(s, order, axis=1), order


def tied(seed, n, dim=8, num_protos=4):
  """Rows drawn from a few prototypes, some scaled, some zero: many exactly equal scores."""
  rng = np.random.default_rng(seed)
  # Four entries of +-1/2: unit norm exactly, so scores are exact multiples of 1/4.
  protos = np.zeros((num_protos, dim), np.float32)
  for row in protos:
    row[rng.choice(dim, 4, replace=False)] = rng.choice(np.float32([-0.5, 0.5]), 4)
  x = protos[rng.integers(0, num_protos, n)] * rng.choice(np.float32([0.5, 1, 4]), (n, 1))
  x[rng.random(n) < 0.1] = 0.0
  return x


def separated(seed, num_q, num_g, dim=8):
  rng = np.random.default_rng(seed)
  for _ in range(100):
    q = rng.standard_normal((num_q, dim)).astype(np.float32)
    g = rng.standard_normal((num_g, dim)).astype(np.float32)
    if np.diff(np.sort(unit_np(q) @ unit_np(g).T, axis=1), axis=1).min() > 1e-6:
      return q, g
  raise AssertionError("no well-separated draw")


def check_search(queries, gallery, k, **kw):
  scores, indices = Index.from_arrays(gallery).search(queries, k, **kw)
  expected_scores, expected_indices = topk_np(queries, gallery, k)
  assert scores.dtype == np.float32 and indices.dtype == np.int64
  np.testing.assert_array_equal(indices, expected_indices)
  np.testing.assert_allclose(scores, expected_scores, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Search


@pytest.mark.parametrize(
  ("block_size", "gallery_chunk"),
  [
    (1024, None),  # one block larger than Q, one chunk
    (8, None),  # 37 queries: four full blocks and a padded one
    (16, 7),  # gallery chunks smaller than k, the last one padded
    (3, 1),  # one gallery row per chunk
  ],
)
def test_search_matches_stable_argsort_with_ties(block_size, gallery_chunk):
  queries, gallery = tied(0, 37), tied(1, 60)
  check_search(queries, gallery, 10, block_size=block_size, gallery_chunk=gallery_chunk)
  # The ties are real: without the index order the result would differ.
  s = unit_np(queries) @ unit_np(gallery).T
  assert (np.sort(s, axis=1)[:, -10:-1] == np.sort(s, axis=1)[:, -9:]).any()


@pytest.mark.parametrize(("k", "gallery_chunk"), [(1, None), (45, 16)])
def test_search_matches_argsort_on_continuous_embeddings(k, gallery_chunk):
  queries, gallery = separated(2, 21, 45)
  check_search(queries, gallery, k, block_size=8, gallery_chunk=gallery_chunk)


@pytest.mark.parametrize("gallery_chunk", [None, 9])
def test_duplicate_gallery_rows_tie_wherever_they_sit(gallery_chunk):
  # Identical rows must score identically in every position of a chunk and in every chunk,
  # or the tie rule would not apply to duplicates.
  rng = np.random.default_rng(16)
  queries, base = separated(17, 13, 150)
  gallery = base[rng.integers(0, 150, 400)]
  check_search(queries, gallery, 30, gallery_chunk=gallery_chunk)


def test_signed_zero_scores_tie_in_index_order():
  # q . (+0, +0) is +0.0 and q . (-0, -0) is -0.0 (a zero row stays zero when normalised); the
  # two must tie, as in metrics, rather than order by their bit patterns.
  gallery = np.float32([[-0.0, -0.0], [0.0, 0.0], [-0.0, -0.0], [1.0, 1.0], [0.0, 0.0]])
  scores, indices = Index.from_arrays(gallery).search(np.float32([[1, 1]]), 5, gallery_chunk=2)
  np.testing.assert_array_equal(indices, [[3, 0, 1, 2, 4]])
  assert scores[0, 0] == pytest.approx(1.0) and np.all(scores[0, 1:] == 0)


def test_k_larger_than_the_gallery_is_clipped():
  queries, gallery = tied(3, 4), tied(4, 6)
  scores, indices = Index.from_arrays(gallery).search(queries, 50)
  assert scores.shape == indices.shape == (4, 6)
  np.testing.assert_array_equal(np.sort(indices, axis=1), np.tile(np.arange(6), (4, 1)))
  check_search(queries, gallery, 50, gallery_chunk=4)


def test_no_queries_give_empty_results():
  scores, indices = Index.from_arrays(tied(5, 6)).search(np.zeros((0, 8), np.float32), 3)
  assert scores.shape == indices.shape == (0, 3)


def test_search_ids_and_scale_invariance():
  queries, gallery = separated(6, 5, 12)
  ids = [f"item-{i}" for i in range(12)]
  index = Index.from_arrays(gallery * 7.0, ids=ids)
  _, expected = topk_np(queries, gallery, 3)
  assert index.search_ids(queries * 0.1, 3) == [[ids[j] for j in row] for row in expected]
  with pytest.raises(DataError, match="no ids"):
    Index.from_arrays(gallery).search_ids(queries, 3)


@pytest.mark.parametrize(
  ("queries", "k", "kwargs", "error", "match"),
  [
    (np.ones((2, 5)), 3, {}, DataError, "dimension 5"),
    (np.ones(8), 3, {}, DataError, "2-D"),
    (np.full((2, 8), np.nan), 3, {}, DataError, "NaN"),
    (np.ones((2, 8)), 0, {}, ConfigError, "k must"),
    (np.ones((2, 8)), 2.5, {}, ConfigError, "k must"),
    (np.ones((2, 8)), 3, {"block_size": 0}, ConfigError, "block_size"),
    (np.ones((2, 8)), 3, {"gallery_chunk": -1}, ConfigError, "gallery_chunk"),
  ],
)
def test_bad_search_input_raises(queries, k, kwargs, error, match):
  with pytest.raises(error, match=match):
    Index.from_arrays(tied(7, 10)).search(queries, k, **kwargs)


@pytest.mark.parametrize(
  ("embeddings", "kwargs", "match"),
  [
    (np.zeros((0, 4)), {}, "empty"),
    (np.ones(4), {}, "2-D"),
    (np.float32([[1, np.inf]]), {}, "infinite"),
    (np.ones((3, 2)), {"ids": ["a", "b"]}, "ids"),
    (np.ones((3, 2)), {"labels": np.ones((2, 4))}, "labels"),
  ],
)
def test_bad_gallery_raises(embeddings, kwargs, match):
  with pytest.raises(DataError, match=match):
    Index.from_arrays(embeddings, **kwargs)


def test_index_is_immutable_and_leaves_its_input_alone():
  gallery = tied(8, 10)
  index = Index.from_arrays(gallery, labels=np.eye(10))
  assert gallery.flags.writeable
  with pytest.raises(ValueError):
    index.embeddings[0, 0] = 1.0
  with pytest.raises(AttributeError):
    index.embeddings = gallery
  assert len(index) == 10 and index.dim == 8 and index.ids is None
  np.testing.assert_allclose(np.linalg.norm(index.embeddings[gallery.any(axis=1)], axis=1), 1.0)


# ----------------------------------------------------------------------------------------------
# Persistence


def test_save_load_round_trip(tmp_path):
  queries, gallery = separated(9, 6, 30)
  labels = np.eye(3, dtype=np.float32)[np.arange(30) % 3]
  index = Index.from_arrays(gallery, ids=[f"g{i}" for i in range(30)], labels=labels)
  index.save(str(tmp_path / "idx"))
  for name in ("embeddings.npy", "ids.npy", "labels.npy"):
    np.load(tmp_path / "idx" / name, allow_pickle=False)  # plain arrays, no pickles
  loaded = Index.load(str(tmp_path / "idx"))
  np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
  np.testing.assert_array_equal(loaded.ids, index.ids)
  np.testing.assert_array_equal(loaded.labels, labels)
  for a, b in zip(loaded.search(queries, 5), index.search(queries, 5), strict=True):
    np.testing.assert_array_equal(a, b)
  # Saving an index without ids over it removes the old ids rather than leaving them behind.
  Index.from_arrays(gallery).save(str(tmp_path / "idx"))
  assert Index.load(str(tmp_path / "idx")).ids is None


def test_load_errors(tmp_path):
  with pytest.raises(DataError, match="no saved index"):
    Index.load(str(tmp_path / "missing"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(DataError, match="embeddings.npy"):
    Index.load(str(tmp_path / "empty"))
  (tmp_path / "empty" / "embeddings.npy").write_bytes(b"not an array")
  with pytest.raises(DataError, match="cannot read"):
    Index.load(str(tmp_path / "empty"))


def test_from_export_reads_numpy_files(tmp_path):
  rng = np.random.default_rng(10)
  img, txt, aud = rng.standard_normal((3, 9, 4)).astype(np.float32)
  ids = np.array([f"pair{i}" for i in range(9)])
  labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 9)]
  arrays = {"emb_image": img, "emb_text": txt, "emb_audio": aud, "ids": ids, "labels": labels}
  for name, array in arrays.items():
    np.save(tmp_path / f"{name}.npy", array)
  assert retrieval.export_modalities(str(tmp_path)) == ["audio", "image", "text"]
  assert retrieval.export_file_name("audio") == "emb_audio.npy"
  image_index = Index.from_export(str(tmp_path), "image")
  text_index = Index.from_export(str(tmp_path), "text")
  audio_index = Index.from_export(str(tmp_path), "audio")
  np.testing.assert_allclose(image_index.embeddings, unit_np(img), atol=1e-6)
  np.testing.assert_allclose(text_index.embeddings, unit_np(txt), atol=1e-6)
  np.testing.assert_allclose(audio_index.embeddings, unit_np(aud), atol=1e-6)
  np.testing.assert_array_equal(text_index.ids, ids)
  np.testing.assert_array_equal(text_index.labels, labels)
  assert text_index.search_ids(img[:1], 1) == [[ids[np.argmax(unit_np(img[:1]) @ unit_np(txt).T)]]]

  with pytest.raises(DataError, match="available modalities: audio, image, text") as info:
    Index.from_export(str(tmp_path), "video")
  assert "\n" not in str(info.value)
  for bad in ("", "../emb_text", "a/b"):
    with pytest.raises(ConfigError, match="plain name"):
      Index.from_export(str(tmp_path), bad)
  with pytest.raises(DataError, match="no export folder"):
    Index.from_export(str(tmp_path / "missing"), "text")
  np.save(tmp_path / "ids.npy", np.array(list(ids), dtype=object), allow_pickle=True)
  with pytest.raises(DataError, match="cannot read"):
    Index.from_export(str(tmp_path), "text")
  os.remove(tmp_path / "ids.npy")
  assert Index.from_export(str(tmp_path), "text").ids is None


def test_from_export_of_unlabelled_data(tmp_path):
  # Unlabelled exports have no labels.npy.
  rng = np.random.default_rng(18)
  np.save(tmp_path / "emb_left.npy", rng.standard_normal((5, 3)).astype(np.float32))
  np.save(tmp_path / "ids.npy", np.array([f"x{i}" for i in range(5)]))
  index = Index.from_export(str(tmp_path), "left")
  assert index.labels is None and len(index) == 5
  with pytest.raises(DataError, match="available modalities: left$"):
    Index.from_export(str(tmp_path), "right")


# ----------------------------------------------------------------------------------------------
# Top-k files


def check_topk_files(paths, embeddings, ids, directions, k):
  """Every direction's files against a stable argsort; `directions` as (key, query, gallery)."""
  clean = [" ".join(i.split()) for i in ids]
  n = len(ids)
  assert set(paths) == {f"{key}_{kind}" for key, _, _ in directions for kind in KINDS}
  for key, q, g in directions:
    assert os.path.basename(paths[f"{key}_tsv"]) == f"{key}.tsv"
    indices = np.load(paths[f"{key}_indices"])
    scores = np.load(paths[f"{key}_scores"])
    expected_scores, expected_indices = topk_np(embeddings[q], embeddings[g], k)
    assert indices.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
    with open(paths[f"{key}_tsv"], encoding="utf-8") as f:
      lines = f.read().splitlines()
    k_eff = min(k, n)
    assert lines[0] == "query_id\trank\tgallery_id\tscore" and len(lines) == 1 + n * k_eff
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == 4 for row in rows)
    for query in (0, n - 1):
      for rank in (1, k_eff):
        row = rows[query * k_eff + rank - 1]
        j = indices[query, rank - 1]
        assert row == [clean[query], str(rank), clean[j], f"{scores[query, rank - 1]:.6f}"]


KINDS = ("indices", "scores", "tsv")


def test_write_topk_files_two_modalities(tmp_path):
  img, txt = separated(11, 7, 7)
  ids = [f"p{i}" for i in range(6)] + ["tab\there"]
  embeddings = {"image": img, "text": txt}
  paths = retrieval.write_topk_files(str(tmp_path), embeddings, ids, k=3)
  # Two modalities keep the keys i2t and t2i.
  check_topk_files(paths, embeddings, ids, [("i2t", "image", "text"), ("t2i", "text", "image")], 3)
  with pytest.raises(DataError, match="one id per item"):
    retrieval.write_topk_files(str(tmp_path), embeddings, ids[:3], k=3)
  with pytest.raises(ConfigError, match="k must"):
    retrieval.write_topk_files(str(tmp_path), embeddings, ids, k=0)


def test_write_topk_files_three_modalities_with_ties(tmp_path):
  n = 12
  embeddings = {"image": tied(20, n), "text": tied(21, n), "audio": tied(22, n)}
  ids = np.array([f"item {i}" for i in range(n)])
  paths = retrieval.write_topk_files(str(tmp_path / "all"), embeddings, ids, k=20)
  directions = THREE_DIRECTIONS
  check_topk_files(paths, embeddings, ids, directions, 20)  # k clipped to the 12 items
  assert sorted(os.listdir(tmp_path / "all")) == sorted(
    f"{key}{suffix}"
    for key, _, _ in directions
    for suffix in ("_indices.npy", "_scores.npy", ".tsv")
  )
  # Only the directions asked for.
  some = [("a_to_t", "audio", "text")]
  paths = retrieval.write_topk_files(str(tmp_path / "some"), embeddings, ids, 2, directions=some)
  check_topk_files(paths, embeddings, ids, some, 2)
  with pytest.raises(DataError, match="video"):
    retrieval.write_topk_files(
      str(tmp_path), embeddings, ids, 2, directions=[("x", "video", "text")]
    )
  with pytest.raises(DataError, match="at least two modalities"):
    retrieval.write_topk_files(str(tmp_path), {"image": embeddings["image"]}, ids, 2)
