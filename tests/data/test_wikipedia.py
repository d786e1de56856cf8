"""wikipedia: the real release of the benchmark data, and broken synthetic copies of its layout."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

import mscross.data
from mscross.data import load_split
from mscross.errors import DataError

needs_real_data = pytest.mark.data(
  "wikipedia/raw_features.mat",
  "wikipedia/trainset_txt_img_cat.list",
  "wikipedia/testset_txt_img_cat.list",
  "wikipedia/categories.list",
)

TRAIN_CLASS_COUNTS = [138, 272, 244, 248, 202, 178, 186, 144, 214, 347]
TEST_CLASS_COUNTS = [34, 88, 96, 85, 65, 58, 51, 41, 71, 104]
CATEGORIES = "art biology geography history literature media music royalty sport warfare".split()


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
  # Shared by the session, so nothing is written to ~/.cache; every test's own source folder
  # gets its own fingerprinted entry under it.
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mscross-cache"))


def write_wikipedia(root: Path, n_train: int = 100, n_test: int = 30) -> dict[str, np.ndarray]:
  """Writes a small synthetic copy of the release layout to root/wikipedia; returns its arrays."""
  folder = root / "wikipedia"
  folder.mkdir(parents=True)
  rng = np.random.default_rng(1)
  arrays = {
    "I_tr": rng.random((n_train, 128)),
    "T_tr": rng.random((n_train, 10)),
    "I_te": rng.random((n_test, 128)),
    "T_te": rng.random((n_test, 10)),
  }
  scipy.io.savemat(folder / "raw_features.mat", arrays)
  for name, n in (("trainset", n_train), ("testset", n_test)):
    lines = [f"txt{name[:2]}{i}\timg{name[:2]}{i}\t{i % 10 + 1}" for i in range(n)]
    (folder / f"{name}_txt_img_cat.list").write_text("\n".join(lines) + "\n")
  (folder / "categories.list").write_text("\n".join(CATEGORIES) + "\n")
  return arrays


def assert_data_error(root: Path, *fragments: str) -> None:
  with pytest.raises(DataError) as info:
    load_split("wikipedia", "test", root)
  message = str(info.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message


@needs_real_data
def test_real_release_splits_and_class_counts(data_dir):
  splits = {split: load_split("wikipedia", split, data_dir) for split in mscross.data.SPLITS}
  train, validation, test = splits["train"], splits["validation"], splits["test"]
  assert len(test.ids) == 693
  assert len(train.ids) + len(validation.ids) == 2173
  assert len(validation.ids) == 218  # 10% of 2,173, rounded up by scikit-learn
  np.testing.assert_array_equal(test.label.sum(axis=0), TEST_CLASS_COUNTS)
  np.testing.assert_array_equal(
    train.label.sum(axis=0) + validation.label.sum(axis=0), TRAIN_CLASS_COUNTS
  )
  for split in splits.values():
    assert split.modalities == ("image", "text")
    assert split.features["image"].shape[1:] == (128,) and split.features["text"].shape[1:] == (10,)
    assert split.label.shape[1:] == (10,)
    assert (
      split.features["image"].dtype
      == split.features["text"].dtype
      == split.label.dtype
      == np.float32
    )
    np.testing.assert_array_equal(split.label.sum(axis=1), 1)
    assert split.class_names == tuple(CATEGORIES)
    assert all(id_.count("/") == 1 for id_ in split.ids)
  assert not set(train.ids) & set(validation.ids)
  # Validation is stratified: each class holds about 10% of its train examples.
  np.testing.assert_allclose(
    validation.label.sum(axis=0), np.array(TRAIN_CLASS_COUNTS) / 10, atol=1
  )
  # Test rows come in the official order.
  features = scipy.io.loadmat(data_dir / "wikipedia" / "raw_features.mat")
  np.testing.assert_allclose(test.features["image"], features["I_te"], rtol=1e-6)
  first_line = (data_dir / "wikipedia" / "testset_txt_img_cat.list").read_text().split("\n")[0]
  assert test.ids[0] == "/".join(first_line.split("\t")[:2])


def test_synthetic_layout_deterministic_cached_and_never_stale(tmp_path, monkeypatch):
  arrays = write_wikipedia(tmp_path)
  train = load_split("wikipedia", "train", tmp_path)
  validation = load_split("wikipedia", "validation", tmp_path)
  assert (len(train.ids), len(validation.ids)) == (90, 10)
  np.testing.assert_array_equal(validation.label.sum(axis=0), np.ones(10))
  assert train.ids[0] == "txttr0/imgtr0"

  def fail(*args, **kwargs):
    raise AssertionError("source re-read although the cache is valid")

  with monkeypatch.context() as patch:
    patch.setattr(mscross.data.wikipedia.Wikipedia, "read_source", fail)
    again = load_split("wikipedia", "train", tmp_path)
  np.testing.assert_array_equal(train.features["image"], again.features["image"])
  np.testing.assert_array_equal(train.ids, again.ids)

  # An edited source is re-prepared (mtime pushed forward: not at the mercy of FS resolution).
  path = tmp_path / "wikipedia" / "raw_features.mat"
  scipy.io.savemat(path, {**arrays, "I_tr": arrays["I_tr"] + 1})
  stat = path.stat()
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  edited = load_split("wikipedia", "train", tmp_path)
  np.testing.assert_allclose(edited.features["image"], train.features["image"] + 1, rtol=1e-6)


@needs_real_data
def test_copy_of_real_release_is_prepared_separately(tmp_path, data_dir):
  # A different source folder must get its own cache entry even with identical files.
  shutil.copytree(data_dir / "wikipedia", tmp_path / "wikipedia")
  copy = load_split("wikipedia", "test", tmp_path)
  original = load_split("wikipedia", "test", data_dir)
  np.testing.assert_array_equal(copy.features["image"], original.features["image"])
  np.testing.assert_array_equal(copy.ids, original.ids)


@pytest.mark.parametrize(
  "missing", ["raw_features.mat", "categories.list", "testset_txt_img_cat.list"]
)
def test_missing_file(tmp_path, missing):
  write_wikipedia(tmp_path)
  (tmp_path / "wikipedia" / missing).unlink()
  assert_data_error(tmp_path, missing, str(tmp_path / "wikipedia"), "expected files")


def test_missing_folder(tmp_path):
  assert_data_error(tmp_path, str(tmp_path / "wikipedia"), "raw_features.mat")


def test_wrong_mat_key(tmp_path):
  arrays = write_wikipedia(tmp_path)
  arrays["X_tr"] = arrays.pop("I_tr")
  scipy.io.savemat(tmp_path / "wikipedia" / "raw_features.mat", arrays)
  assert_data_error(tmp_path, "raw_features.mat", "no variable 'I_tr'", "X_tr")


def test_wrong_column_count(tmp_path):
  arrays = write_wikipedia(tmp_path)
  arrays["T_te"] = arrays["T_te"][:, :9]
  scipy.io.savemat(tmp_path / "wikipedia" / "raw_features.mat", arrays)
  assert_data_error(tmp_path, "raw_features.mat [T_te]", "9 feature columns, expected 10")


def test_list_and_features_disagree_on_pair_count(tmp_path):
  write_wikipedia(tmp_path)
  path = tmp_path / "wikipedia" / "testset_txt_img_cat.list"
  path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
  assert_data_error(tmp_path, "testset_txt_img_cat.list has 29", "[I_te] has 30")


def test_image_and_text_disagree_on_pair_count(tmp_path):
  arrays = write_wikipedia(tmp_path)
  arrays["T_tr"] = arrays["T_tr"][:-2]
  scipy.io.savemat(tmp_path / "wikipedia" / "raw_features.mat", arrays)
  assert_data_error(tmp_path, "[T_tr] has 98", "[I_tr] has 100")


@pytest.mark.parametrize("key, bad, word", [("I_te", np.nan, "3 NaN"), ("T_tr", np.inf, "3 inf")])
def test_non_finite_features(tmp_path, key, bad, word):
  arrays = write_wikipedia(tmp_path)
  arrays[key][:3, 0] = bad
  scipy.io.savemat(tmp_path / "wikipedia" / "raw_features.mat", arrays)
  assert_data_error(tmp_path, f"raw_features.mat [{key}]", word)


def _edit_list(root: Path, name: str, line: int, new: str) -> None:
  path = root / "wikipedia" / name
  lines = path.read_text().splitlines()
  lines[line] = new
  path.write_text("\n".join(lines) + "\n")


def test_class_out_of_range(tmp_path):
  write_wikipedia(tmp_path)
  _edit_list(tmp_path, "trainset_txt_img_cat.list", 5, "t\ti\t11")
  assert_data_error(tmp_path, "trainset_txt_img_cat.list", "out of range", "1..10")


def test_example_without_class(tmp_path):
  write_wikipedia(tmp_path)
  _edit_list(tmp_path, "testset_txt_img_cat.list", 4, "t\ti\t")
  assert_data_error(tmp_path, "testset_txt_img_cat.list", "1 example has no label")


def test_unparsable_list(tmp_path):
  write_wikipedia(tmp_path)
  _edit_list(tmp_path, "testset_txt_img_cat.list", 2, "t i 3")
  assert_data_error(tmp_path, "testset_txt_img_cat.list", "line 3")


def test_wrong_number_of_categories(tmp_path):
  write_wikipedia(tmp_path)
  (tmp_path / "wikipedia" / "categories.list").write_text("\n".join(CATEGORIES[:9]))
  assert_data_error(tmp_path, "categories.list", "9 class names, expected 10")


def test_empty_test_split(tmp_path):
  arrays = write_wikipedia(tmp_path)
  arrays["I_te"], arrays["T_te"] = np.zeros((0, 128)), np.zeros((0, 10))
  scipy.io.savemat(tmp_path / "wikipedia" / "raw_features.mat", arrays)
  (tmp_path / "wikipedia" / "testset_txt_img_cat.list").write_text("")
  assert_data_error(tmp_path, "testset_txt_img_cat.list", "no examples in the test split")


def test_failed_prepare_leaves_no_cache_behind(tmp_path, monkeypatch):
  arrays = write_wikipedia(tmp_path)
  arrays["I_te"][0, 0] = np.nan
  scipy.io.savemat(tmp_path / "wikipedia" / "raw_features.mat", arrays)
  cache = tmp_path / "own-cache"
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(cache))
  with pytest.raises(DataError):
    load_split("wikipedia", "train", tmp_path)
  leftovers = [p for p in cache.rglob("*") if p.is_file()]
  assert leftovers == []
