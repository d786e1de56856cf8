"""Tests of the non-deep baselines (mscross.baselines): CCA against a NumPy CCA and scikit-learn's
CCA, semantic matching against separately fitted logistic regressions, selection on validation
only, K = 3 views, unlabelled data, and a smoke run on the real Wikipedia features."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from mscross import baselines
from mscross.data import SPLITS, Split, load_split
from mscross.errors import ConfigError, DataError
from mscross.metrics import retrieval_metrics

SIZES = {"train": 400, "validation": 150, "test": 200}
PLANTED = 4
# Distinct noise per planted direction, so that their canonical correlations differ and each
# canonical direction is defined up to sign.
PLANTED_NOISE = (0.2, 0.4, 0.6, 0.8)
# Class k sits at +-3 on latent axis k // 2: every planted direction is needed to tell classes
# apart.
NUM_CLASSES = 2 * PLANTED


def planted(seed=0, *, widths=(12, 10), labelled=True, sizes=SIZES):
  """Splits whose views share a PLANTED-dim class signal, then independent noise.

  View m of an item is [z + noise, own noise] times a fixed random invertible matrix, where the
  latent z is its class's mean plus a little noise; only z is shared by the views.
  """
  rng = np.random.default_rng(seed)
  means = 3.0 * np.repeat(np.eye(PLANTED), 2, axis=0) * np.tile([1.0, -1.0], PLANTED)[:, None]
  mixing = [rng.normal(size=(d, d)) for d in widths]
  splits = {}
  for name in SPLITS:
    n = sizes[name]
    classes = np.arange(n) % NUM_CLASSES
    z = means[classes] + 0.3 * rng.normal(size=(n, PLANTED))
    features = {}
    for m, (d, mix) in enumerate(zip(widths, mixing, strict=True)):
      shared = z + rng.normal(size=(n, PLANTED)) * np.asarray(PLANTED_NOISE)
      own = rng.normal(size=(n, d - PLANTED))
      features[f"v{m}"] = (np.c_[shared, own] @ mix).astype(np.float32)
    label = np.eye(NUM_CLASSES, dtype=np.float32)[classes] if labelled else None
    splits[name] = Split(features, label, np.array([f"{name}{i}" for i in range(n)]), ())
  return splits


def numpy_cca(x, y, n):
  """(rho, a, b, x mean, y mean): CCA by inverse square roots of the covariances and an SVD."""
  mx, my = x.mean(0), y.mean(0)
  x, y = np.asarray(x - mx, np.float64), np.asarray(y - my, np.float64)

  def inv_sqrt(c):
    w, v = np.linalg.eigh(c)
    return (v / np.sqrt(w)) @ v.T

  kx, ky = inv_sqrt(x.T @ x / (len(x) - 1)), inv_sqrt(y.T @ y / (len(y) - 1))
  u, s, vt = np.linalg.svd(kx @ (x.T @ y / (len(x) - 1)) @ ky)
  return s[:n], kx @ u[:, :n], ky @ vt[:n].T, mx, my


class Recorder:
  """Stands in for `retrieval_metrics` inside mscross.baselines and records every call."""

  def __init__(self, monkeypatch, score=None):
    self.calls = []
    self.score = score
    monkeypatch.setattr(baselines, "retrieval_metrics", self)

  def __call__(self, embeddings, labels=None, **kwargs):
    embeddings = {m: np.array(z) for m, z in embeddings.items()}
    self.calls.append(embeddings)
    if self.score is None:
      return retrieval_metrics(embeddings, labels, **kwargs)
    return {"avg_map": self.score(len(self.calls) - 1, embeddings)}


def test_cca_finds_the_planted_signal_and_matches_numpy(monkeypatch):
  splits = planted()
  recorder = Recorder(monkeypatch)
  result = baselines.cca_baseline(splits)
  assert result["method"] == "cca" and result["chosen"] == {"dim": PLANTED}
  assert [row["dim"] for row in result["search"]] == [2, 4, 8, 10]  # clipped to min(12, 10)
  chance = 1 / NUM_CLASSES
  assert result["test"]["avg_map"] > 0.8 > 3 * chance
  assert result["test"] == retrieval_metrics(recorder.calls[-1], splits["test"].label)
  assert result["val"]["avg_map"] == max(row["val_avg_map"] for row in result["search"])

  x, y = splits["train"].features["v0"], splits["train"].features["v1"]
  rho, a, b, mx, my = numpy_cca(x, y, PLANTED)
  np.testing.assert_allclose(result["correlations"]["v0-v1"], rho, atol=1e-6)
  assert rho[-1] > 0.5  # the planted directions stand out from the noise
  # The last call scored test with the chosen dimension; its variates are numpy's up to one
  # sign per component, shared by both views.
  got = recorder.calls[-1]
  want_x = (splits["test"].features["v0"] - mx) @ a
  want_y = (splits["test"].features["v1"] - my) @ b
  signs = np.sign(np.sum(got["v0"] * want_x, axis=0))
  np.testing.assert_allclose(got["v0"], want_x * signs, atol=1e-4)
  np.testing.assert_allclose(got["v1"], want_y * signs, atol=1e-4)


def test_cca_solvers_agree():
  splits = planted(1)
  svd = baselines.cca_baseline(splits, dims=(2, 4, 6))
  nipals = baselines.cca_baseline(splits, dims=(2, 4, 6), solver="nipals")
  assert nipals["solver"] == "nipals" and nipals["chosen"] == svd["chosen"]
  np.testing.assert_allclose(nipals["correlations"]["v0-v1"], svd["correlations"]["v0-v1"], 1e-6)
  for key in ("i2t_map", "t2i_map", "avg_map", "avg_p@1"):
    assert nipals["test"][key] == pytest.approx(svd["test"][key], abs=1e-4)


def test_cca_weighted_scaling_and_eval_kwargs():
  splits = planted(2)
  plain = baselines.cca_baseline(splits, dims=(4,))
  weighted = baselines.cca_baseline(
    splits, dims=(4, 10), scaling="weighted", eval_kwargs={"ks": (1,), "map_ks": (10,)}
  )
  assert weighted["scaling"] == "weighted"
  assert {"avg_p@1", "avg_map@10"} <= set(weighted["test"]) and "avg_p@5" not in weighted["test"]
  # Down-weighting the noise directions makes extra dimensions nearly harmless.
  assert weighted["test"]["avg_map"] > plain["test"]["avg_map"] - 0.05


def test_cca_drops_a_constant_direction():
  # Proportions that sum to 1 (like topic vectors) are rank-deficient by one once centred.
  splits = planted(3)
  for name, split in splits.items():
    e = np.exp(split.features["v1"][:, :6])
    features = {"v0": split.features["v0"], "v1": (e / e.sum(1, keepdims=True)).astype("f4")}
    splits[name] = Split(features, split.label, split.ids, ())
  result = baselines.cca_baseline(splits)
  assert [row["dim"] for row in result["search"]] == [2, 4, 5]
  x, y = splits["train"].features["v0"], splits["train"].features["v1"][:, :5]
  rho = numpy_cca(x, y, 5)[0]  # the first five proportions carry all the information
  np.testing.assert_allclose(result["correlations"]["v0-v1"], rho[: result["chosen"]["dim"]], 1e-5)


def logistic(c, x, labels):
  # One BLAS thread, as in the baseline: threaded fits of this size crawl on a busy machine.
  with threadpool_limits(1):
    model = LogisticRegression(C=c, max_iter=baselines.LOGISTIC_MAX_ITER, random_state=0)
    return model.fit(x, labels.argmax(1))


def test_semantic_matching_is_logistic_posteriors_and_brute_force_choice(monkeypatch):
  splits = planted(4)
  cs = (0.001, 0.01, 0.1, 1.0)
  brute = []
  for c in cs:
    probs = {}
    for m, x in splits["train"].features.items():
      model = logistic(c, x, splits["train"].label)
      probs[m] = model.predict_proba(splits["validation"].features[m])
    brute.append(retrieval_metrics(probs, splits["validation"].label)["avg_map"])
  best = cs[int(np.argmax(brute))]

  recorder = Recorder(monkeypatch)
  result = baselines.semantic_matching_baseline(splits, cs=cs)
  assert result["method"] == "sm" and result["chosen"] == {"C": best}
  np.testing.assert_allclose([row["val_avg_map"] for row in result["search"]], brute, atol=1e-6)
  assert result["test"]["avg_map"] > 0.8

  got = recorder.calls[-1]
  for m, x in splits["train"].features.items():
    model = logistic(best, x, splits["train"].label)
    np.testing.assert_allclose(got[m], model.predict_proba(splits["test"].features[m]), atol=1e-5)


@pytest.mark.parametrize(
  "run, key, grid",
  [
    (baselines.cca_baseline, "dim", (2, 4, 6, 8)),
    (baselines.semantic_matching_baseline, "C", (0.01, 0.1, 1.0, 10.0)),
  ],
)
def test_selection_sees_validation_only(monkeypatch, run, key, grid):
  splits = planted(5)
  search = {"dim": "dims", "C": "cs"}[key]
  val_scores = [0.1, 0.7, 0.3, 0.5]

  def score(call, embeddings):
    rows = len(next(iter(embeddings.values())))
    # Test would prefer the first candidate, were it ever asked.
    return val_scores[call] if rows == SIZES["validation"] else 1.0 - call

  recorder = Recorder(monkeypatch, score)
  result = run(splits, **{search: grid})
  sizes = [len(next(iter(e.values()))) for e in recorder.calls]
  assert sizes == [SIZES["validation"]] * 4 + [SIZES["test"]]  # test scored once, last
  assert result["chosen"] == {key: grid[1]}
  assert result["search"] == [
    {key: g, "val_avg_map": v} for g, v in zip(grid, val_scores, strict=True)
  ]
  monkeypatch.undo()

  # With real metrics: a test split of pure noise changes nothing but the test figures.
  rng = np.random.default_rng(0)
  test = splits["test"]
  noise = Split(
    {m: rng.normal(size=x.shape).astype("f4") for m, x in test.features.items()},
    test.label[rng.permutation(len(test))],
    test.ids,
    (),
  )
  a, b = run(splits, **{search: grid}), run(splits | {"test": noise}, **{search: grid})
  assert a["chosen"] == b["chosen"] and a["search"] == b["search"] and a["val"] == b["val"]
  assert b["test"]["avg_map"] < a["test"]["avg_map"] - 0.3


def test_three_views_pairwise():
  splits = planted(6, widths=(12, 10, 8))
  result = baselines.cca_baseline(splits, dims=(3,))
  dummy = {m: np.eye(4, 3, dtype="f4") + i for i, m in enumerate(("v0", "v1", "v2"))}
  assert list(result["test"]) == list(retrieval_metrics(dummy, np.eye(4, dtype="f4")))
  directions = ["v02v1", "v02v2", "v12v0", "v12v2", "v22v0", "v22v1"]
  values = [result["test"][f"{d}_map"] for d in directions]
  assert result["test"]["avg_map"] == pytest.approx(np.mean(values))
  assert set(result["correlations"]) == {"v0-v1", "v0-v2", "v1-v2"}
  for a, b in (("v0", "v1"), ("v0", "v2"), ("v1", "v2")):
    pair = {
      name: Split({m: s.features[m] for m in (a, b)}, s.label, s.ids, ())
      for name, s in splits.items()
    }
    alone = baselines.cca_baseline(pair, dims=(3,))["test"]
    assert result["test"][f"{a}2{b}_map"] == pytest.approx(alone["i2t_map"], abs=1e-6)
    assert result["test"][f"{b}2{a}_map"] == pytest.approx(alone["t2i_map"], abs=1e-6)

  sm = baselines.semantic_matching_baseline(splits, cs=(1.0,))
  assert {f"{d}_map" for d in directions} < set(sm["test"])


def test_unlabelled_data():
  splits = planted(7, labelled=False)
  with pytest.raises(ConfigError, match="unlabelled"):
    baselines.semantic_matching_baseline(splits)
  result = baselines.cca_baseline(splits)
  assert {"i2t_r@1", "t2i_r@1", "avg_r@1", "avg_map", "avg_median_rank"} <= set(result["test"])
  assert result["test"]["avg_r@1"] > 5 / SIZES["test"]  # far above a random ranking
  # Rank metrics are better when smaller.
  by_rank = baselines.cca_baseline(splits, select_metric="avg_median_rank")
  scores = [row["val_avg_median_rank"] for row in by_rank["search"]]
  assert by_rank["chosen"]["dim"] == by_rank["search"][int(np.argmin(scores))]["dim"]


def test_bad_input():
  splits = planted(8)
  with pytest.raises(ConfigError, match="single-label"):
    multi = dict(splits)
    train = splits["train"]
    multi["train"] = Split(
      train.features, np.minimum(train.label + train.label[::-1], 1), train.ids, ()
    )
    baselines.semantic_matching_baseline(multi)
  with pytest.raises(ConfigError, match="select_metric"):
    baselines.cca_baseline(splits, dims=(2,), select_metric="avg_nope")
  with pytest.raises(ConfigError, match="dims"):
    baselines.cca_baseline(splits, dims=(0, 2))
  with pytest.raises(ConfigError, match="cs"):
    baselines.semantic_matching_baseline(splits, cs=())
  with pytest.raises(ConfigError, match="scaling"):
    baselines.cca_baseline(splits, scaling="whitened")
  with pytest.raises(ConfigError, match="eval_kwargs"):
    baselines.cca_baseline(splits, eval_kwargs={"k": 5})
  with pytest.raises(DataError, match="missing"):
    baselines.cca_baseline({"train": splits["train"], "test": splits["test"]})


def test_deterministic():
  splits = planted(9)
  for run in (baselines.cca_baseline, baselines.semantic_matching_baseline):
    a, b = run(splits), run(splits)
    assert (a["chosen"], a["search"], a["val"], a["test"]) == (
      b["chosen"],
      b["search"],
      b["val"],
      b["test"],
    )


@pytest.mark.data("wikipedia/raw_features.mat", "wikipedia/trainset_txt_img_cat.list")
def test_wikipedia_smoke(data_dir):
  splits = {}
  for name in SPLITS:
    split = load_split("wikipedia", name, data_dir)
    # The project's Wikipedia transform: Hellinger map of the image histograms, text as is.
    features = {"image": np.sqrt(split.features["image"]), "text": split.features["text"]}
    splits[name] = Split(features, split.label, split.ids, split.class_names)
  cca = baselines.cca_baseline(splits)
  weighted = baselines.cca_baseline(splits, scaling="weighted")
  sm = baselines.semantic_matching_baseline(splits)
  for label, r in (("CCA", cca), ("CCA weighted", weighted), ("SM", sm)):
    t = r["test"]
    print(
      f"\nWikipedia {label}: chosen {r['chosen']}, test mAP i2t {t['i2t_map']:.4f} "
      f"t2i {t['t2i_map']:.4f} avg {t['avg_map']:.4f} (fit {r['fit_seconds']:.2f} s)"
    )
  assert 0.15 < cca["test"]["avg_map"] < 0.30
  assert 0.15 < weighted["test"]["avg_map"] < 0.30
  assert 0.18 < sm["test"]["avg_map"] < 0.35
