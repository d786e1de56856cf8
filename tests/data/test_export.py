"""`extract.py`'s library half: a dataset's splits written as arrays read back identically by the
`features` dataset, with ids and the problems table beside them."""

import json

import numpy as np
import pytest
from helpers import write_archive
from toy_extractors import TINY_EXTRACTORS

from mscross import data
from mscross.data import export


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path / "cache"))


def test_written_arrays_read_back_as_the_features_dataset(tmp_path):
  folder = write_archive(tmp_path / "arch")
  (folder / "texts" / "txt3.txt").write_text("")
  options = data.Options(extractors=TINY_EXTRACTORS)
  splits = {s: data.load_split("archive", s, folder, options) for s in data.SPLITS}
  problems = data.load_problems("archive", folder, options)
  out = tmp_path / "arrays"
  summary = export.write_features(splits, problems, out)
  assert summary == {
    "train": 17,
    "validation": 2,
    "test": 8,
    "dims": {"image": 12, "text": 16},
    "skipped": 1,
  }
  assert json.loads((out / "manifest.json").read_text()) == {
    "modalities": ["image", "text"],
    "class_names": ["cats", "dogs"],
  }
  table = (out / "data_problems.tsv").read_text().splitlines()
  assert table[0].split("\t") == ["split", "id", "modality", "file", "reason", "action"]
  assert table[1].split("\t")[:3] == ["train", "txt3/img3", "text"]
  assert table[1].endswith("empty text\tskipped")
  for name, split in splits.items():
    back = data.load_split("features", name, out)
    assert back.modalities == split.modalities
    for m in split.modalities:
      np.testing.assert_array_equal(back.features[m], split.features[m])
    np.testing.assert_array_equal(back.label, split.label)
    assert (out / name / "ids.txt").read_text().split("\n")[:-1] == list(split.ids)
    assert np.load(out / name / "labels.npy").ndim == 1  # single-label: class indices
