"""The public dataset API and the embedded digits_halves dataset."""

import importlib
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

import mscross.data
from mscross.data import Split, available_datasets, base, load_split, resolve_data_dir
from mscross.errors import DataError, MscrossError


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
  # Shared by the session, so nothing is written to ~/.cache; every test's own source folder
  # gets its own fingerprinted entry under it.
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mscross-cache"))


def test_available_datasets():
  names = available_datasets()
  assert names[:2] == ["digits_halves", "wikipedia"]
  assert names[-1] == "dscmr_mat"
  assert len(names) == 2 + 30 + 1
  assert len(set(names)) == len(names)


def test_resolve_data_dir(monkeypatch, tmp_path):
  monkeypatch.delenv("MSCROSS_DATA_DIR", raising=False)
  assert resolve_data_dir(None) is None
  assert resolve_data_dir("/some/where") == "/some/where"
  monkeypatch.setenv("MSCROSS_DATA_DIR", str(tmp_path))
  assert resolve_data_dir(None) == str(tmp_path)
  assert resolve_data_dir("/explicit") == "/explicit"


def test_unknown_split_lists_valid_ones():
  with pytest.raises(DataError, match="valid splits: train, validation, test"):
    load_split("digits_halves", "val")


def test_unknown_dataset_lists_available_ones():
  with pytest.raises(DataError, match="available: digits_halves, wikipedia, uci_mfeat/fou_fac"):
    load_split("wikipedia2", "train")


def test_manual_dataset_without_data_dir(monkeypatch):
  monkeypatch.delenv("MSCROSS_DATA_DIR", raising=False)
  with pytest.raises(DataError, match="MSCROSS_DATA_DIR"):
    load_split("wikipedia", "train")


def test_data_error_is_an_mscross_error():
  assert issubclass(DataError, MscrossError)


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
    assert split.image.shape[1:] == split.text.shape[1:] == (32,)
    assert split.label.shape[1:] == (10,)
    assert split.image.dtype == split.text.dtype == split.label.dtype == np.float32
    assert split.image.min() >= 0 and split.image.max() <= 1
    np.testing.assert_array_equal(split.label.sum(axis=1), 1)
    assert split.class_names == tuple(str(c) for c in range(10))
    rows = split.ids.astype(int)
    all_ids.extend(rows)
    images = digits.images[rows] / 16
    np.testing.assert_allclose(split.image, images[:, :, :4].reshape(-1, 32), rtol=1e-6)
    np.testing.assert_allclose(split.text, images[:, :, 4:].reshape(-1, 32), rtol=1e-6)
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
  np.testing.assert_array_equal(first.image, second.image)
  np.testing.assert_array_equal(first.label, second.label)
  np.testing.assert_array_equal(first.ids, second.ids)


def test_digits_halves_served_from_cache(monkeypatch):
  first = load_split("digits_halves", "train")

  def fail(*args, **kwargs):
    raise AssertionError("source re-read although the cache is valid")

  monkeypatch.setattr(mscross.data.DigitsHalves, "read_source", fail)
  second = load_split("digits_halves", "train")
  np.testing.assert_array_equal(first.text, second.text)


def test_builder_modules_can_be_imported_twice():
  # Reloading redefines the builder classes under the same names; had they been registered with
  # TFDS by name, that would raise "already registered".
  from mscross.data import digits_halves, dscmr_mat, uci_mfeat, wikipedia

  for module in (digits_halves, wikipedia, uci_mfeat, dscmr_mat):
    importlib.reload(module)
  builder = base.prepare(digits_halves.DigitsHalves, None, None)
  assert len(base.read(builder, "test").ids) == 360


def test_losing_a_prepare_race_reads_the_winner(tmp_path, monkeypatch):
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path))
  original = base.PairedBuilder.download_and_prepare

  def lose_race(self, **kwargs):
    # Another process finishes first; our final rename then fails on the existing folder.
    twin = type(self)(data_dir=Path(self.data_dir).parents[1], file_format="array_record")
    original(twin, **kwargs)
    raise OSError(39, "Directory not empty")

  monkeypatch.setattr(base.PairedBuilder, "download_and_prepare", lose_race)
  assert len(load_split("digits_halves", "test").ids) == 360
