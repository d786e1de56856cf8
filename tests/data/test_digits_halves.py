"""The embedded digits_halves dataset: its splits, determinism and cache."""

import numpy as np
from sklearn.datasets import load_digits

import mscross.data
from mscross.data import (
  Split,
  load_split,
)


def test_digits_halves():
  splits = {split: load_split("digits_halves", split) for split in mscross.data.SPLITS}
  assert {k: len(v.ids) for k, v in splits.items()} == {
    "train": 1078,
    "validation": 359,
    "test": 360,
  }
  digits = load_digits()
  all_ids = []
  for split in splits.values():
    assert isinstance(split, Split)
    assert split.modalities == ("left", "right")
    left, right = split.features["left"], split.features["right"]
    assert left.shape[1:] == right.shape[1:] == (32,)
    assert split.label.shape[1:] == (10,)
    assert left.dtype == right.dtype == split.label.dtype == np.float32
    assert left.min() >= 0 and left.max() <= 1
    np.testing.assert_array_equal(split.label.sum(axis=1), 1)
    assert split.class_names == tuple(str(c) for c in range(10))
    rows = split.ids.astype(int)
    all_ids.extend(rows)
    images = digits.images[rows] / 16
    np.testing.assert_allclose(left, images[:, :, :4].reshape(-1, 32), rtol=1e-6)
    np.testing.assert_allclose(right, images[:, :, 4:].reshape(-1, 32), rtol=1e-6)
    np.testing.assert_array_equal(np.argmax(split.label, axis=1), digits.target[rows])
  assert sorted(all_ids) == list(range(1797))
  # Stratified: every class is 20% +- 1 example of the test split.
  counts = np.bincount(digits.target)
  np.testing.assert_allclose(splits["test"].label.sum(axis=0), counts / 5, atol=1)


def test_digits_halves_deterministic_across_caches(tmp_path, monkeypatch):
  first = load_split("digits_halves", "validation")
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path / "fresh-cache"))
  second = load_split("digits_halves", "validation")  # prepared again from scratch
  assert any((tmp_path / "fresh-cache").rglob("*.array_record*"))
  np.testing.assert_array_equal(first.features["left"], second.features["left"])
  np.testing.assert_array_equal(first.label, second.label)
  np.testing.assert_array_equal(first.ids, second.ids)


def test_digits_halves_served_from_cache(monkeypatch):
  first = load_split("digits_halves", "train")

  def fail(*args, **kwargs):
    raise AssertionError("source re-read although the cache is valid")

  monkeypatch.setattr(mscross.data.digits_halves.DigitsHalves, "read_source", fail)
  second = load_split("digits_halves", "train")
  np.testing.assert_array_equal(first.features["right"], second.features["right"])
