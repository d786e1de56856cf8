"""Tests of the ranking curves and per-class AP (mscross.metrics.curves) against per-query NumPy
loops over their definitions, and against the ranking metrics they must agree with."""

import numpy as np
import pytest
from helpers import ap_reference, cosine64

from mscross import metrics
from mscross.errors import ConfigError, DataError
from mscross.metrics import per_class_ap, precision_at_k_grid, ranking_curves


def curves_reference(q, g, ql, gl, steps, ks):
  """Per-query loops over the definition: interpolated precision and P@K, mean over R >= 1."""
  sims = cosine64(q, g)
  interp, p_at_k = [], []
  for i in range(len(q)):
    rel = (gl @ ql[i]) > 0
    if not rel.any():
      continue
    hits = np.cumsum(rel[np.argsort(-sims[i], kind="stable")])
    num_rel, prec = hits[-1], hits / np.arange(1, len(g) + 1)
    # recall(k) >= j / steps, compared exactly in integers.
    interp.append([prec[hits * steps >= j * num_rel].max() for j in range(steps + 1)])
    p_at_k.append([hits[k - 1] / k for k in ks])
  return np.mean(interp, axis=0), np.mean(p_at_k, axis=0), len(interp)


def test_precision_at_k_grid():
  grid = precision_at_k_grid(360)
  assert grid[0] == 1 and grid[-1] == 360 and {5, 10} <= set(grid.tolist())
  assert (np.diff(grid) > 0).all() and 30 <= len(grid) <= 45
  np.testing.assert_array_equal(precision_at_k_grid(3), [1, 2, 3])


def test_curves_of_a_known_ranking():
  # The gallery lies at 0, 10, ..., 40 degrees; both labelled queries rank it in that order.
  angles = np.deg2rad([0, 10, 20, 30, 40])
  gallery = np.stack([np.cos(angles), np.sin(angles)], 1)
  g_labels = np.eye(3)[[0, 1, 0, 2, 1]]
  queries = np.array([[1.0, 0.0], [np.cos(-0.1), np.sin(-0.1)], [0.0, 1.0]])
  q_labels = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])  # hits 10100, 01001, none
  out = ranking_curves(
    queries, gallery, q_labels, g_labels, ks=[1, 2, 3, 4, 5, 9], recall_steps=10, block_size=2
  )
  assert out["num_queries"] == 2  # the query without labels has nothing to find
  # Query 1: P = 1, 1/2, 2/3, 1/2, 2/5 -> 1 up to recall 1/2, then 2/3.
  # Query 2: P = 0, 1/2, 1/3, 1/4, 2/5 -> 1/2 up to recall 1/2, then 2/5.
  expected = [0.75] * 6 + [(2 / 3 + 2 / 5) / 2] * 5
  np.testing.assert_allclose(out["precision"], expected, rtol=1e-6)
  np.testing.assert_allclose(out["recall"], np.linspace(0, 1, 11))
  np.testing.assert_allclose(out["precision_at_k"], [0.5, 0.5, 0.5, 0.375, 0.4, 0.4], rtol=1e-6)
  assert list(out["k"]) == [1, 2, 3, 4, 5, 5]  # K = 9 is clipped to the gallery size


@pytest.mark.parametrize("block_size", [8, None])
def test_curves_match_numpy_reference_and_metrics(block_size):
  rng = np.random.default_rng(0)
  q, g = rng.normal(size=(37, 6)), rng.normal(size=(53, 6))
  ql = (rng.random((37, 4)) < 0.3).astype(np.float32)
  gl = (rng.random((53, 4)) < 0.3).astype(np.float32)
  ks = [1, 3, 5, 10, 20, 53]
  out = ranking_curves(q, g, ql, gl, ks=ks, block_size=block_size)
  interp, p_at_k, count = curves_reference(q, g, ql, gl, metrics.RECALL_STEPS, ks)
  assert out["num_queries"] == count < 37
  np.testing.assert_allclose(out["precision"], interp, atol=1e-6)
  np.testing.assert_allclose(out["precision_at_k"], p_at_k, atol=1e-6)
  # Interpolated precision never increases with recall.
  assert (np.diff(out["precision"]) <= 1e-12).all()
  m = metrics.ranking_metrics(q, g, ql, gl, ks=ks)
  np.testing.assert_allclose(out["precision_at_k"], [m[f"p@{k}"] for k in ks], atol=1e-6)
  # The default K grid ends at the gallery size, where P@G = R / G.
  full = ranking_curves(q, g, ql, gl, block_size=block_size)
  np.testing.assert_array_equal(full["k"], precision_at_k_grid(53))
  rel = (ql @ gl.T) > 0
  chance = rel.sum(axis=1)[rel.any(axis=1)] / 53
  assert full["precision_at_k"][-1] == pytest.approx(chance.mean(), abs=1e-6)  # float32 per query


def test_curves_without_any_relevant_item_are_nan():
  out = ranking_curves(np.ones((3, 2)), np.ones((4, 2)), np.zeros((3, 2)), np.ones((4, 2)))
  assert out["num_queries"] == 0 and np.isnan(out["precision"]).all()


@pytest.mark.parametrize(
  ("kwargs", "error"),
  [
    ({"query_emb": np.ones((3, 5))}, DataError),
    ({"query_labels": np.ones((2, 2))}, DataError),
    ({"gallery_emb": np.full((4, 2), np.nan)}, DataError),
    ({"ks": [0, 1]}, ConfigError),
    ({"recall_steps": 0}, ConfigError),
    ({"block_size": 0}, ConfigError),
  ],
)
def test_curves_reject_bad_input(kwargs, error):
  args = {
    "query_emb": np.ones((3, 2)),
    "gallery_emb": np.ones((4, 2)),
    "query_labels": np.ones((3, 2)),
    "gallery_labels": np.ones((4, 2)),
  }
  with pytest.raises(error):
    ranking_curves(**{**args, **kwargs})


def tied_multi_label(seed, num_q, num_g, num_classes=5):
  """Embeddings with exact ties (entries 0 and +-1/2) and multi-hot labels, some rows empty."""
  rng = np.random.default_rng(seed)
  protos = rng.choice(np.float32([-0.5, 0.5]), (4, 8))
  for row in protos:
    row[rng.choice(8, 4, replace=False)] = 0.0
  q = protos[rng.integers(0, 4, num_q)] * rng.choice(np.float32([0.5, 1, 4]), (num_q, 1))
  g = protos[rng.integers(0, 4, num_g)]
  ql = (rng.random((num_q, num_classes)) < 0.3).astype(np.float32)
  gl = (rng.random((num_g, num_classes)) < 0.3).astype(np.float32)
  ql[:, -1] = 0.0  # a class no query holds
  return q, g, ql, gl


@pytest.mark.parametrize("block_size", [8, 1024, None])
def test_per_class_ap_matches_a_per_query_loop(block_size):
  q, g, ql, gl = tied_multi_label(1, 41, 60)
  aps, counts = per_class_ap(q, g, ql, gl, block_size=block_size)
  sims = cosine64(q, g)
  rel = (ql @ gl.T) > 0
  ap = np.array([ap_reference(sims[i], rel[i]) if rel[i].any() else np.nan for i in range(41)])
  assert aps.shape == counts.shape == (5,) and counts.dtype == np.int64
  for c in range(4):
    members = (ql[:, c] > 0) & rel.any(axis=1)
    assert counts[c] == members.sum() > 0
    assert aps[c] == pytest.approx(ap[members].mean(), abs=1e-6), c
  assert counts[4] == 0 and np.isnan(aps[4])


def test_per_class_ap_is_ranking_metrics_map_on_each_class():
  q, g, ql, gl = tied_multi_label(2, 30, 45)
  aps, counts = per_class_ap(q, g, ql, gl)
  for c in range(4):
    rows = ql[:, c] > 0
    m = metrics.ranking_metrics(q[rows], g, ql[rows], gl)
    assert aps[c] == pytest.approx(m["map"], abs=1e-7) and counts[c] == m["num_queries"]
  # Single-label data: class means weighted by class size give the overall mAP.
  rng = np.random.default_rng(3)
  labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
  emb = rng.normal(size=(40, 6)) + labels @ rng.normal(size=(3, 6))
  other = rng.normal(size=(40, 6)) + labels @ rng.normal(size=(3, 6))
  aps, counts = per_class_ap(emb, other, labels, labels)
  overall = metrics.ranking_metrics(emb, other, labels, labels)["map"]
  assert np.sum(aps * counts) / counts.sum() == pytest.approx(overall, abs=1e-9)
