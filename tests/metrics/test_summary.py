"""Tests of mscross.metrics.summary: the mean and spread of several models' metrics."""

import math

import numpy as np

from mscross.metrics import mean_and_std


def test_mean_and_std_skip_nan_entries():
  nan = float("nan")
  results = [
    {"avg_map": 0.2, "i2t_map": nan, "t2i_map": nan},
    {"avg_map": 0.4, "i2t_map": 0.3, "t2i_map": nan},
    {"avg_map": 0.9, "i2t_map": 0.5, "t2i_map": nan},
  ]
  mean, std = mean_and_std(results)
  assert list(mean) == list(std) == ["avg_map", "i2t_map", "t2i_map"]
  np.testing.assert_allclose(mean["avg_map"], 0.5)
  # The sample standard deviation (n - 1): sqrt(((-0.3)^2 + 0.1^2 + 0.4^2) / 2).
  np.testing.assert_allclose(std["avg_map"], math.sqrt(0.26 / 2))
  np.testing.assert_allclose(mean["i2t_map"], 0.4)
  np.testing.assert_allclose(std["i2t_map"], math.sqrt(0.02))
  # No member has a value: the mean is NaN, the spread 0.
  assert math.isnan(mean["t2i_map"]) and std["t2i_map"] == 0.0
  assert all(isinstance(v, float) for v in [*mean.values(), *std.values()])


def test_mean_and_std_of_one_member():
  mean, std = mean_and_std([{"avg_map": 0.25, "avg_p@1": 0.5}])
  assert mean == {"avg_map": 0.25, "avg_p@1": 0.5}
  assert std == {"avg_map": 0.0, "avg_p@1": 0.0}
  # One finite value among NaNs is one member too.
  mean, std = mean_and_std([{"x": 0.25}, {"x": float("nan")}])
  assert mean == {"x": 0.25} and std == {"x": 0.0}
  assert mean_and_std([]) == ({}, {})
