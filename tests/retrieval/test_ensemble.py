"""Ensembles: the combined embeddings rank by the mean of the members' cosines, and an ensemble
serves where one model does."""

import numpy as np
import pytest
from helpers import cosine64

import mscross
from mscross.errors import ConfigError
from mscross.retrieval import ensemble, evaluate


def test_the_cosine_of_combined_embeddings_is_the_members_mean_cosine():
  rng = np.random.default_rng(0)
  # Three members of different widths and scales.
  q = [rng.normal(size=(5, d)) * s for d, s in ((4, 1.0), (7, 30.0), (3, 0.01))]
  g = [rng.normal(size=(9, d)) for d in (4, 7, 3)]
  mean_cos = np.mean([cosine64(a, b) for a, b in zip(q, g, strict=True)], axis=0)
  cq, cg = ensemble.combine(q), ensemble.combine(g)
  np.testing.assert_allclose(cq @ cg.T, mean_cos, atol=1e-6)
  # Unit rows: an Index's inner products are the cosines themselves.
  np.testing.assert_allclose(np.linalg.norm(cq, axis=-1), 1.0, atol=1e-6)
  # Stacked [K, N, e] embeddings combine row by row.
  stacked = ensemble.combine([np.stack([a, a]) for a in q])
  np.testing.assert_allclose(stacked[1], cq, atol=1e-7)


def test_a_zero_row_stays_zero_and_one_member_is_that_member_normalised():
  x = np.array([[0.0, 0.0], [3.0, 4.0]])
  np.testing.assert_allclose(ensemble.combine([x]), [[0, 0], [0.6, 0.8]], atol=1e-7)
  with pytest.raises(ValueError, match="at least one"):
    ensemble.combine([])


def test_load_refuses_a_member_of_several_workdirs(trained_run):
  workdir, _ = trained_run
  with pytest.raises(ConfigError, match="several workdirs load as one ensemble"):
    mscross.load([workdir, workdir], member=0)
  with pytest.raises(ConfigError, match="member must be"):
    mscross.load(workdir, member="all")


def test_an_ensemble_of_one_run_twice_ranks_as_that_run(trained_run):
  workdir, _ = trained_run
  one = mscross.load(workdir)
  both = mscross.load([workdir, workdir])
  assert isinstance(both, ensemble.Ensemble) and len(both) == 2 and both.step == (one.step,) * 2
  assert both.split_metrics("test") == pytest.approx(one.split_metrics("test"), abs=1e-6)
  raw = one.workdir.source.load(("test",))[0]["test"].features
  scores, rows = both.search("left", raw["left"][:3], both.index("right", raw["right"]), k=2)
  alone, alone_rows = one.search("left", raw["left"][:3], one.index("right", raw["right"]), k=2)
  np.testing.assert_allclose(scores, alone, atol=1e-5)
  np.testing.assert_array_equal(rows, alone_rows)


def test_eval_refuses_a_member_of_an_ensemble_and_several_runs_without_one(trained_run):
  workdir, _ = trained_run
  with pytest.raises(ConfigError, match="--ensemble evaluates every member"):
    evaluate.evaluate_workdir(workdir, member=0, ensemble=True)
  with pytest.raises(ConfigError, match="add --ensemble"):
    evaluate.evaluate_workdir([workdir, workdir])
