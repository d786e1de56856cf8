"""bench/generalisation.py's diagnosis of a finished run, checked against NumPy references: the
per-query APs, the groups that partition the queries, and the files."""

import json

import numpy as np
import pytest
from helpers import ap_reference, bench_module, cosine64

from mscross.retrieval import evaluate


@pytest.fixture(scope="module")
def gen():
  with bench_module("generalisation") as module:
    yield module


def test_per_query_ap_is_the_numpy_ap_of_each_query(gen):
  rng = np.random.default_rng(0)
  emb = {"image": rng.normal(size=(30, 4)), "text": rng.normal(size=(30, 4))}
  labels = np.eye(3)[rng.integers(0, 3, 30)]
  labels[7] = 0  # a query with no relevant item has no AP
  ap = gen.per_query_ap(emb, labels, ("image", "text"))
  s = cosine64(emb["image"], emb["text"])
  rel = (labels @ labels.T) > 0
  expected = [ap_reference(s[i], rel[i]) if rel[i].any() else np.nan for i in range(30)]
  np.testing.assert_allclose(ap["i2t"], expected, atol=1e-6)
  assert np.isnan(ap["t2i"][7])


def test_diagnosis_of_a_finished_run(gen, trained_run, tmp_path):
  workdir, _ = trained_run
  out = tmp_path / "diag"
  assert gen.main(["--workdir", workdir, "--hardest", "3", "--out", str(out)]) == 0
  result = json.loads(out.with_suffix(".json").read_text())
  test = result["splits"]["test"]
  model = evaluate.load(workdir)
  scores = model.split_metrics("test")
  # Every direction's mean AP is the run's own metric of that direction.
  for row in test["directions"]:
    assert row["model"] == pytest.approx(scores[f"{row['direction']}_map"], abs=1e-5)
    assert 0 <= row["sm_wins"] + row["model_wins"] <= 1
  # Each grouping partitions the queries: every direction's queries counted once.
  total = sum(r["queries"] for r in test["by_class"])
  assert total == 2 * test["queries"]
  for key in ("by_novelty", "by_position"):
    assert sum(r["queries"] for r in test[key]) == total
  pooled = sum(r["model"] * r["queries"] for r in test["by_class"]) / total
  assert pooled == pytest.approx(result["test"]["model"], abs=1e-9)
  assert [r["group"] for r in result["validation_parts"]][0] == "all (random)"
  assert len(test["hardest"]) == 3
  gaps = [r["sm"] - r["model"] for r in test["hardest"]]
  assert gaps == sorted(gaps, reverse=True)
  assert "Where the model loses" in out.with_suffix(".md").read_text()
