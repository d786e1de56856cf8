"""features: the user's own arrays in .npy folders, .npz files or .mat files, generated here."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io

import mscross.data
from mscross.data import array_files, load_split
from mscross.errors import DataError

WIDTHS = {"audio": 5, "image": 7, "text": 3}
C = 4


def make_arrays(n: int, seed: int = 0, labels: str | None = "ids") -> dict[str, np.ndarray]:
  """Random features per modality plus labels: "ids" (class ids), "multi" (0/1 rows) or None."""
  rng = np.random.default_rng(seed)
  arrays = {name: rng.normal(size=(n, d)) for name, d in WIDTHS.items()}
  classes = np.arange(n) % C
  if labels == "ids":
    arrays["labels"] = classes
  elif labels == "multi":
    multi = np.eye(C, dtype=np.int64)[classes]
    multi[::3, 0] = 1
    arrays["labels"] = multi
  return arrays


def write_split(root: Path, split: str, arrays: dict[str, np.ndarray], fmt: str = "npy") -> None:
  """Writes one split as a folder of .npy or .mat files, or as <split>.npz."""
  root.mkdir(parents=True, exist_ok=True)
  if fmt == "npz":
    np.savez(root / f"{split}.npz", **arrays)
    return
  folder = root / split
  folder.mkdir(exist_ok=True)
  for name, array in arrays.items():
    if fmt == "npy":
      np.save(folder / f"{name}.npy", array)
    else:
      scipy.io.savemat(folder / f"{name}.mat", {name: array})


def write_dataset(root: Path, fmt: str = "npy", counts=None, labels="ids") -> dict:
  counts = counts or {"train": 40, "test": 12}
  written = {}
  for seed, (split, n) in enumerate(counts.items()):
    written[split] = make_arrays(n, seed, labels)
    write_split(root, split, written[split], fmt)
  return written


def load_all(root: Path) -> dict[str, mscross.data.Split]:
  return {split: load_split("features", split, root) for split in mscross.data.SPLITS}


def assert_data_error(root: Path, *fragments: str) -> str:
  with pytest.raises(DataError) as info:
    load_split("features", "train", root)
  message = str(info.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message
  return message


@pytest.mark.parametrize("fmt", ["npy", "npz", "mat"])
def test_class_ids_without_validation(tmp_path, fmt):
  written = write_dataset(tmp_path, fmt)
  splits = load_all(tmp_path)
  assert {k: len(v) for k, v in splits.items()} == {"train": 36, "validation": 4, "test": 12}
  for split in splits.values():
    assert split.modalities == ("audio", "image", "text")  # sorted, without a manifest
    assert {k: v.shape[1] for k, v in split.features.items()} == WIDTHS
    assert all(v.dtype == np.float32 for v in split.features.values())
    assert split.label.shape[1] == C and split.class_names == ("0", "1", "2", "3")
  # Carved validation is stratified: one example per class.
  np.testing.assert_array_equal(splits["validation"].label.sum(axis=0), [1, 1, 1, 1])
  rows = splits["validation"].ids.astype(int)
  np.testing.assert_allclose(
    splits["validation"].features["image"], written["train"]["image"][rows], rtol=1e-6
  )
  ids = np.concatenate([splits["train"].ids, splits["validation"].ids]).astype(int)
  assert sorted(ids) == list(range(40))
  np.testing.assert_array_equal(np.argmax(splits["test"].label, axis=1), written["test"]["labels"])
  np.testing.assert_allclose(splits["test"].features["audio"], written["test"]["audio"], rtol=1e-6)


def test_npz_with_validation_and_multi_hot_labels(tmp_path):
  written = write_dataset(
    tmp_path, "npz", counts={"train": 30, "validation": 9, "test": 10}, labels="multi"
  )
  splits = load_all(tmp_path)
  assert {k: len(v) for k, v in splits.items()} == {"train": 30, "validation": 9, "test": 10}
  for name, split in splits.items():
    np.testing.assert_array_equal(split.label, written[name]["labels"])
    np.testing.assert_allclose(split.features["text"], written[name]["text"], rtol=1e-6)
  assert splits["train"].label.sum(axis=1).max() == 2


def test_mixed_formats_and_mat_variable_names(tmp_path):
  written = write_dataset(tmp_path, "npy", counts={"train": 20})
  test = make_arrays(8, seed=5)
  write_split(tmp_path, "test", {k: v for k, v in test.items() if k != "image"}, "mat")
  # A .mat file whose only variable is not named like the file.
  scipy.io.savemat(tmp_path / "test" / "image.mat", {"feats": test["image"]})
  write_split(tmp_path, "validation", make_arrays(6, seed=6), "npz")
  splits = load_all(tmp_path)
  np.testing.assert_allclose(splits["test"].features["image"], test["image"], rtol=1e-6)
  # labels.mat holds a vector, which MATLAB files store as a (1, N) row.
  np.testing.assert_array_equal(np.argmax(splits["test"].label, axis=1), test["labels"])
  np.testing.assert_allclose(splits["train"].features["text"], written["train"]["text"], rtol=1e-6)


def test_manifest_json_orders_modalities_and_names_classes(tmp_path):
  write_dataset(tmp_path, "npz")
  manifest = {"modalities": ["text", "image"], "class_names": ["w", "x", "y", "z"]}
  (tmp_path / "manifest.json").write_text(json.dumps(manifest))
  split = load_split("features", "test", tmp_path)
  assert split.modalities == ("text", "image")  # audio is not named, so not used
  assert split.class_names == ("w", "x", "y", "z")


def test_manifest_toml(tmp_path):
  pytest.importorskip("tomllib")
  write_dataset(tmp_path)
  (tmp_path / "manifest.toml").write_text(
    'modalities = ["image", "audio", "text"]\nclass_names = ["a", "b", "c", "d", "e"]\n'
  )
  split = load_split("features", "test", tmp_path)
  assert split.modalities == ("image", "audio", "text")
  assert split.class_names == ("a", "b", "c", "d", "e") and split.label.shape[1] == 5


def test_toml_manifest_needs_python_311(tmp_path, monkeypatch):
  write_dataset(tmp_path)
  (tmp_path / "manifest.toml").write_text('modalities = ["image", "text"]\n')
  monkeypatch.setattr(array_files, "tomllib", None)
  assert_data_error(tmp_path, "manifest.toml", "Python 3.11")


def test_unlabelled(tmp_path, monkeypatch):
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path / "cache"))
  write_dataset(tmp_path, "npz", counts={"train": 30, "test": 10}, labels=None)
  splits = load_all(tmp_path)
  assert {k: len(v) for k, v in splits.items()} == {"train": 27, "validation": 3, "test": 10}
  for split in splits.values():
    assert split.label is None and split.class_names == ()
    assert split.modalities == ("audio", "image", "text")
  (info,) = (tmp_path / "cache").rglob("features.json")
  assert '"label"' not in info.read_text()


def test_served_from_cache_and_reprepared_on_manifest_change(tmp_path, monkeypatch):
  write_dataset(tmp_path)
  first = load_split("features", "test", tmp_path)

  def fail(*args, **kwargs):
    raise AssertionError("source re-read although the cache is valid")

  with monkeypatch.context() as patch:
    patch.setattr(mscross.data.features.UserFeatures, "read_source", fail)
    again = load_split("features", "test", tmp_path)
  np.testing.assert_array_equal(first.features["image"], again.features["image"])
  (tmp_path / "manifest.json").write_text('{"modalities": ["text", "audio"]}')
  assert load_split("features", "test", tmp_path).modalities == ("text", "audio")


def _drop(root: Path, split: str, name: str) -> None:
  (root / split / f"{name}.npy").unlink()


def _put(root: Path, split: str, name: str, array) -> None:
  np.save(root / split / f"{name}.npy", np.asarray(array))


BROKEN = {
  "rows differ between modalities": (
    lambda r: _put(r, "test", "text", np.zeros((11, 3))),
    ["test/text.npy has 11", "test/audio.npy has 12", "paired rows"],
  ),
  "labels rows differ": (
    lambda r: _put(r, "train", "labels", np.arange(39) % C),
    ["train/labels.npy has 39", "paired rows"],
  ),
  "NaN": (
    lambda r: _put(r, "train", "image", np.full((40, 7), np.nan)),
    ["train/image.npy", "280 NaN"],
  ),
  "inf": (
    lambda r: _put(r, "test", "audio", np.full((12, 5), np.inf)),
    ["test/audio.npy", "60 inf"],
  ),
  "modality missing in one split": (
    lambda r: _drop(r, "test", "image"),
    ["test: no array for modality 'image'", "found: audio, text"],
  ),
  "modality only in test": (
    lambda r: _put(r, "test", "depth", np.zeros((12, 2))),
    ["test: array 'depth' is not in", "same modalities"],
  ),
  "dimension differs between splits": (
    lambda r: _put(r, "test", "text", np.zeros((12, 4))),
    ["test/text.npy: 4 feature columns, but 3 in", "train/text.npy"],
  ),
  "one modality": (
    lambda r: [_drop(r, s, n) for s in ("train", "test") for n in ("image", "text")],
    ["found 1 modality (audio)", "at least 2"],
  ),
  "manifest names a missing modality": (
    lambda r: (r / "manifest.json").write_text('{"modalities": ["image", "depth"]}'),
    ["no array for modality 'depth' named in", "manifest.json"],
  ),
  "manifest with one modality": (
    lambda r: (r / "manifest.json").write_text('{"modalities": ["image"]}'),
    ["manifest.json 'modalities'", "at least 2"],
  ),
  "manifest not JSON": (
    lambda r: (r / "manifest.json").write_text("{modalities: image}"),
    ["manifest.json: not valid JSON"],
  ),
  "manifest unknown key": (
    lambda r: (r / "manifest.json").write_text('{"modality": ["image", "text"]}'),
    ["manifest.json: unknown key 'modality'"],
  ),
  "manifest bad name": (
    lambda r: (r / "manifest.json").write_text('{"modalities": ["image", "my text"]}'),
    ["'my text' is invalid"],
  ),
  "two manifests": (
    lambda r: [(r / n).write_text("{}") for n in ("manifest.json", "manifest.toml")],
    ["both manifest.json and manifest.toml"],
  ),
  "class names without labels": (
    lambda r: (
      [_drop(r, s, "labels") for s in ("train", "test")]
      + [(r / "manifest.json").write_text('{"class_names": ["a", "b"]}')]
    ),
    ["manifest.json: class_names given, but no split has labels"],
  ),
  "labels in one split only": (
    lambda r: _drop(r, "test", "labels"),
    ["labels in", "train/labels.npy", "none for the test split"],
  ),
  "negative class id": (
    lambda r: _put(r, "test", "labels", np.r_[-1, np.arange(11) % C]),
    ["test/labels.npy", "1 label out of range", "-1"],
  ),
  "fractional class id": (
    lambda r: _put(r, "train", "labels", np.r_[0.5, np.arange(39) % C]),
    ["train/labels.npy", "out of range (e.g. 0.5"],
  ),
  "class id beyond class names": (
    lambda r: (r / "manifest.json").write_text('{"class_names": ["a", "b", "c"]}'),
    ["labels.npy", "out of range", "expected integers 0..2"],
  ),
  "implausible class id": (
    lambda r: _put(r, "train", "labels", np.r_[10**6, np.arange(39) % C]),
    ["train/labels.npy", "1,000,001 classes", "52 labelled examples"],
  ),
  "text labels": (
    lambda r: _put(r, "test", "labels", np.array(["cat"] * 12)),
    ["test/labels.npy: labels must be numbers"],
  ),
  "multi-hot with a 2": (
    lambda r: [_put(r, s, "labels", np.full((n, C), 2)) for s, n in (("train", 40), ("test", 12))],
    ["train/labels.npy", "out of range", "only 0 and 1"],
  ),
  "label forms differ": (
    lambda r: _put(r, "test", "labels", np.eye(C)[np.arange(12) % C]),
    ["label forms differ", "test/labels.npy a 0/1 matrix"],
  ),
  "unreadable npy": (
    lambda r: (r / "test" / "image.npy").write_text("not numpy"),
    ["test/image.npy: not a readable .npy file (no NumPy .npy header)"],
  ),
  "pickled npy": (
    lambda r: np.save(r / "test" / "image.npy", np.array([{"a": 1}] * 12), allow_pickle=True),
    ["test/image.npy: not a readable .npy file"],
  ),
  "unreadable mat": (
    lambda r: (r / "test" / "extra.mat").write_text("not matlab"),
    ["test/extra.mat: not a readable MATLAB"],
  ),
  "empty split": (
    lambda r: (
      [_put(r, "test", n, np.zeros((0, d))) for n, d in WIDTHS.items()]
      + [_put(r, "test", "labels", np.zeros(0, int))]
    ),
    ["test: no examples in the test split"],
  ),
  "one-dimensional features": (
    lambda r: _put(r, "test", "text", np.zeros(12)),
    ["test/text.npy", "expected a 2-D"],
  ),
  "complex features": (
    lambda r: _put(r, "test", "text", np.zeros((12, 3), complex)),
    ["test/text.npy: features must be real numbers"],
  ),
  "reserved name": (
    lambda r: [_put(r, s, "id", np.zeros((n, 1))) for s, n in (("train", 40), ("test", 12))],
    ["'id' cannot name a modality"],
  ),
  "same stem twice": (
    lambda r: scipy.io.savemat(r / "train" / "image.mat", {"image": np.zeros((40, 7))}),
    ["both image.mat and image.npy"],
  ),
  "folder and npz": (
    lambda r: np.savez(r / "test.npz", image=np.zeros((2, 2))),
    ["both test/ and test.npz"],
  ),
  "no test split": (
    lambda r: [_drop(r, "test", n) for n in [*WIDTHS, "labels"]] + [(r / "test").rmdir()],
    ["no test split", "test.npz"],
  ),
  "misnamed validation": (
    lambda r: (r / "valid").mkdir(),
    ["valid: a validation split must be named validation/ or validation.npz"],
  ),
  "class too rare to stratify": (
    lambda r: _put(r, "train", "labels", np.r_[7, np.arange(39) % C]),
    ["cannot hold out a class-stratified 10%", "give a validation split instead"],
  ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_malformed(tmp_path, case):
  write_dataset(tmp_path)
  breaks, fragments = BROKEN[case]
  breaks(tmp_path)
  assert_data_error(tmp_path, *fragments)


def test_malformed_mat_and_npz(tmp_path):
  write_dataset(tmp_path, "npz")
  (tmp_path / "test.npz").write_text("not a zip")
  assert_data_error(tmp_path, "test.npz: not a readable .npz file")
  (tmp_path / "test.npz").unlink()
  write_split(tmp_path, "test", make_arrays(12), "mat")
  scipy.io.savemat(tmp_path / "test" / "image.mat", {"a": np.zeros((12, 7)), "b": np.zeros(2)})
  assert_data_error(tmp_path, "test/image.mat: no variable 'image' and 2 others (a, b)")


def test_missing_data_dir(tmp_path):
  assert_data_error(tmp_path / "nowhere", "nowhere: not a folder")
