"""Tests of the labelled ranking metrics (mscross.metrics.ranking) and of cosine similarity
against slow per-query NumPy references and scikit-learn.

The references below rank every query with its own argsort and walk the ranks in plain loops,
sharing no code with the vectorised implementation. Test data is built so that float32 and
float64 similarities order items identically: continuous embeddings are re-drawn until no two
similarities of a query are closer than float32 rounding could swap, and tied embeddings use
entries of 0 and +-1/2 (times a power of two) whose norms and dot products float32 represents
exactly. Sizes stay within a few shape buckets, as each new bucket costs a compilation.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ap_reference
from sklearn.metrics import average_precision_score

from mscross import metrics
from mscross.errors import ConfigError, DataError
from mscross.metrics import cosine_similarity, ranking, ranking_metrics

KS = (1, 5, 10, 50, 100)
MAP_KS = (3, 50)
TOL = 1e-5


# ----------------------------------------------------------------------------------------------
# References


def cosine_np(q, g):
  q = np.asarray(q, np.float64)
  g = np.asarray(g, np.float64)
  qn = np.linalg.norm(q, axis=1, keepdims=True)
  gn = np.linalg.norm(g, axis=1, keepdims=True)
  return (q / np.where(qn > 0, qn, 1.0)) @ (g / np.where(gn > 0, gn, 1.0)).T


def relevance_np(query_labels, gallery_labels):
  rel = np.zeros((len(query_labels), len(gallery_labels)), bool)
  for i, labels in enumerate(query_labels):
    rel[i] = np.any((labels > 0) & (gallery_labels > 0), axis=1)
  return rel


def stable_ranking(scores):
  """Gallery indices by descending score, ties by lower index first."""
  return np.argsort(-scores, kind="stable")


def ap_at_r_np(scores, relevant):
  r = relevant[stable_ranking(scores)]
  num_rel = int(r.sum())
  total, hits = 0.0, 0
  for k in range(1, num_rel + 1):
    if r[k - 1]:
      hits += 1
      total += hits / k
  return total / num_rel


def ap_at_k_np(scores, relevant, k):
  r = relevant[stable_ranking(scores)][:k]
  total, hits = 0.0, 0
  for rank, is_rel in enumerate(r, start=1):
    if is_rel:
      hits += 1
      total += hits / rank
  return total / hits if hits else 0.0


def precision_at_k_np(scores, relevant, k):
  r = relevant[stable_ranking(scores)][:k]
  return r.sum() / len(r)


def ranking_metrics_np(scores, relevant, ks=KS, map_ks=MAP_KS):
  per_query = {}
  for i in range(len(scores)):
    if not relevant[i].any():
      continue
    values = {
      "map": ap_reference(scores[i], relevant[i]),
      "map@R": ap_at_r_np(scores[i], relevant[i]),
      **{f"map@{k}": ap_at_k_np(scores[i], relevant[i], k) for k in map_ks},
      **{f"p@{k}": precision_at_k_np(scores[i], relevant[i], k) for k in ks},
    }
    for name, v in values.items():
      per_query.setdefault(name, []).append(v)
  result = {name: float(np.mean(v)) for name, v in per_query.items()}
  result["num_queries"] = float(len(per_query.get("map", [])))
  return result


def sklearn_map(scores, relevant):
  aps = [average_precision_score(r, s) for s, r in zip(scores, relevant, strict=True) if r.any()]
  return float(np.mean(aps))


# ----------------------------------------------------------------------------------------------
# Data


def one_hot(rng, n, num_classes):
  return np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, n)]


def multi_hot(rng, n, num_classes, p=0.3):
  # Rows may be empty: such queries have no relevant item and such gallery items are never
  # relevant.
  return (rng.random((n, num_classes)) < p).astype(np.float32)


def separated_data(seed, num_q, num_g, *, num_classes=4, dim=8, multi_label=False):
  """Class-correlated continuous embeddings whose similarities are at least 1e-6 apart."""
  rng = np.random.default_rng(seed)
  labels = multi_hot if multi_label else one_hot
  for _ in range(100):
    centers = rng.standard_normal((num_classes, dim))
    ql, gl = labels(rng, num_q, num_classes), labels(rng, num_g, num_classes)
    q = ql @ centers + rng.standard_normal((num_q, dim))
    g = gl @ centers + rng.standard_normal((num_g, dim))
    if np.diff(np.sort(cosine_np(q, g), axis=1), axis=1).min() > 1e-6:
      return q.astype(np.float32), g.astype(np.float32), ql, gl
  raise AssertionError("no well-separated draw")


def tied_data(seed, num_q, num_g, *, num_classes=4, multi_label=False, num_protos=5):
  """Embeddings drawn from a few prototypes (plus zero vectors): many exactly equal scores."""
  rng = np.random.default_rng(seed)
  # Four entries of +-1/2 and four zeros: unit norm, exactly.
  protos = rng.choice(np.float32([-0.5, 0.5]), (num_protos, 8))
  for row in protos:
    row[rng.choice(8, 4, replace=False)] = 0.0

  def draw(n):
    # Powers of two keep normalisation exact.
    x = protos[rng.integers(0, num_protos, n)] * rng.choice(np.float32([0.5, 1, 4]), (n, 1))
    x[rng.random(n) < 0.1] = 0.0
    return x

  labels = multi_hot if multi_label else one_hot
  return draw(num_q), draw(num_g), labels(rng, num_q, num_classes), labels(rng, num_g, num_classes)


def assert_metrics_close(actual, expected, tol=TOL):
  assert actual.keys() == expected.keys()
  for name in expected:
    assert actual[name] == pytest.approx(expected[name], abs=tol, nan_ok=True), name


def check_against_references(q, g, ql, gl, **kw):
  scores, relevant = cosine_np(q, g), relevance_np(ql, gl)
  got = ranking_metrics(q, g, ql, gl, ks=KS, map_ks=MAP_KS, **kw)
  assert_metrics_close(got, ranking_metrics_np(scores, relevant))
  assert got["map"] == pytest.approx(sklearn_map(scores, relevant), abs=TOL)
  return got, scores, relevant


# ----------------------------------------------------------------------------------------------
# Tests


def test_cosine_similarity_matches_numpy_and_is_zero_for_zero_vectors():
  rng = np.random.default_rng(0)
  q, g = rng.standard_normal((6, 5)), rng.standard_normal((9, 5))
  q[2], g[4] = 0.0, 0.0
  s = np.asarray(cosine_similarity(jnp.asarray(q), jnp.asarray(g)))
  assert s.shape == (6, 9) and s.dtype == np.float32
  np.testing.assert_allclose(s, cosine_np(q, g), atol=1e-6)
  assert np.all(s[2] == 0) and np.all(s[:, 4] == 0)


def test_normalize_is_public_and_keeps_zero_rows():
  x = np.float32([[3, 4], [0, 0], [-1e-3, 0]])
  for fn in (metrics.normalize, metrics.normalize_jit):
    out = np.asarray(fn(jnp.asarray(x)))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0, 0], [-1, 0]], atol=1e-7)


def test_descending_key_orders_like_floats_and_ties_signed_zeros():
  x = np.float32([0.5, -0.0, 0.0, -1.0, 1.0, -0.5, 3e-38, -3e-38, np.inf, -np.inf, 0.5, -0.0])
  keys = np.asarray(ranking._descending_key(jnp.asarray(x)))
  np.testing.assert_array_equal(
    np.argsort(keys, kind="stable"), np.argsort(-x.astype(np.float64), kind="stable")
  )
  assert keys[1] == keys[2] == keys[11]


def test_hand_computed_example_without_ties():
  # Similarities 1, 0.6, 0, -1, 0.8 give the ranking 0, 4, 1, 2, 3 with relevance 1, 0, 1, 0, 1.
  q = [[1.0, 0.0]]
  g = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0], [0.8, 0.6]]
  ql, gl = [[1, 0]], [[1, 0], [1, 0], [0, 1], [1, 0], [0, 1]]
  got = ranking_metrics(q, g, ql, gl, ks=(1, 2, 5, 10))
  expected = {
    "map": (1 / 1 + 2 / 3 + 3 / 5) / 3,
    "map@R": (1 / 1 + 2 / 3) / 3,
    "map@50": (1 / 1 + 2 / 3 + 3 / 5) / 3,  # k clipped to the 5 items
    "p@1": 1.0,
    "p@2": 0.5,
    "p@5": 0.6,
    "p@10": 0.6,
    "num_queries": 1.0,
  }
  assert_metrics_close(got, expected, tol=1e-6)
  # The top 2 hold one relevant item, at rank 1.
  assert ranking_metrics(q, g, ql, gl, map_ks=(2,))["map@2"] == pytest.approx(1.0)


def test_hand_computed_example_with_ties():
  # Similarities 1, 0, 0, 0, -1 and relevance 0, 1, 1, 0, 1: items 1-3 form one tie group.
  q = [[1.0, 0.0]]
  g = [[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [0.0, -1.0], [-3.0, 0.0]]
  ql, gl = [[1, 0]], [[0, 1], [1, 0], [1, 0], [0, 1], [1, 0]]
  got = ranking_metrics(q, g, ql, gl, ks=(3,), map_ks=(3,))
  expected = {
    # Both tied relevant items get the precision at the group end, 2 hits at rank 4.
    "map": (2 / 4 + 2 / 4 + 3 / 5) / 3,
    # Cuts use index order within the tie: relevance 0, 1, 1, 0, 1.
    "map@R": (1 / 2 + 2 / 3) / 3,
    "map@3": (1 / 2 + 2 / 3) / 2,
    "p@3": 2 / 3,
    "num_queries": 1.0,
  }
  assert_metrics_close(got, expected, tol=1e-6)
  scores = cosine_np(q, g)[0]
  assert got["map"] == pytest.approx(average_precision_score(np.array(gl)[:, 0], scores))


def test_gallery_larger_than_query_set_ranks_every_gallery_item():
  # The only relevant items sit at gallery indices beyond the number of queries: a loop that
  # stops at the query count, as in DSCMR's public evaluation code, would never reach them.
  q = np.float32([[1, 0], [0, 1]])
  g = np.float32([[1, 0], [0.9, 0.1], [0.5, 0.5], [0.1, 0.9], [0, 1], [0.7, 0.3]])
  ql = np.float32([[1, 0], [0, 1]])
  gl = np.float32([[0, 0], [0, 0], [0, 0], [0, 0], [0, 1], [1, 0]])
  got = ranking_metrics(q, g, ql, gl, ks=(1, 2), map_ks=(2,))
  # Query 0 ranks item 5 third (after 0 and 1); query 1 ranks item 4 first.
  assert got["map"] == pytest.approx((1 / 3 + 1) / 2)
  assert got["map@2"] == pytest.approx((0 + 1) / 2)
  assert got["p@2"] == pytest.approx((0 + 1 / 2) / 2)
  assert got["num_queries"] == 2.0


@pytest.mark.parametrize("multi_label", [False, True])
def test_continuous_embeddings_match_references(multi_label):
  q, g, ql, gl = separated_data(1, 40, 60, multi_label=multi_label)
  got, _, relevant = check_against_references(q, g, ql, gl, block_size=16)
  assert 0 < got["map"] < 1
  if multi_label:
    assert got["num_queries"] == relevant.any(axis=1).sum() < 40


@pytest.mark.parametrize("multi_label", [False, True])
def test_tied_embeddings_match_references_and_sklearn(multi_label):
  q, g, ql, gl = tied_data(2, 40, 60, multi_label=multi_label)
  got, scores, relevant = check_against_references(q, g, ql, gl, block_size=16)
  # The ties matter: averaging precision in plain index order would give another mAP.
  naive = [ap_at_k_np(s, r, len(s)) for s, r in zip(scores, relevant, strict=True) if r.any()]
  assert abs(np.mean(naive) - got["map"]) > 1e-3
  # ...and mAP@all does not depend on the order of the gallery.
  perm = np.random.default_rng(0).permutation(len(g))
  shuffled = ranking_metrics(q, g[perm], ql, gl[perm], ks=KS, map_ks=MAP_KS, block_size=16)
  assert shuffled["map"] == pytest.approx(got["map"], abs=1e-7)


def test_precision_holds_over_a_long_ranking():
  # Scores cos(theta) for well-spread angles are exact enough to order identically in float32,
  # and R is about 1000 per query, so float32 accumulation is exercised over long sums.
  rng = np.random.default_rng(3)
  theta = rng.permutation(np.linspace(0.3, 2.8, 3000))
  g = np.stack([np.cos(theta), np.sin(theta)], 1).astype(np.float32)
  q = np.float32([[1, 0], [-1, 0], [2, 0], [-0.5, 0]])
  ql, gl = one_hot(rng, 4, 3), one_hot(rng, 3000, 3)
  check_against_references(q, g, ql, gl)
  q, g, ql, gl = tied_data(4, 8, 3000, multi_label=True)
  check_against_references(q, g, ql, gl)


def test_queries_without_relevant_items_are_skipped():
  q, g, ql, gl = tied_data(5, 30, 50)
  ql[::3] = 0.0  # no label at all
  ql[1::3] = np.float32([1, 0, 0, 0])  # a class that no gallery item has
  ql[2::3] = np.float32([0, 1, 0, 0])
  gl[gl[:, 0] > 0] = np.float32([0, 1, 0, 0])
  got = ranking_metrics(q, g, ql, gl, ks=KS, map_ks=MAP_KS, block_size=16)
  keep = np.arange(30) % 3 == 2
  assert got["num_queries"] == keep.sum() == 10
  subset = ranking_metrics(q[keep], g, ql[keep], gl, ks=KS, map_ks=MAP_KS, block_size=16)
  assert_metrics_close(got, subset, tol=1e-7)
  assert_metrics_close(got, ranking_metrics_np(cosine_np(q, g), relevance_np(ql, gl)))
  none = ranking_metrics(q, g, np.zeros_like(ql), gl, block_size=16)
  assert none["num_queries"] == 0.0 and np.isnan(none["map"]) and np.isnan(none["p@1"])


@pytest.mark.parametrize("data", [separated_data, tied_data])
def test_block_size_does_not_change_results(data):
  # 13 queries: two blocks of 8 (the second padded), one of 13, one larger block.
  q, g, ql, gl = data(6, 13, 45)
  expected = ranking_metrics_np(cosine_np(q, g), relevance_np(ql, gl))
  results = [
    ranking_metrics(q, g, ql, gl, ks=KS, map_ks=MAP_KS, block_size=b) for b in (8, 13, 1024)
  ]
  for got in results:
    assert_metrics_close(got, expected)
    assert_metrics_close(got, results[0], tol=1e-7)


@pytest.mark.parametrize(("num_q", "num_g"), [(13, 70), (70, 13)])
def test_query_and_gallery_sizes_differ(num_q, num_g):
  # ks reach past the smaller gallery, so clipping k to the gallery size is covered too.
  check_against_references(*separated_data(7, num_q, num_g), block_size=16)
  check_against_references(*tied_data(8, num_q, num_g, multi_label=True), block_size=16)


def test_ranking_metrics_returns_python_floats():
  got = ranking_metrics(*tied_data(11, 10, 12))  # the defaults
  assert list(got) == ["map", "map@R", "map@50"] + [f"p@{k}" for k in KS] + ["num_queries"]
  assert all(type(v) is float for v in got.values())


@pytest.mark.parametrize(
  ("kwargs", "error"),
  [
    ({"query_emb": np.zeros((3, 4))}, DataError),
    ({"query_labels": np.zeros((4, 2))}, DataError),
    ({"gallery_labels": np.zeros((5, 3))}, DataError),
    ({"query_emb": np.full((3, 2), np.nan)}, DataError),
    ({"gallery_emb": np.zeros((0, 2))}, DataError),
    ({"ks": (0,)}, ConfigError),
    ({"map_ks": (2.5,)}, ConfigError),
    ({"block_size": 0}, ConfigError),
  ],
)
def test_invalid_inputs_raise(kwargs, error):
  args = {
    "query_emb": np.ones((3, 2)),
    "gallery_emb": np.ones((5, 2)),
    "query_labels": np.ones((3, 2)),
    "gallery_labels": np.ones((5, 2)),
  }
  args.update(kwargs)
  with pytest.raises(error):
    ranking_metrics(**args)


# ----------------------------------------------------------------------------------------------
# The CPU (NumPy) ranking path against the XLA one


def labelled(seed, num_q, num_g, num_classes, *, dim=8, duplicates=0):
  """Separated continuous embeddings with multi-hot labels; `duplicates` gallery rows repeat
  earlier ones, which ties their scores exactly."""
  rng = np.random.default_rng(seed)
  q, g, _, _ = separated_data(seed, num_q, num_g - duplicates, dim=dim)
  g = np.concatenate([g, g[rng.choice(len(g), duplicates, replace=False)]])
  ql = (rng.random((num_q, num_classes)) < 0.3).astype(np.float32)
  gl = (rng.random((num_g, num_classes)) < 0.3).astype(np.float32)
  return q, g, ql, gl


def both_paths(monkeypatch, *args, **kw):
  host = metrics.ranking_metrics(*args, **kw)
  with monkeypatch.context() as m:
    m.setattr(ranking, "_host_ranking", lambda: False)
    xla = metrics.ranking_metrics(*args, **kw)
  return host, xla


@pytest.mark.parametrize(
  ("num_classes", "duplicates"),
  [(4, 0), (4, 12), (70, 5)],  # 70 classes: relevance from a matmul instead of bit masks
)
def test_cpu_ranking_path_equals_the_xla_path(monkeypatch, num_classes, duplicates):
  q, g, ql, gl = labelled(12, 23, 90, num_classes, duplicates=duplicates)
  kw = {"ks": (1, 5, 90, 200), "map_ks": (3, 50), "block_size": 8}
  host, xla = both_paths(monkeypatch, q, g, ql, gl, **kw)
  assert host.keys() == xla.keys()
  for name in host:
    assert host[name] == pytest.approx(xla[name], abs=1e-6), name
  s, rel = cosine_np(q, g), relevance_np(ql, gl)
  aps = [average_precision_score(r, row) for row, r in zip(s, rel, strict=True) if r.any()]
  assert host["map"] == pytest.approx(np.mean(aps), abs=1e-6)


def test_cpu_ranking_path_on_heavy_ties(monkeypatch):
  rng = np.random.default_rng(13)
  q, _, _, _ = tied_data(14, 19, 1)
  g, _, _, _ = tied_data(15, 70, 1)
  ql = (rng.random((19, 3)) < 0.4).astype(np.float32)
  gl = (rng.random((70, 3)) < 0.4).astype(np.float32)
  host, xla = both_paths(monkeypatch, q, g, ql, gl, ks=(1, 10, 70), map_ks=(7,), block_size=4)
  for name in host:
    assert host[name] == pytest.approx(xla[name], abs=1e-6), name


def test_default_block_size_follows_the_memory_budget():
  assert metrics.auto_block_size(20_000, host=True) == 1024
  big = metrics.auto_block_size(1_000_000, host=True)
  assert big < 1024 and big & (big - 1) == 0
  assert big * 1_000_000 * ranking._HOST_BYTES_PER_ENTRY <= metrics.MEMORY_BUDGET
  assert metrics.auto_block_size(10**9, host=False) == 8
  q, g, ql, gl = labelled(16, 30, 40, 3)
  assert metrics.ranking_metrics(q, g, ql, gl) == metrics.ranking_metrics(
    q, g, ql, gl, block_size=16
  )
