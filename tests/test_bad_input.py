"""Property tests: malformed arrays and files never crash with anything but the project's own
error type (or load cleanly)."""

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
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


@settings(
  max_examples=15,
  deadline=None,
  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
  img=mat_arrays,
  txt=mat_arrays,
  lab=mat_arrays,
  drop=st.sampled_from([None, "test_txt", "train_img_lab"]),
  data_seed=st.integers(0, 2**31 - 1),
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
  try:
    split = data.load_split("dscmr_mat", "train", str(folder))
  except MscrossError as e:
    assert "\n" not in str(e)
  else:
    assert np.isfinite(split.image).all() and (split.label.sum(axis=1) >= 1).all()
