"""Tests of the instance-level metrics of unlabelled paired data (mscross.metrics.instance)
against a per-query argsort loop and scikit-learn's average precision.

Tied embeddings use entries 0 and +-1/2 (times a power of two), whose norms and dot products
float32 represents exactly, so float64 references see exactly the ties the float32
implementation sees; continuous ones are re-drawn until no two similarities of a query are
closer than float32 rounding could swap.
"""

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mscross import metrics
from mscross.errors import ConfigError, DataError
from mscross.metrics import instance_metrics

KS = (1, 2, 5, 10)


def cosine_np(q, g):
  q, g = np.asarray(q, np.float64), np.asarray(g, np.float64)
  qn = np.linalg.norm(q, axis=1, keepdims=True)
  gn = np.linalg.norm(g, axis=1, keepdims=True)
  return (q / np.where(qn > 0, qn, 1.0)) @ (g / np.where(gn > 0, gn, 1.0)).T


def instance_np(q, g, ks=KS):
  """The definitions, one query at a time: the stable rank of the pair from an argsort, and
  scikit-learn's AP with the pair as the only positive."""
  s = cosine_np(q, g)
  ranks, aps = [], []
  for i, row in enumerate(s):
    order = np.argsort(-row, kind="stable")
    ranks.append(int(np.flatnonzero(order == i)[0]) + 1)
    aps.append(average_precision_score(np.arange(len(row)) == i, row))
  ranks = np.array(ranks)
  out = {f"r@{k}": float(np.mean(ranks <= k)) for k in ks}
  out["median_rank"] = float(np.median(ranks))
  out["mean_rank"] = float(np.mean(ranks))
  out["mrr"] = out["map"] = float(np.mean(aps))
  out["num_queries"] = float(len(ranks))
  return out


def separated(seed, n, dim=8):
  rng = np.random.default_rng(seed)
  for _ in range(100):
    shared = rng.standard_normal((n, dim))
    # Pairs share a component, so that their ranks spread over the first few places.
    q = (shared + rng.standard_normal((n, dim))).astype(np.float32)
    g = (shared + rng.standard_normal((n, dim))).astype(np.float32)
    if np.diff(np.sort(cosine_np(q, g), axis=1), axis=1).min() > 1e-6:
      return q, g
  raise AssertionError("no well-separated draw")


def tied(seed, n, num_protos=4):
  """Rows from a few prototypes, some scaled, some zero, some duplicated: many exact ties."""
  rng = np.random.default_rng(seed)
  protos = np.zeros((num_protos, 8), np.float32)
  for row in protos:
    row[rng.choice(8, 4, replace=False)] = rng.choice(np.float32([-0.5, 0.5]), 4)
  x = protos[rng.integers(0, num_protos, n)] * rng.choice(np.float32([0.5, 1, 4]), (n, 1))
  x[rng.random(n) < 0.1] = 0.0
  return x


def assert_close(actual, expected, tol=1e-6):
  assert list(actual) == list(expected)
  for name in expected:
    assert actual[name] == pytest.approx(expected[name], abs=tol), name


def test_hand_computed_example_with_ties():
  q = np.float32([[1, 0], [0, 1], [0, -1], [-1, -1]])
  g = np.float32([[0, 1], [1, 0], [0, 2], [0, -1]])
  # Pair scores and the items above or tied with them:
  #   query 0: pair 0 scores 0; item 1 scores more, items 2 and 3 tie -> stable rank 2 (the
  #            pair has the lowest index of its group), rank 4 at the end of the group;
  #   query 1: pair 1 scores 0; items 0 and 2 score 1 -> rank 3 either way;
  #   query 2: pair 2 scores -1; items 1 and 3 score more, item 0 ties with a lower index
  #            -> stable rank 4, group end 4;
  #   query 3: pair 3 is first -> 1.
  got = instance_metrics(q, g, ks=(1, 2, 3, 9))
  expected = {
    "r@1": 1 / 4,
    "r@2": 2 / 4,
    "r@3": 3 / 4,
    "r@9": 1.0,  # a k beyond the gallery holds every pair
    "median_rank": 2.5,
    "mean_rank": 2.5,
    "mrr": (1 / 4 + 1 / 3 + 1 / 4 + 1) / 4,
    "map": (1 / 4 + 1 / 3 + 1 / 4 + 1) / 4,
    "num_queries": 4.0,
  }
  assert_close(got, expected, tol=1e-12)
  assert_close(got, instance_np(q, g, ks=(1, 2, 3, 9)), tol=1e-12)
  ranks, ends = metrics.instance_ranks(q, g)
  np.testing.assert_array_equal(ranks, [2, 3, 4, 1])
  np.testing.assert_array_equal(ends, [4, 3, 4, 1])


@pytest.mark.parametrize("block_size", [None, 8, 16])
def test_continuous_embeddings_match_the_reference(block_size):
  q, g = separated(0, 37)
  got = instance_metrics(q, g, ks=KS, block_size=block_size)
  assert_close(got, instance_np(q, g))
  assert 0 < got["r@1"] < got["r@10"] < 1


@pytest.mark.parametrize("seed", [1, 2])
def test_ties_match_the_reference_and_sklearn(seed):
  q, g = tied(seed, 45), tied(seed + 10, 45)
  g[7] = g[3]  # a duplicate gallery item
  got = instance_metrics(q, g, ks=KS, block_size=16)
  expected = instance_np(q, g)
  assert_close(got, expected)
  # The ties matter: the stable rank and the rank at the end of the tie group differ.
  ranks, ends = metrics.instance_ranks(q, g, block_size=16)
  assert (ends > ranks).sum() > 10
  assert got["mrr"] != pytest.approx(float(np.mean(1 / ranks)), abs=1e-3)


def test_signed_zero_scores_tie():
  # q . (-0, -0) is -0.0 and q . (0, 0) is 0.0; they tie, as in scikit-learn.
  q = np.float32([[1, 1], [1, 1], [1, 1]])
  g = np.float32([[-0.0, -0.0], [0.0, 0.0], [1.0, 1.0]])
  ranks, ends = metrics.instance_ranks(q, g)
  np.testing.assert_array_equal(ranks, [2, 3, 1])
  np.testing.assert_array_equal(ends, [3, 3, 1])


def test_agrees_with_ranking_metrics_on_identity_labels():
  # With one-hot labels that give every item its own class, the labelled metrics see exactly
  # one relevant item per query: its pair. AP, and so "map", is then 1 / rank at the group's
  # end; P@k holds a pair within the top k as 1 / k.
  q, g = tied(3, 40), tied(4, 40)
  identity = np.eye(40, dtype=np.float32)
  labelled = metrics.ranking_metrics(q, g, identity, identity, ks=KS, map_ks=(5,), block_size=8)
  got = instance_metrics(q, g, ks=KS, block_size=8)
  assert got["map"] == pytest.approx(labelled["map"], abs=1e-7)
  for k in KS:
    assert got[f"r@{k}"] == pytest.approx(labelled[f"p@{k}"] * k, abs=1e-6)


def test_block_size_does_not_change_results():
  q, g = tied(5, 29), tied(6, 29)
  results = [instance_metrics(q, g, block_size=b) for b in (1, 8, 29, 1024, None)]
  for got in results[1:]:
    assert got == results[0]


def test_returns_python_floats():
  got = instance_metrics(*separated(7, 12))  # the defaults
  assert list(got) == ["r@1", "r@5", "r@10", "median_rank", "mean_rank", "mrr", "map"] + [
    "num_queries"
  ]
  assert all(type(v) is float for v in got.values())
  json.dumps(got)


@pytest.mark.parametrize(
  ("q", "g", "kwargs", "error", "match"),
  [
    (np.ones((3, 2)), np.ones((4, 2)), {}, DataError, "equal size: 3 queries, 4 gallery"),
    (np.ones((3, 2)), np.ones((3, 5)), {}, DataError, "sizes differ"),
    (np.ones((0, 2)), np.ones((0, 2)), {}, DataError, "empty"),
    (np.ones(3), np.ones(3), {}, DataError, "2-D"),
    (np.full((3, 2), np.inf), np.ones((3, 2)), {}, DataError, "infinite"),
    (np.ones((3, 2)), np.ones((3, 2)), {"ks": (0,)}, ConfigError, "ks"),
    (np.ones((3, 2)), np.ones((3, 2)), {"block_size": 0}, ConfigError, "block_size"),
  ],
)
def test_invalid_inputs_raise_one_line(q, g, kwargs, error, match):
  with pytest.raises(error, match=match) as info:
    instance_metrics(q, g, **kwargs)
  assert "\n" not in str(info.value)
