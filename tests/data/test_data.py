"""The public dataset API and the embedded digits_halves dataset."""

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

import mscross.data
from mscross.data import (
  Split,
  available_datasets,
  base,
  cache,
  dataset_modalities,
  load_split,
  resolve_data_dir,
  subset,
)
from mscross.errors import DataError, MscrossError


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
  # Shared by the session, so nothing is written to ~/.cache; every test's own source folder
  # gets its own fingerprinted entry under it.
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mscross-cache"))


def test_available_datasets():
  # Every builder module of the package registered itself, in module order.
  assert available_datasets() == [
    "archive",
    "web_news",
    "digits_halves",
    "dscmr_mat",
    "features",
    "manifest",
    "uci_mfeat/<view>_<view>[_<view>...]",
    "wikipedia",
  ]
  lines = mscross.data.describe_datasets()
  assert len(lines) == 8
  digits = lines[2]
  assert digits.startswith("digits_halves: scikit-learn digits") and "(alias digits)" in digits
  assert mscross.data.canonical_name("mfeat") == "uci_mfeat/fou_pix"


def test_a_builder_registers_itself_by_name(monkeypatch):
  monkeypatch.setattr(mscross.data.base, "BUILDERS", dict(mscross.data.base.BUILDERS))

  class Mine(mscross.data.base.PairedBuilder, skip_registration=True):
    """My own pairs."""

    NAME = "mine"
    PRESET = {"optim.lr": 0.5}

    def read_source(self):
      raise NotImplementedError

  assert "mine" in available_datasets() and mscross.data.builder("mine") is Mine
  assert "mine: My own pairs." in mscross.data.describe_datasets()
  from mscross import presets

  assert presets.build("acmr", "mine").optim.lr == 0.5
  with pytest.raises(ValueError, match="taken"):

    class Other(mscross.data.base.PairedBuilder, skip_registration=True):
      NAME = "mine"

      def read_source(self):
        raise NotImplementedError


def test_dataset_modalities():
  assert dataset_modalities("wikipedia") == ("image", "text")
  assert dataset_modalities("digits_halves") == ("left", "right")
  assert dataset_modalities("uci_mfeat/fou_kar_pix") == ("fou", "kar", "pix")
  assert dataset_modalities("uci_mfeat/pix_fou") == ("pix", "fou")
  assert dataset_modalities("dscmr_mat") is None
  assert dataset_modalities("features") is None
  with pytest.raises(DataError, match="unknown dataset"):
    dataset_modalities("imagenet")


def test_split_record():
  features = {"a": np.zeros((3, 2), np.float32), "b": np.ones((3, 4), np.float32)}
  split = Split(features, None, np.asarray(["x", "y", "z"]), ())
  assert split.modalities == ("a", "b") and len(split) == 3
  features["c"] = features["a"]  # the record keeps its own dict
  assert split.modalities == ("a", "b")
  part = subset(split, np.array([2, 0]))
  assert part.label is None and list(part.ids) == ["z", "x"] and part.features["b"].shape == (2, 4)
  labelled = Split(
    {"a": np.zeros((2, 1)), "b": np.zeros((2, 1))}, np.eye(2), np.asarray(["0", "1"]), ("p", "q")
  )
  assert subset(labelled, np.array([1])).label.tolist() == [[0.0, 1.0]]
  assert labelled.class_names == ("p", "q")
  with pytest.raises(ValueError, match="differ in length"):
    Split({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))}, None, np.asarray(["0", "1"]), ())


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
  listed = "archive, web_news, digits_halves, dscmr_mat, features, manifest, uci_"
  with pytest.raises(DataError, match=f"available: {listed}"):
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


def test_builder_modules_can_be_imported_twice():
  # Reloading redefines the builder classes under the same names; had they been registered with
  # TFDS by name, that would raise "already registered".
  from mscross.data import digits_halves, dscmr_mat, features, uci_mfeat, wikipedia

  for module in (digits_halves, wikipedia, uci_mfeat, dscmr_mat, features):
    importlib.reload(module)
  data_path = cache.prepare(digits_halves.DigitsHalves, None, None)
  assert len(cache.read(data_path, "test")) == 360


def test_fast_decoder_falls_back_to_tfds_on_mismatch(monkeypatch):
  expected = load_split("digits_halves", "test")

  def wrong(records, widths):
    decoded = {key: np.zeros((len(records), width), np.float32) for key, width in widths.items()}
    return {**decoded, "id": ["?"] * len(records)}

  monkeypatch.setattr(cache, "_decode_direct", wrong)
  again = load_split("digits_halves", "test")
  np.testing.assert_array_equal(again.features["left"], expected.features["left"])
  np.testing.assert_array_equal(again.label, expected.label)
  np.testing.assert_array_equal(again.ids, expected.ids)


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


# Each child records in prepared.log when it reads the source, then waits until both children
# are about to load, so that both find the cache cold at the same moment.
_CHILD = textwrap.dedent(
  """
  import sys, time
  from pathlib import Path
  import numpy as np
  from mscross.data import digits_halves, load_split

  tmp, me = Path(sys.argv[1]), sys.argv[2]
  original = digits_halves.DigitsHalves.read_source

  def read_source(self):
    with open(tmp / "prepared.log", "a") as log:
      log.write(me + "\\n")
    time.sleep(0.5)  # keeps the preparation going while the other child arrives
    return original(self)

  digits_halves.DigitsHalves.read_source = read_source
  (tmp / f"ready-{me}").touch()
  deadline = time.time() + 60
  while not all((tmp / f"ready-{i}").exists() for i in "01") and time.time() < deadline:
    time.sleep(0.005)
  split = load_split("digits_halves", "validation")
  np.savez(tmp / f"out-{me}.npz", ids=split.ids, label=split.label, **split.features)
  """
)


def test_processes_preparing_at_once_take_turns(tmp_path, monkeypatch):
  cache_dir = tmp_path / "cache"
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(cache_dir))
  children = [
    subprocess.Popen(
      [sys.executable, "-c", _CHILD, str(tmp_path), me],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for me in "01"
  ]
  for child in children:
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr
  assert len((tmp_path / "prepared.log").read_text().split()) == 1  # prepared once
  assert len(list(cache_dir.rglob("dataset_info.json"))) == 1
  assert not list(cache_dir.rglob("*.lock"))
  first, second = (np.load(tmp_path / f"out-{me}.npz") for me in "01")
  assert sorted(first.files) == ["ids", "label", "left", "right"]
  for key in first.files:
    np.testing.assert_array_equal(first[key], second[key])
  np.testing.assert_array_equal(
    first["left"], load_split("digits_halves", "validation").features["left"]
  )


def test_lock_is_exclusive_and_cleans_up(tmp_path):
  lock = tmp_path / "x.lock"
  with cache._exclusive(lock):
    assert lock.exists()
    probe = subprocess.run(
      [
        sys.executable,
        "-c",
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n  fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
        "  sys.exit(3)",
        str(lock),
      ],
      timeout=30,
    )
    assert probe.returncode == 3  # held: another process cannot take it
  assert not lock.exists()
