"""The Flax EfficientNet-Lite0 against the original PyTorch model, through the crops, pooled
features and logits stored in fixtures/efficientnet_lite0.npz (written by
reference_efficientnet.py, which needs PyTorch), and its conversion cache."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from torch_files import dict_opcodes, legacy_file, tensor_opcodes

from mscross import caches, extractors
from mscross.errors import DataError
from mscross.extractors import efficientnet, weights

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "efficientnet_lite0.npz"
# float32 on both sides; the two libraries only sum in different orders.
TOLERANCE = 1e-4
DAISY = 985

with np.load(FIXTURE, allow_pickle=False) as _f:
  REFERENCE = {key: _f[key] for key in _f.files}
NAMES = [str(name) for name in REFERENCE["names"]]


def _source() -> Path:
  return weights.package_file(efficientnet.PACKAGE, efficientnet.WEIGHT_FILE, efficientnet.INSTALL)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """The registered extractor, converted into a fresh cache (never the user's)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(caches.ROOT_ENV, str(tmp_path_factory.mktemp("cache")))
    yield extractors.get("efficientnet_lite0", "image").load()


@pytest.fixture(scope="module")
def outputs(model):
  """(features, logits) of the fixture's crops, in full float32 (accelerators would otherwise
  multiply in reduced precision)."""
  with jax.default_matmul_precision("float32"):
    features, logits = jax.jit(efficientnet.forward)(
      model.params, efficientnet.normalize(REFERENCE["crops"])
    )
  return np.asarray(features), np.asarray(logits)


@pytest.mark.parametrize("index", range(len(NAMES)), ids=NAMES)
def test_matches_the_pytorch_reference(outputs, index):
  features, logits = outputs
  feature_diff = np.abs(features[index] - REFERENCE["features"][index]).max()
  logit_diff = np.abs(logits[index] - REFERENCE["logits"][index]).max()
  assert feature_diff <= TOLERANCE, feature_diff
  assert logit_diff <= TOLERANCE, logit_diff
  assert logits[index].argmax() == REFERENCE["logits"][index].argmax()


def test_a_daisy_is_a_daisy(outputs):
  assert outputs[1][NAMES.index("flower.jpg")].argmax() == DAISY


def test_registered_extractor(model):
  extractor = extractors.get("efficientnet_lite0", "image")
  assert extractor.dim == efficientnet.FEATURES
  assert model.fingerprint.startswith("efficientnet_lite0-")
  image = Image.new("RGB", (300, 200), (127, 255, 0))
  prepared = model.prepare(image)
  assert prepared["image"].dtype == np.float32
  assert prepared["image"].shape == (224, 224, 3)
  # The TF-Lite scaling: 127 -> 0, 255 -> 1, 0 -> -127/128.
  assert np.allclose(prepared["image"], [0.0, 1.0, -127 / 128])
  batch = model.collate([prepared, prepared])
  shape = jax.eval_shape(model.apply, model.params, batch)
  assert shape.shape == (2, efficientnet.FEATURES)
  assert shape.dtype == np.float32


def test_conversion_is_cached(tmp_path, monkeypatch):
  monkeypatch.setenv(caches.ROOT_ENV, str(tmp_path))
  calls = []

  def counting(path):
    calls.append(path)
    return efficientnet.convert(path)

  first, fingerprint = weights.converted("efficientnet_lite0", _source(), counting)
  second, again = weights.converted("efficientnet_lite0", _source(), counting)
  assert len(calls) == 1
  assert again == fingerprint
  assert [p.name for p in caches.weights().iterdir()] == [f"{fingerprint}.npz"]
  assert jax.tree.structure(first) == jax.tree.structure(second)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, first, second)))


def test_convert_refuses_other_weights(tmp_path):
  weight = tensor_opcodes("0", np.float32, 12, 0, (4, 3), (3, 1))
  main = b"\x80\x02" + dict_opcodes({"_fc.weight": weight}) + b"."
  path = legacy_file(tmp_path / "other.pth", main, {"0": np.zeros(12, np.float32)})
  with pytest.raises(DataError, match="not EfficientNet-Lite0's weights.*_fc.weight has shape"):
    efficientnet.convert(path)
