"""The public dataset API (`mscross.data`): listing, resolving and loading datasets."""

import importlib

import numpy as np
import pytest

import mscross.data
from mscross.data import (
  Split,
  available_datasets,
  cache,
  dataset_modalities,
  load_split,
  resolve_data_dir,
  subset,
)
from mscross.errors import DataError, MscrossError


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


def test_builder_modules_can_be_imported_twice():
  # Reloading redefines the builder classes under the same names; had they been registered with
  # TFDS by name, that would raise "already registered".
  from mscross.data import digits_halves, dscmr_mat, features, uci_mfeat, wikipedia

  for module in (digits_halves, wikipedia, uci_mfeat, dscmr_mat, features):
    importlib.reload(module)
  data_path = cache.prepare(digits_halves.DigitsHalves, None, None)
  assert len(cache.read(data_path, "test")) == 360
