"""bench/modality_probe.py's probe on embeddings whose answer is known: modalities that are
told apart by one coordinate, and modalities whose embeddings are the same vectors."""

import numpy as np
import pytest
from helpers import bench_module


@pytest.fixture(scope="module")
def probe():
  with bench_module("modality_probe") as module:
    yield module


def test_separable_modalities_are_told_apart(probe):
  rng = np.random.default_rng(0)
  image = rng.normal(size=(60, 8))
  text = rng.normal(size=(60, 8))
  text[:, 0] += 6.0  # one direction holds the modality
  assert probe.probe_accuracy({"image": image, "text": text}) == pytest.approx(1.0)


def test_identical_embeddings_leave_the_probe_at_chance(probe):
  # Both sides of a pair fall in the same fold, so the held-out image and text rows are the
  # same vector: whatever the probe says, it is right on exactly one of them.
  shared = np.random.default_rng(1).normal(size=(50, 8))
  three = {"image": shared, "text": shared.copy(), "audio": shared.copy()}
  assert probe.probe_accuracy({"image": shared, "text": shared.copy()}) == pytest.approx(0.5)
  assert probe.probe_accuracy(three) == pytest.approx(1 / 3)
