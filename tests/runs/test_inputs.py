"""The input transform against NumPy float64 references, including features of extreme scale."""

import dataclasses

import numpy as np
import pytest
from helpers import synthetic_split

from mscross.errors import DataError
from mscross.runs.inputs import Normalizer


def _reference_zscores(x: np.ndarray, train: np.ndarray) -> np.ndarray:
  train = train.astype(np.float64)
  mean, std = train.mean(axis=0), train.std(axis=0)
  return (x.astype(np.float64) - mean) / np.where(std > 0, std, 1.0)


@pytest.mark.parametrize("scale", [1.0, 1e-20, 1e20, 1e30, 3e37])
def test_standardisation_is_scale_free(scale):
  """Features of any float32 magnitude get the z-scores of the same features at scale 1: the
  statistics of ~1e30 features overflowed float32 once and trained on noise without a word."""
  split = synthetic_split(200, seed=3)
  scaled = dataclasses.replace(
    split,
    features={m: (x * np.float32(scale)).astype(np.float32) for m, x in split.features.items()},
  )
  norm = Normalizer.fit(scaled, standardize=True, power=1.0, powers={})
  for m, x in split.features.items():
    expected = _reference_zscores(x, x)
    np.testing.assert_allclose(norm.transform(m, scaled.features[m]), expected, atol=2e-4)


def test_huge_unstandardised_features_are_refused_in_one_line():
  split = synthetic_split(50)
  huge = dataclasses.replace(
    split, features={m: x * np.float32(1e30) for m, x in split.features.items()}
  )
  with pytest.raises(DataError, match=r"as large as .*e\+30 and data.standardize is off"):
    Normalizer.fit(huge, standardize=False, power=1.0, powers={})
