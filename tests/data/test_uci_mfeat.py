"""uci_mfeat/<views>: the real fou/kar/pix CSVs (benchmark data), and broken synthetic copies."""

import os
from pathlib import Path

import numpy as np
import pytest

import mscross.data
from mscross.data import dataset_modalities, load_split
from mscross.errors import DataError

needs_real_data = pytest.mark.data(
  "uci_mfeat/mfeat-fou.csv", "uci_mfeat/mfeat-kar.csv", "uci_mfeat/mfeat-pix.csv"
)
DIMS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}


def write_view(root: Path, view: str, rows: int = 100, seed: int = 0) -> np.ndarray:
  """Writes root/uci_mfeat/mfeat-<view>.csv in the release layout; returns its table."""
  folder = root / "uci_mfeat"
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  table = np.column_stack([rng.normal(size=(rows, DIMS[view])), np.arange(rows) % 10])
  header = ",".join(str(i) for i in range(DIMS[view])) + ",0"
  body = "\n".join(",".join(f"{v:.6g}" for v in row[:-1]) + f",{int(row[-1])}" for row in table)
  (folder / f"mfeat-{view}.csv").write_text(header + "\n" + body + "\n")
  return table


def edit_cell(root: Path, view: str, row: int, column: int, text: str) -> None:
  """Replaces one field of a data row (row 0 is the first line after the header)."""
  path = root / "uci_mfeat" / f"mfeat-{view}.csv"
  lines = path.read_text().splitlines()
  fields = lines[row + 1].split(",")
  fields[column] = text
  lines[row + 1] = ",".join(fields)
  path.write_text("\n".join(lines) + "\n")


def assert_data_error(root: Path, name: str, *fragments: str) -> None:
  with pytest.raises(DataError) as info:
    load_split(name, "train", root)
  message = str(info.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message


def test_names_pattern_is_listed():
  assert "uci_mfeat/<view>_<view>[_<view>...]" in mscross.data.available_datasets()


@pytest.mark.parametrize(
  "name, problem",
  [
    ("uci_mfeat/fou_abc", "unknown view 'abc'"),
    ("uci_mfeat/fou_kar_fou", "view 'fou' named twice"),
    ("uci_mfeat/fou", "1 view"),
    ("uci_mfeat/", "0 views"),
    ("uci_mfeat", "0 views"),
    ("uci_mfeat/fou__kar", "unknown view ''"),
  ],
)
def test_bad_view_names(tmp_path, name, problem):
  for call in (lambda: load_split(name, "train", tmp_path), lambda: dataset_modalities(name)):
    with pytest.raises(DataError) as info:
      call()
    message = str(info.value)
    assert "\n" not in message and problem in message, message
    assert "fou, fac, kar, pix, zer, mor" in message


def test_any_combination_of_distinct_views_is_a_dataset():
  assert dataset_modalities("uci_mfeat/mor_zer_pix_kar_fac_fou") == (
    "mor",
    "zer",
    "pix",
    "kar",
    "fac",
    "fou",
  )
  assert dataset_modalities("uci_mfeat/zer_fac") == ("zer", "fac")


@needs_real_data
def test_real_fou_pix(data_dir):
  splits = {
    split: load_split("uci_mfeat/fou_pix", split, data_dir) for split in mscross.data.SPLITS
  }
  assert {k: len(v.ids) for k, v in splits.items()} == {
    "train": 1200,
    "validation": 400,
    "test": 400,
  }
  per_class = {"train": 120, "validation": 40, "test": 40}
  ids = []
  for name, split in splits.items():
    assert split.modalities == ("fou", "pix")
    assert split.features["fou"].shape[1:] == (76,) and split.features["pix"].shape[1:] == (240,)
    assert split.features["fou"].dtype == split.features["pix"].dtype == np.float32
    assert split.label.dtype == np.float32
    np.testing.assert_array_equal(split.label.sum(axis=1), 1)
    np.testing.assert_array_equal(split.label.sum(axis=0), [per_class[name]] * 10)
    assert split.class_names == tuple(str(c) for c in range(10))
    ids.extend(split.ids.astype(int))
  assert sorted(ids) == list(range(2000))
  # Raw values, rows aligned with the CSV through the ids.
  fou = np.loadtxt(data_dir / "uci_mfeat" / "mfeat-fou.csv", delimiter=",", skiprows=1)
  test = splits["test"]
  np.testing.assert_allclose(test.features["fou"], fou[test.ids.astype(int), :-1], rtol=1e-6)
  np.testing.assert_array_equal(np.argmax(test.label, axis=1), fou[test.ids.astype(int), -1])


@needs_real_data
def test_real_three_views_share_the_pairs_split(data_dir):
  # The split depends on the classes only: every view combination gets the same rows.
  for split in mscross.data.SPLITS:
    three = load_split("uci_mfeat/pix_fou_kar", split, data_dir)
    pair = load_split("uci_mfeat/fou_pix", split, data_dir)
    other_pair = load_split("uci_mfeat/kar_fou", split, data_dir)
    assert three.modalities == ("pix", "fou", "kar")
    assert [a.shape[1] for a in three.features.values()] == [240, 76, 64]
    np.testing.assert_array_equal(three.ids, pair.ids)
    np.testing.assert_array_equal(three.ids, other_pair.ids)
    np.testing.assert_array_equal(three.label, pair.label)
    np.testing.assert_array_equal(three.features["fou"], pair.features["fou"])
    np.testing.assert_array_equal(three.features["pix"], pair.features["pix"])
    np.testing.assert_array_equal(three.features["kar"], other_pair.features["kar"])


@needs_real_data
def test_view_absent_from_the_release(data_dir):
  # fac exists as a config but is not in the shipped data.
  assert_data_error(data_dir, "uci_mfeat/fac_kar", "mfeat-fac.csv", str(data_dir / "uci_mfeat"))


def test_synthetic_deterministic_cached_and_never_stale(tmp_path, monkeypatch):
  write_view(tmp_path, "kar", seed=1)
  write_view(tmp_path, "mor", seed=2)
  first = load_split("uci_mfeat/kar_mor", "test", tmp_path)
  assert first.features["kar"].shape == (20, 64) and first.features["mor"].shape == (20, 6)
  np.testing.assert_array_equal(first.label.sum(axis=0), [2] * 10)

  def fail(*args, **kwargs):
    raise AssertionError("source re-read although the cache is valid")

  with monkeypatch.context() as patch:
    patch.setattr(mscross.data.uci_mfeat.UciMfeat, "read_source", fail)
    again = load_split("uci_mfeat/kar_mor", "test", tmp_path)
  np.testing.assert_array_equal(first.features["mor"], again.features["mor"])

  # The swapped pair is a different config with the modalities in the other order.
  swapped = load_split("uci_mfeat/mor_kar", "test", tmp_path)
  assert swapped.modalities == ("mor", "kar")
  np.testing.assert_array_equal(swapped.features["mor"], first.features["mor"])

  row = int(first.ids[0])
  edit_cell(tmp_path, "mor", row, 0, "123.5")
  path = tmp_path / "uci_mfeat" / "mfeat-mor.csv"
  stat = path.stat()
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  edited = load_split("uci_mfeat/kar_mor", "test", tmp_path)
  assert edited.features["mor"][0, 0] == np.float32(123.5)


def test_missing_file(tmp_path):
  write_view(tmp_path, "fou")
  assert_data_error(tmp_path, "uci_mfeat/fou_zer", "mfeat-zer.csv", "expected files")


def test_wrong_column_count(tmp_path):
  write_view(tmp_path, "fou")
  write_view(tmp_path, "kar")
  # A kar file passed off as zer: 64 feature columns instead of 47.
  (tmp_path / "uci_mfeat" / "mfeat-kar.csv").rename(tmp_path / "uci_mfeat" / "mfeat-zer.csv")
  assert_data_error(
    tmp_path, "uci_mfeat/fou_zer", "mfeat-zer.csv", "64 feature columns, expected 47"
  )


def test_unparsable_csv(tmp_path):
  write_view(tmp_path, "fou")
  write_view(tmp_path, "mor")
  edit_cell(tmp_path, "mor", 3, 2, "abc")
  assert_data_error(tmp_path, "uci_mfeat/fou_mor", "mfeat-mor.csv", "unparsable CSV")


def test_ragged_csv(tmp_path):
  write_view(tmp_path, "fou")
  write_view(tmp_path, "mor")
  edit_cell(tmp_path, "mor", 3, 2, "1,2")
  assert_data_error(tmp_path, "uci_mfeat/fou_mor", "mfeat-mor.csv", "unparsable CSV")


def test_different_row_counts(tmp_path):
  write_view(tmp_path, "fou")
  write_view(tmp_path, "mor", rows=90)
  assert_data_error(tmp_path, "uci_mfeat/fou_mor", "mfeat-fou.csv has 100", "mfeat-mor.csv has 90")


def test_three_synthetic_views_check_every_file(tmp_path):
  for seed, view in enumerate(("zer", "fac", "mor")):
    write_view(tmp_path, view, seed=seed)
  split = load_split("uci_mfeat/zer_fac_mor", "validation", tmp_path)
  assert split.modalities == ("zer", "fac", "mor") and len(split) == 20
  edit_cell(tmp_path, "mor", 4, -1, "7")  # the third file disagrees with the first
  assert_data_error(tmp_path, "uci_mfeat/zer_fac_mor", "mfeat-zer.csv and", "mfeat-mor.csv")


@pytest.mark.parametrize("text, word", [("nan", "1 NaN"), ("", "1 NaN"), ("inf", "1 inf")])
def test_non_finite_features(tmp_path, text, word):
  write_view(tmp_path, "fou")
  write_view(tmp_path, "mor")
  edit_cell(tmp_path, "fou", 7, 5, text)
  assert_data_error(tmp_path, "uci_mfeat/fou_mor", "mfeat-fou.csv", word)


@pytest.mark.parametrize("text", ["10", "-1", "2.5"])
def test_class_out_of_range(tmp_path, text):
  write_view(tmp_path, "fou")
  write_view(tmp_path, "mor")
  edit_cell(tmp_path, "mor", 7, -1, text)
  assert_data_error(tmp_path, "uci_mfeat/fou_mor", "mfeat-mor.csv", "out of range", "0..9")


def test_example_without_class(tmp_path):
  write_view(tmp_path, "fou")
  write_view(tmp_path, "mor")
  edit_cell(tmp_path, "mor", 7, -1, "")
  assert_data_error(tmp_path, "uci_mfeat/fou_mor", "mfeat-mor.csv", "1 example has no label")


def test_classes_disagree_between_files(tmp_path):
  write_view(tmp_path, "fou")
  write_view(tmp_path, "mor")
  edit_cell(tmp_path, "mor", 7, -1, "9")
  assert_data_error(tmp_path, "uci_mfeat/fou_mor", "mfeat-fou.csv and", "labels differ")


def test_header_only_file(tmp_path):
  write_view(tmp_path, "fou")
  write_view(tmp_path, "mor", rows=0)
  assert_data_error(tmp_path, "uci_mfeat/fou_mor", "mfeat-mor.csv", "no examples")
