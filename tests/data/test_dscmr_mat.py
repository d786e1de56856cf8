"""dscmr_mat: DSCMR-style .mat feature folders, generated here in exactly that layout."""

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io

import mscross.data
from mscross.data import load_split
from mscross.errors import DataError

D_IMG, D_TXT, C = 12, 7, 4


def _save(folder: Path, name: str, array: np.ndarray, key: str | None = None) -> None:
  scipy.io.savemat(folder / f"{name}.mat", {key or name: array})


def write_dscmr(
  folder: Path,
  counts=None,
  label_form: str = "column",
  seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
  """Writes a DSCMR-style folder; returns the arrays written, per file prefix.

  label_form: "column" (N, 1) 0-based, "row" (1, N) 1-based (saved from a vector), or
  "matrix" (N, C) multi-label 0/1.
  """
  counts = counts or {"train": 80, "test": 20}
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  written = {}
  for prefix, n in counts.items():
    classes = np.arange(n) % C
    image = rng.normal(size=(n, D_IMG)) + classes[:, None]
    text = rng.normal(size=(n, D_TXT)) - classes[:, None]
    if label_form == "column":
      labels = classes[:, None]
    elif label_form == "row":
      labels = classes + 1
    else:
      labels = np.eye(C, dtype=np.uint8)[classes]
      rows = np.arange(0, n, 3)  # every third example gets a second label
      labels[rows, (classes[rows] + 1) % C] = 1
    _save(folder, f"{prefix}_img", image)
    _save(folder, f"{prefix}_txt", text)
    _save(folder, f"{prefix}_img_lab", labels)
    written[prefix] = {"image": image, "text": text, "labels": labels, "classes": classes}
  return written


def load_all(folder: Path) -> dict[str, mscross.data.Split]:
  return {split: load_split("dscmr_mat", split, folder) for split in mscross.data.SPLITS}


def assert_data_error(folder: Path, *fragments: str) -> str:
  with pytest.raises(DataError) as info:
    load_split("dscmr_mat", "train", folder)
  message = str(info.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message
  return message


@pytest.mark.parametrize("label_form", ["column", "row"])
def test_index_labels_without_validation(tmp_path, label_form):
  written = write_dscmr(tmp_path, label_form=label_form)
  splits = load_all(tmp_path)
  sizes = {name: len(split.ids) for name, split in splits.items()}
  assert sizes == {"train": 72, "validation": 8, "test": 20}
  for split in splits.values():
    assert (
      split.features["image"].dtype
      == split.features["text"].dtype
      == split.label.dtype
      == np.float32
    )
    assert split.features["image"].shape[1] == D_IMG and split.features["text"].shape[1] == D_TXT
    assert split.label.shape[1] == C
    np.testing.assert_array_equal(split.label.sum(axis=1), 1)
    assert split.class_names == ("0", "1", "2", "3")
  # Stratified carving: 10% of 20 examples per class is 2 per class.
  np.testing.assert_array_equal(splits["validation"].label.sum(axis=0), [2, 2, 2, 2])
  # Ids index the source file; train + validation partition the train file.
  train_ids = np.concatenate([splits["train"].ids, splits["validation"].ids]).astype(int)
  assert sorted(train_ids) == list(range(80))
  rows = splits["validation"].ids.astype(int)
  np.testing.assert_allclose(
    splits["validation"].features["image"], written["train"]["image"][rows], rtol=1e-6
  )
  np.testing.assert_array_equal(np.argmax(splits["test"].label, axis=1), written["test"]["classes"])


def test_multi_label_matrix_with_validation_files(tmp_path):
  written = write_dscmr(
    tmp_path, counts={"train": 60, "valid": 15, "test": 21}, label_form="matrix"
  )
  splits = load_all(tmp_path)
  assert {k: len(v.ids) for k, v in splits.items()} == {"train": 60, "validation": 15, "test": 21}
  for split, prefix in (("train", "train"), ("validation", "valid"), ("test", "test")):
    np.testing.assert_array_equal(splits[split].label, written[prefix]["labels"])
    np.testing.assert_allclose(splits[split].features["text"], written[prefix]["text"], rtol=1e-6)
  assert splits["train"].label.sum(axis=1).max() == 2
  assert splits["train"].class_names == ("0", "1", "2", "3")


def test_multi_label_without_validation_is_a_plain_random_carve(tmp_path):
  write_dscmr(tmp_path, counts={"train": 50, "test": 10}, label_form="matrix")
  splits = load_all(tmp_path)
  assert len(splits["validation"].ids) == 5 and len(splits["train"].ids) == 45


def test_deterministic_cached_and_never_stale(tmp_path, monkeypatch):
  write_dscmr(tmp_path)
  first = load_split("dscmr_mat", "validation", tmp_path)

  # A warm load must not touch the source reader at all.
  def fail(*args, **kwargs):
    raise AssertionError("source re-read although the cache is valid")

  with monkeypatch.context() as patch:
    patch.setattr(mscross.data.dscmr_mat.DscmrMat, "read_source", fail)
    second = load_split("dscmr_mat", "validation", tmp_path)
  np.testing.assert_array_equal(first.features["image"], second.features["image"])
  np.testing.assert_array_equal(first.ids, second.ids)

  # Editing a source file must re-prepare. The mtime is pushed forward explicitly so the test
  # does not depend on the file system's timestamp resolution.
  path = tmp_path / "train_img.mat"
  image = scipy.io.loadmat(path)["train_img"]
  _save(tmp_path, "train_img", image * 2)
  stat = path.stat()
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  third = load_split("dscmr_mat", "validation", tmp_path)
  np.testing.assert_allclose(third.features["image"], 2 * first.features["image"], rtol=1e-6)


@pytest.mark.parametrize("missing", ["test_txt.mat", "train_img_lab.mat"])
def test_missing_file(tmp_path, missing):
  write_dscmr(tmp_path)
  (tmp_path / missing).unlink()
  message = assert_data_error(tmp_path, missing, str(tmp_path))
  assert "train_img.mat" in message  # the expected files are listed


def test_partial_validation_set(tmp_path):
  write_dscmr(tmp_path, counts={"train": 40, "valid": 8, "test": 8})
  (tmp_path / "valid_txt.mat").unlink()
  assert_data_error(tmp_path, "valid_txt.mat")


def test_wrong_mat_key(tmp_path):
  written = write_dscmr(tmp_path)
  _save(tmp_path, "test_txt", written["test"]["text"], key="features")
  assert_data_error(tmp_path, "test_txt.mat", "'test_txt'", "features")


def test_not_a_mat_file(tmp_path):
  write_dscmr(tmp_path)
  (tmp_path / "test_img.mat").write_text("not a mat file")
  assert_data_error(tmp_path, "test_img.mat")


def test_feature_width_differs_between_splits(tmp_path):
  write_dscmr(tmp_path)
  _save(tmp_path, "test_img", np.zeros((20, D_IMG + 1)))
  assert_data_error(tmp_path, "test_img.mat", f"{D_IMG + 1} feature columns, expected {D_IMG}")


def test_different_pair_counts(tmp_path):
  written = write_dscmr(tmp_path)
  _save(tmp_path, "test_txt", written["test"]["text"][:-1])
  assert_data_error(tmp_path, "test_txt.mat", "test_img.mat", "different numbers of examples")


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "inf")])
def test_non_finite_features(tmp_path, bad, word):
  written = write_dscmr(tmp_path)
  image = written["train"]["image"].copy()
  image[3, 2] = bad
  image[5, 1] = bad
  _save(tmp_path, "train_img", image)
  assert_data_error(tmp_path, "train_img.mat", f"2 {word}")


def test_index_labels_out_of_range(tmp_path):
  written = write_dscmr(tmp_path)
  _save(tmp_path, "train_img_lab", written["train"]["classes"][:, None] + 2)
  _save(tmp_path, "test_img_lab", written["test"]["classes"][:, None] + 2)
  assert_data_error(tmp_path, "img_lab.mat", "out of range", "smallest class index is 2")


def test_non_integer_index_label(tmp_path):
  written = write_dscmr(tmp_path)
  labels = written["test"]["classes"][:, None].astype(float)
  labels[4] = 1.5
  _save(tmp_path, "test_img_lab", labels)
  assert_data_error(tmp_path, "test_img_lab.mat", "out of range")


def test_matrix_label_out_of_range(tmp_path):
  written = write_dscmr(tmp_path, label_form="matrix")
  labels = written["test"]["labels"].copy()
  labels[0, 0] = 2
  _save(tmp_path, "test_img_lab", labels)
  assert_data_error(tmp_path, "test_img_lab.mat", "out of range")


def test_matrix_example_without_label(tmp_path):
  written = write_dscmr(tmp_path, label_form="matrix")
  labels = written["train"]["labels"].copy()
  labels[7] = 0
  _save(tmp_path, "train_img_lab", labels)
  assert_data_error(tmp_path, "train_img_lab.mat", "1 example has no label", "example 7")


def test_index_example_without_label(tmp_path):
  written = write_dscmr(tmp_path)
  labels = written["test"]["classes"][:, None].astype(float)
  labels[2] = np.nan
  _save(tmp_path, "test_img_lab", labels)
  assert_data_error(tmp_path, "test_img_lab.mat", "no label")


def test_label_forms_differ(tmp_path):
  written = write_dscmr(tmp_path)
  _save(tmp_path, "test_img_lab", np.eye(C)[written["test"]["classes"]])
  assert_data_error(tmp_path, "test_img_lab.mat", "label forms differ")


def test_empty_split(tmp_path):
  write_dscmr(tmp_path)
  _save(tmp_path, "test_img", np.zeros((0, D_IMG)))
  _save(tmp_path, "test_txt", np.zeros((0, D_TXT)))
  _save(tmp_path, "test_img_lab", np.zeros((0, 1)))
  assert_data_error(tmp_path, "test_img.mat", "no examples in the test split")


def test_huge_class_index_is_refused_without_allocating(tmp_path):
  # A label of 79,496 among a dozen examples once built a 79,497 x 79,497 one-hot table.
  written = write_dscmr(tmp_path, counts={"train": 12, "test": 6})
  labels = written["train"]["classes"][:, None].copy()
  labels[3] = 79_496
  _save(tmp_path, "train_img_lab", labels)
  assert_data_error(tmp_path, "train_img_lab.mat", "79,497 classes", "18 labelled examples")


def test_class_count_limit():
  from mscross.data import checks

  with pytest.raises(DataError, match="at most 65,536 classes"):
    checks.class_count(65_537, None, "x.mat")
  assert checks.class_count(65_536, None, "x.mat") == 65_536
  assert checks.class_count(40, 4, "x.mat") == 40


# Five-media (XMediaNet-style) layout: tag -> (modality, width).
MEDIA = {"img": ("image", 6), "txt": ("text", 5), "aud": ("audio", 4), "vid": ("video", 3)}
MEDIA["3d"] = ("3d", 2)


def write_media(folder: Path, tags, counts=None, label_tags=None, seed: int = 0) -> dict:
  """Writes <prefix>_<tag>.mat per medium and <prefix>_<tag>_lab.mat for `label_tags`."""
  counts = counts or {"train": 60, "test": 20}
  label_tags = label_tags if label_tags is not None else tags[:1]
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  written = {}
  for prefix, n in counts.items():
    classes = rng.permutation(np.arange(n) % C)
    written[prefix] = {"classes": classes}
    for tag in tags:
      written[prefix][tag] = rng.normal(size=(n, MEDIA[tag][1]))
      _save(folder, f"{prefix}_{tag}", written[prefix][tag])
    for tag in label_tags:
      _save(folder, f"{prefix}_{tag}_lab", classes[:, None])
  return written


def test_five_media(tmp_path):
  tags = ["img", "txt", "aud", "vid", "3d"]
  written = write_media(
    tmp_path, tags, {"train": 40, "valid": 12, "test": 16}, label_tags=["img", "vid"]
  )
  splits = load_all(tmp_path)
  assert {k: len(v) for k, v in splits.items()} == {"train": 40, "validation": 12, "test": 16}
  for split, prefix in (("train", "train"), ("validation", "valid"), ("test", "test")):
    got = splits[split]
    assert got.modalities == ("image", "text", "audio", "video", "3d")
    for tag in tags:
      modality, width = MEDIA[tag]
      assert got.features[modality].shape == (len(got), width)
      np.testing.assert_allclose(got.features[modality], written[prefix][tag], rtol=1e-6)
    np.testing.assert_array_equal(np.argmax(got.label, axis=1), written[prefix]["classes"])
  assert mscross.data.dataset_modalities("dscmr_mat") is None


def test_media_subset_labelled_by_its_first_medium(tmp_path):
  written = write_media(tmp_path, ["aud", "3d"], label_tags=["aud"])
  splits = load_all(tmp_path)
  assert splits["test"].modalities == ("audio", "3d")
  assert {k: len(v) for k, v in splits.items()} == {"train": 54, "validation": 6, "test": 20}
  np.testing.assert_allclose(splits["test"].features["3d"], written["test"]["3d"], rtol=1e-6)


def test_media_label_files_disagree(tmp_path):
  write_media(tmp_path, ["img", "txt", "aud"], label_tags=["img", "aud"])
  _save(
    tmp_path,
    "test_aud_lab",
    np.roll(scipy.io.loadmat(tmp_path / "test_aud_lab.mat")["test_aud_lab"], 1),
  )
  assert_data_error(
    tmp_path, "test_img_lab.mat", "test_aud_lab.mat", "labels differ", "paired rows"
  )


def test_media_with_different_row_counts(tmp_path):
  written = write_media(tmp_path, ["img", "txt", "vid"])
  _save(tmp_path, "train_vid", written["train"]["vid"][:50])
  assert_data_error(
    tmp_path, "train_vid.mat [train_vid] has 50", "train_img.mat [train_img] has 60", "paired rows"
  )


def test_medium_missing_from_test(tmp_path):
  write_media(tmp_path, ["img", "txt", "aud"])
  (tmp_path / "test_aud.mat").unlink()
  assert_data_error(tmp_path, "missing test_aud.mat", "expected files")


def test_medium_only_in_test(tmp_path):
  written = write_media(tmp_path, ["img", "txt"])
  _save(tmp_path, "test_vid", written["test"]["img"])
  assert_data_error(tmp_path, "test_vid.mat", "no train_vid.mat", "same media")


def test_validation_missing_one_medium(tmp_path):
  write_media(tmp_path, ["txt", "vid", "3d"], {"train": 30, "valid": 10, "test": 10})
  (tmp_path / "valid_3d.mat").unlink()
  assert_data_error(tmp_path, "missing valid_3d.mat")


def test_single_medium(tmp_path):
  write_media(tmp_path, ["vid"])
  assert_data_error(tmp_path, "found only train_vid.mat", "at least two media")


def test_stray_validation_label_file(tmp_path):
  write_media(tmp_path, ["img", "txt"])
  _save(tmp_path, "valid_txt_lab", np.zeros((3, 1)))
  assert_data_error(tmp_path, "missing valid_img.mat, valid_txt.mat, valid_img_lab.mat")
