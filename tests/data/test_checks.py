"""Property tests: malformed arrays and files never crash with anything but the project's own
error type (or load cleanly)."""

import json

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mscross import data
from mscross.data import checks
from mscross.errors import DataError, MscrossError

floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
# Mostly small whole numbers (valid-looking labels), sometimes anything a float can hold.
arrays = st.one_of(
  hnp.arrays(
    np.float64, shapes, elements=st.one_of(floats, st.sampled_from([-1.0, 0.0, 1.0, 2.0]))
  ),
  hnp.arrays(np.int64, shapes, elements=st.integers(-3, 3)),
)


@settings(max_examples=200, deadline=None)
@given(arrays, st.one_of(st.none(), st.integers(0, 6)))
def test_feature_check_only_raises_data_error(a, width):
  try:
    out = checks.features(a, "x.mat [img]", width)
  except DataError as e:
    assert "x.mat" in str(e) and "\n" not in str(e)
  else:
    assert out.dtype == np.float32 and out.ndim == 2 and np.isfinite(out).all()


@settings(max_examples=200, deadline=None)
@given(arrays, st.one_of(st.none(), st.integers(1, 6)))
def test_label_matrix_check_only_raises_data_error(a, num_classes):
  try:
    out = checks.multi_hot(a, "lab.mat [lab]", num_classes)
  except DataError as e:
    assert "lab.mat" in str(e) and "\n" not in str(e)
  else:
    assert set(np.unique(out)) <= {0.0, 1.0} and (out.sum(axis=1) >= 1).all()


@settings(max_examples=200, deadline=None)
@given(arrays, st.integers(0, 1), st.integers(1, 6))
def test_class_index_check_only_raises_data_error(a, first, num_classes):
  try:
    out = checks.class_indices(a, first, num_classes, "list.txt")
  except DataError as e:
    assert "list.txt" in str(e) and "\n" not in str(e)
  else:
    assert ((out >= 0) & (out < num_classes)).all()


mat_arrays = hnp.arrays(
  np.float64,
  st.one_of(st.tuples(st.integers(0, 12), st.integers(1, 5)), st.tuples(st.integers(1, 12))),
  elements=st.one_of(floats, st.sampled_from([-1.0, 0.0, 1.0, 2.0, 3.0])),
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path / "cache"))


def assert_loads_cleanly_or_fails_in_one_line(name: str, folder) -> None:
  """Loads train: any failure must be a one-line MscrossError; a success must be sound."""
  try:
    split = data.load_split(name, "train", str(folder))
  except MscrossError as e:
    assert "\n" not in str(e)
    event("refused")
  else:
    event("loaded")
    assert len(split) > 0 and len(split.modalities) >= 2
    assert all(np.isfinite(a).all() and a.dtype == np.float32 for a in split.features.values())
    if split.label is not None:
      assert (split.label.sum(axis=1) >= 1).all() and set(np.unique(split.label)) <= {0.0, 1.0}
      assert split.label.shape[1] == len(split.class_names)


# Cheap per example, but each one that loads prepares a dataset: keep the counts small.
PROPERTY_SETTINGS = settings(
  max_examples=12,
  deadline=None,
  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(
  img=mat_arrays,
  txt=mat_arrays,
  lab=mat_arrays,
  drop=st.sampled_from([None, "test_txt", "train_img_lab"]),
  data_seed=st.integers(0, 2**31 - 1),
)
# A stray class index of 79,496 once built a 79,497 x 79,497 one-hot table (25 GB).
@example(
  img=np.zeros((0, 1)), txt=np.zeros((0, 1)), lab=np.array([79496.0]), drop=None, data_seed=0
)
def test_random_dscmr_mat_folders_fail_only_with_project_errors(
  tmp_path_factory, cache, img, txt, lab, drop, data_seed
):
  folder = tmp_path_factory.mktemp("mat")
  rng = np.random.default_rng(data_seed)
  good = {
    "test_img": rng.normal(size=(6, 3)),
    "test_txt": rng.normal(size=(6, 2)),
    "test_img_lab": rng.integers(0, 3, size=(6, 1)),
  }
  files = {"train_img": img, "train_txt": txt, "train_img_lab": lab, **good}
  for key, value in files.items():
    if key != drop:
      scipy.io.savemat(folder / f"{key}.mat", {key: value})
  assert_loads_cleanly_or_fails_in_one_line("dscmr_mat", folder)


TAGS = ["img", "txt", "aud", "vid", "3d"]


@PROPERTY_SETTINGS
@given(
  tags=st.lists(st.sampled_from(TAGS), min_size=2, max_size=5, unique=True),
  replaced=st.one_of(
    st.just({}),
    st.dictionaries(
      st.sampled_from(
        [f"{p}_{t}{s}" for p in ("train", "test") for t in TAGS for s in ("", "_lab")]
      ),
      mat_arrays,
      min_size=1,
      max_size=2,
    ),
  ),
  drop=st.one_of(st.none(), st.sampled_from([f"{p}_{t}" for p in ("train", "test") for t in TAGS])),
  valid=st.booleans(),
  data_seed=st.integers(0, 2**31 - 1),
)
def test_random_multi_media_folders_fail_only_with_project_errors(
  tmp_path_factory, cache, tags, replaced, drop, valid, data_seed
):
  folder = tmp_path_factory.mktemp("media")
  rng = np.random.default_rng(data_seed)
  files = {}
  tags = sorted(tags, key=TAGS.index)  # the first in this order carries the labels
  for prefix, n in (("train", 20), ("test", 6)) + ((("valid", 4),) if valid else ()):
    classes = rng.permutation(np.arange(n) % 2)[:, None]
    for i, tag in enumerate(tags):
      files[f"{prefix}_{tag}"] = rng.normal(size=(n, 2 + i))
      if i == 0 or rng.random() < 0.3:
        files[f"{prefix}_{tag}_lab"] = classes
  files.update(replaced)
  for key, value in files.items():
    if key != drop:
      scipy.io.savemat(folder / f"{key}.mat", {key: value})
  assert_loads_cleanly_or_fails_in_one_line("dscmr_mat", folder)


feature_arrays = st.one_of(
  mat_arrays,
  hnp.arrays(
    st.sampled_from([np.int64, np.float32, np.bool_]),
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
  ),
)
MANIFESTS = [
  None,
  {"modalities": ["b", "a"]},
  {"modalities": ["a", "c"]},
  {"class_names": ["x", "y", "z"]},
  {"class_names": []},
  ["a", "b"],
]


@PROPERTY_SETTINGS
@given(
  fmt=st.sampled_from(["npy", "npz", "mat"]),
  replaced=st.one_of(
    st.just({}),
    st.dictionaries(
      st.sampled_from([f"{s}/{n}" for s in ("train", "test") for n in ("a", "b", "labels")]),
      feature_arrays,
      min_size=1,
      max_size=2,
    ),
  ),
  drop=st.one_of(st.none(), st.sampled_from(["train/labels", "test/b", "train/a"])),
  manifest=st.sampled_from(MANIFESTS),
  data_seed=st.integers(0, 2**31 - 1),
)
def test_random_feature_folders_fail_only_with_project_errors(
  tmp_path_factory, cache, fmt, replaced, drop, manifest, data_seed
):
  folder = tmp_path_factory.mktemp("features")
  rng = np.random.default_rng(data_seed)
  arrays = {}
  for split, n in (("train", 30), ("test", 6)):
    arrays[f"{split}/a"] = rng.normal(size=(n, 3))
    arrays[f"{split}/b"] = rng.normal(size=(n, 2))
    arrays[f"{split}/labels"] = np.arange(n) % 3
  arrays.update(replaced)
  if manifest is not None:
    (folder / "manifest.json").write_text(json.dumps(manifest))
  for split in ("train", "test"):
    own = {
      key.split("/")[1]: value
      for key, value in arrays.items()
      if key.startswith(f"{split}/") and key != drop
    }
    if fmt == "npz":
      np.savez(folder / f"{split}.npz", **own)
      continue
    (folder / split).mkdir()
    for name, value in own.items():
      if fmt == "npy":
        np.save(folder / split / f"{name}.npy", value)
      else:
        scipy.io.savemat(folder / split / f"{name}.mat", {name: value})
  assert_loads_cleanly_or_fails_in_one_line("features", folder)
