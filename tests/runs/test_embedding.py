"""Tests of mscross.runs.embedding and settings.Evaluation: embedding a split in batches equals
embedding it at once, a population's embeddings equal its members' one by one, and the metrics
of a split against a NumPy reference (cosine ranking, mAP@all, P@k and, without labels,
Recall@k and MRR)."""

import jax
import numpy as np
import pytest
from helpers import small_config, spec_of, synthetic_split

from mscross.methods import models
from mscross.runs import embedding, settings

N = 10
P = 3
MUS = np.array([0.5, 1.0, 2.0], np.float32)


def random_params(net, inputs, seed):
  shapes = jax.eval_shape(net.init, jax.random.key(0), inputs)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


@pytest.fixture(scope="module")
def setup():
  """MS2GAN's joint retrieval, so that `mu` changes the embeddings; the embedding functions are
  shared by the tests because each one compiles per batch shape."""
  config = small_config("ms2gan")
  assert config.model.retrieval == "joint"
  net, _ = models.build_models(models.Architecture.of(config), spec_of(("a", "b")))
  split = synthetic_split(N, ("a", "b"), seed=1)
  members = [random_params(net, split.features, seed) for seed in range(P)]
  return {
    "split": split,
    "members": members,
    "embed": embedding.make_embed_fn(config.model.retrieval, net),
    "population": embedding.make_population_embed_fn(config.model.retrieval, net),
  }


def whole(split):
  return {m: np.asarray(x) for m, x in split.features.items()}


def test_embed_split_in_batches_equals_one_shot(setup, monkeypatch):
  split, params, embed = setup["split"], setup["members"][0], setup["embed"]
  once = np.asarray(embed(params, whole(split), 0.7, 0.0))
  assert once.shape == (2, N, 16)  # [normalize(spec); mu * normalize(emb)], 8 + 8 wide
  # Batches of 4, 4 and a last, short one of 2.
  monkeypatch.setattr(embedding, "EMBED_BATCH", 4)
  got = embedding.embed_split(embed, params, split, 0.7, 0.0)
  assert isinstance(got, np.ndarray) and got.shape == once.shape
  np.testing.assert_allclose(got, once, rtol=1e-6, atol=1e-6)


def test_population_embeddings_equal_each_member(setup, monkeypatch):
  split, members = setup["split"], setup["members"]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *members)
  monkeypatch.setattr(embedding, "EMBED_BATCH", 4)
  got = embedding.embed_split(setup["population"], stacked, split, MUS, np.zeros(P, np.float32))
  assert got.shape == (P, 2, N, 16)
  for p in range(P):
    want = np.asarray(setup["embed"](members[p], whole(split), MUS[p], 0.0))
    np.testing.assert_allclose(got[p], want, rtol=1e-5, atol=1e-6, err_msg=f"member {p}")
  # Each member's mu weighs its common half: distinct members must differ.
  assert not np.allclose(got[0], got[1])


# ----------------------------------------------------------------------------------------------
# Metrics against a NumPy reference
# ----------------------------------------------------------------------------------------------


def ref_cosine(q, g):
  q, g = np.asarray(q, np.float64), np.asarray(g, np.float64)
  q = q / np.linalg.norm(q, axis=1, keepdims=True)
  g = g / np.linalg.norm(g, axis=1, keepdims=True)
  return q @ g.T


def ref_labelled(q, g, labels, ks):
  """mAP@all and P@k of queries q ranking gallery g; relevant: sharing a label. Random
  embeddings have no tied similarities, so a plain descending order is THE ranking."""
  sims = ref_cosine(q, g)
  aps, precisions = [], {k: [] for k in ks}
  for i in range(len(q)):
    order = sorted(range(len(g)), key=lambda j, i=i: -sims[i, j])
    rel = [bool(np.any((labels[i] > 0) & (labels[j] > 0))) for j in order]
    if not any(rel):
      continue
    hits, precision_at_hits = 0, []
    for rank, r in enumerate(rel, start=1):
      if r:
        hits += 1
        precision_at_hits.append(hits / rank)
    aps.append(sum(precision_at_hits) / len(precision_at_hits))
    for k in ks:
      precisions[k].append(sum(rel[:k]) / k)
  out = {"map": float(np.mean(aps)), "num_queries": float(len(aps))}
  out.update({f"p@{k}": float(np.mean(v)) for k, v in precisions.items()})
  return out


def ref_instance(q, g, ks):
  """Recall@k and MRR when query i's only relevant item is gallery item i."""
  sims = ref_cosine(q, g)
  ranks = [1 + sum(sims[i, j] > sims[i, i] for j in range(len(g))) for i in range(len(q))]
  out = {f"r@{k}": float(np.mean([r <= k for r in ranks])) for k in ks}
  out["mrr"] = float(np.mean([1.0 / r for r in ranks]))
  out["map"] = out["mrr"]
  return out


def metrics_config():
  return small_config(
    "acmr",
    {
      "eval.precision_ks": (1, 3),
      "eval.map_ks": (5,),
      "eval.recall_ks": (1, 2),
      "eval.block_size": 0,
    },
  )


# (modalities, the direction keys of `metrics.direction_names` in their order)
DIRECTIONS = {
  "K2": (("a", "b"), [("i2t", 0, 1), ("t2i", 1, 0)]),
  "K3": (
    ("a", "b", "c"),
    [("a2b", 0, 1), ("a2c", 0, 2), ("b2a", 1, 0), ("b2c", 1, 2), ("c2a", 2, 0), ("c2b", 2, 1)],
  ),
}


@pytest.mark.parametrize("case", sorted(DIRECTIONS))
def test_labelled_metrics_match_reference(case):
  modalities, directions = DIRECTIONS[case]
  split = synthetic_split(12, modalities, seed=2)
  emb = np.random.default_rng(3).normal(size=(len(modalities), 12, 5)).astype(np.float32)
  got = settings.Evaluation.of(metrics_config()).metrics(emb, split)
  names = ("map", "p@1", "p@3")
  for name in names:
    per_direction = []
    for key, q, g in directions:
      want = ref_labelled(emb[q], emb[g], split.label, ks=(1, 3))
      np.testing.assert_allclose(got[f"{key}_{name}"], want[name], rtol=1e-5, err_msg=key)
      assert got[f"{key}_num_queries"] == want["num_queries"] == 12
      per_direction.append(want[name])
    np.testing.assert_allclose(got[f"avg_{name}"], np.mean(per_direction), rtol=1e-5)
  # Exactly the configured ranks, and no direction but these.
  assert {k.split("_", 1)[0] for k in got} == {key for key, _, _ in directions} | {"avg"}
  first = directions[0][0]
  assert {k for k in got if k.startswith(f"{first}_")} == {
    f"{first}_{m}" for m in ("map", "map@R", "map@5", "p@1", "p@3", "num_queries")
  }


def test_unlabelled_metrics_match_reference():
  modalities, directions = DIRECTIONS["K2"]
  split = synthetic_split(12, modalities, seed=4, labelled=False)
  emb = np.random.default_rng(5).normal(size=(2, 12, 5)).astype(np.float32)
  got = settings.Evaluation.of(metrics_config()).metrics(emb, split)
  for name in ("r@1", "r@2", "mrr", "map"):
    wants = [ref_instance(emb[q], emb[g], ks=(1, 2))[name] for _, q, g in directions]
    for (key, _, _), want in zip(directions, wants, strict=True):
      np.testing.assert_allclose(got[f"{key}_{name}"], want, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(got[f"avg_{name}"], np.mean(wants), rtol=1e-5)
  assert "i2t_p@1" not in got
