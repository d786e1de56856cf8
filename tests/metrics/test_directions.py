"""Tests of retrieval directions between K >= 2 modalities and of `retrieval_metrics`
(mscross.metrics.directions): keys, per-direction values against scikit-learn and NumPy
references, and averages over all directions."""

import json
import math

import numpy as np
import pytest
from helpers import THREE_DIRECTIONS
from sklearn.metrics import average_precision_score

from mscross import metrics
from mscross.errors import DataError
from mscross.metrics import direction_names, retrieval_metrics

LABELLED = ["map", "map@R", "map@50", "p@1", "p@5", "p@10", "p@50", "p@100"]
UNLABELLED = ["r@1", "r@5", "r@10", "median_rank", "mean_rank", "mrr", "map"]


def cosine_np(q, g):
  q, g = np.asarray(q, np.float64), np.asarray(g, np.float64)
  return (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
    g / np.linalg.norm(g, axis=1, keepdims=True)
  ).T


def sklearn_map(q, g, labels):
  s, rel = cosine_np(q, g), (labels @ labels.T) > 0
  return float(np.mean([average_precision_score(r, row) for row, r in zip(s, rel, strict=True)]))


def recall_np(q, g, k):
  s = cosine_np(q, g)
  ranks = [
    int(np.flatnonzero(np.argsort(-row, kind="stable") == i)[0]) + 1 for i, row in enumerate(s)
  ]
  return float(np.mean(np.array(ranks) <= k))


def paired(seed, n, modalities, *, num_classes=4, dim=8):
  """Class-correlated embeddings of n paired items per modality, and their one-hot labels."""
  rng = np.random.default_rng(seed)
  labels = np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, n)]
  centers = rng.standard_normal((num_classes, dim))
  shared = rng.standard_normal((n, dim))
  emb = {
    m: (labels @ centers + shared + rng.standard_normal((n, dim))).astype(np.float32)
    for m in modalities
  }
  return emb, labels


# ----------------------------------------------------------------------------------------------
# direction_names


@pytest.mark.parametrize("names", [("image", "text"), ("text", "image"), ("left", "right")])
def test_two_modalities_keep_the_i2t_t2i_keys(names):
  a, b = names
  assert direction_names(names) == [("i2t", a, b), ("t2i", b, a)]


def test_three_or_more_modalities_are_named_by_modality():
  assert direction_names(["image", "text", "audio"]) == THREE_DIRECTIONS
  five = direction_names(("a", "b", "c", "d", "e"))
  assert len(five) == 20 == len({key for key, _, _ in five})
  assert [(q, g) for _, q, g in five] == [(q, g) for q in "abcde" for g in "abcde" if q != g]


@pytest.mark.parametrize(
  ("names", "match"),
  [
    (["image"], "at least two"),
    ([], "at least two"),
    (["a", "a"], "distinct"),
    (["a", ""], "distinct"),
    (["a", "b2c", "a2b", "c"], "ambiguous"),  # "a" -> "b2c" and "a2b" -> "c" are both a2b2c
  ],
)
def test_bad_modality_names_raise_one_line(names, match):
  with pytest.raises(DataError, match=match) as info:
    direction_names(names)
  assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------
# retrieval_metrics


def test_two_labelled_modalities():
  emb, labels = paired(0, 30, ("image", "text"))
  got = retrieval_metrics(emb, labels, block_size=16)
  expected_keys = [f"{d}_{n}" for n in LABELLED for d in ("i2t", "t2i", "avg")]
  assert list(got) == expected_keys + ["i2t_num_queries", "t2i_num_queries"]
  assert all(type(v) is float for v in got.values())
  json.dumps(got)
  img, txt = emb["image"], emb["text"]
  i2t = metrics.ranking_metrics(img, txt, labels, labels, block_size=16)
  t2i = metrics.ranking_metrics(txt, img, labels, labels, block_size=16)
  for n in LABELLED:
    assert got[f"i2t_{n}"] == i2t[n] and got[f"t2i_{n}"] == t2i[n]
    assert got[f"avg_{n}"] == pytest.approx((i2t[n] + t2i[n]) / 2, abs=1e-12)
  assert got["i2t_map"] == pytest.approx(sklearn_map(img, txt, labels), abs=1e-5)
  assert got["t2i_map"] == pytest.approx(sklearn_map(txt, img, labels), abs=1e-5)
  assert got["i2t_map"] != got["t2i_map"]
  assert got["i2t_num_queries"] == got["t2i_num_queries"] == 30.0


def test_three_labelled_modalities():
  modalities = ("image", "text", "audio")
  emb, labels = paired(1, 40, modalities)
  got = retrieval_metrics(emb, labels, ks=(1, 5), map_ks=(10,), block_size=16)
  keys = [key for key, _, _ in direction_names(modalities)]
  names = ["map", "map@R", "map@10", "p@1", "p@5"]
  assert list(got) == [f"{d}_{n}" for n in names for d in (*keys, "avg")] + [
    f"{key}_num_queries" for key in keys
  ]
  for key, q, g in direction_names(modalities):
    assert got[f"{key}_map"] == pytest.approx(sklearn_map(emb[q], emb[g], labels), abs=1e-5)
  for n in names:
    values = [got[f"{key}_{n}"] for key in keys]
    assert got[f"avg_{n}"] == pytest.approx(sum(values) / 6, abs=1e-12)
  assert len({got[f"{key}_map"] for key in keys}) == 6


def test_three_unlabelled_modalities():
  modalities = ("a", "b", "c")
  emb, _ = paired(2, 33, modalities)
  got = retrieval_metrics(emb, recall_ks=(1, 3), block_size=8)
  keys = ["a2b", "a2c", "b2a", "b2c", "c2a", "c2b"]
  names = ["r@1", "r@3", "median_rank", "mean_rank", "mrr", "map"]
  assert list(got) == [f"{d}_{n}" for n in names for d in (*keys, "avg")] + [
    f"{key}_num_queries" for key in keys
  ]
  for key, q, g in direction_names(modalities):
    assert got[f"{key}_r@3"] == pytest.approx(recall_np(emb[q], emb[g], 3), abs=1e-12)
    assert got[f"{key}_map"] == got[f"{key}_mrr"]
    assert got[f"{key}_num_queries"] == 33.0
    assert got[f"{key}_median_rank"] == metrics.instance_metrics(emb[q], emb[g])["median_rank"]
  assert got["avg_map"] == pytest.approx(math.fsum(got[f"{k}_map"] for k in keys) / 6, abs=1e-12)


def test_two_unlabelled_modalities_keep_the_keys():
  emb, _ = paired(3, 20, ("image", "text"))
  got = retrieval_metrics(emb)
  assert [k for k in got if k.startswith("avg_")] == [f"avg_{n}" for n in UNLABELLED]
  assert got["i2t_r@1"] == pytest.approx(recall_np(emb["image"], emb["text"], 1), abs=1e-12)
  assert got["t2i_r@10"] == pytest.approx(recall_np(emb["text"], emb["image"], 10), abs=1e-12)


@pytest.mark.parametrize(
  ("embeddings", "labels", "match"),
  [
    ({"image": np.ones((4, 3))}, None, "at least two"),
    ({"image": np.ones((4, 3)), "text": np.ones((5, 3))}, None, "one shape"),
    ({"image": np.ones((4, 3)), "text": np.ones((4, 2))}, None, "one shape"),
    ({"image": np.ones((4, 3)), "text": np.ones(4)}, None, "2-D"),
    ({"image": np.ones((4, 3)), "text": np.ones((4, 3))}, np.ones((3, 2)), "labels"),
  ],
)
def test_bad_input_raises_one_line(embeddings, labels, match):
  with pytest.raises(DataError, match=match) as info:
    retrieval_metrics(embeddings, labels)
  assert "\n" not in str(info.value)
