"""`digits_halves`: scikit-learn's 8x8 digits cut into a left-half and a right-half modality.

A tiny, always-available paired dataset (no download, no data directory) for smoke tests and
examples: the two halves of an image are two views of the same digit, as an image and its
caption are two views of the same concept.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, ClassVar

import numpy as np

from mscross.data import base, checks
from mscross.data.splits import Split, class_name_range, row_ids, split_60_20_20, subset

MODALITIES = ("left", "right")
NUM_CLASSES = 10
HALF_DIM = 32  # 8 rows x 4 columns


class DigitsHalves(base.PairedBuilder, skip_registration=True):
  """scikit-learn digits: modality `left` (columns 0-3) and modality `right` (columns 4-7).

  1,797 examples, 10 classes, pixel values scaled from 0..16 to [0, 1], 32 features per half.
  Seeded (seed 0), class-stratified 60/20/20 train/validation/test split.
  """

  NAME = "digits_halves"
  ALIASES: ClassVar[dict[str, str]] = {"digits": "digits_halves"}
  PRESET: ClassVar[dict[str, Any]] = {
    "optim.lr": 1e-3,
    "train.batch_size": 64,
    "train.steps": 1500,
    "train.eval_every": 250,
    "train.checkpoint_every": 250,
  }

  @classmethod
  def modalities_for(cls, config_name: str | None) -> tuple[str, ...]:
    del config_name
    return MODALITIES

  @classmethod
  def source_fingerprint_extra(cls) -> str:
    # The data ships inside scikit-learn, so its version stands in for file stats.
    return f"scikit-learn {importlib.metadata.version('scikit-learn')}"

  def read_source(self) -> dict[str, Split]:
    # Imported here: scikit-learn takes seconds to import and only a cold prepare needs it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float64) / 16.0
    where = "scikit-learn load_digits()"
    halves = {"left": images[:, :, :4], "right": images[:, :, 4:]}
    everything = Split(
      features={
        name: checks.features(half.reshape(len(images), -1), where, HALF_DIM)
        for name, half in halves.items()
      },
      label=checks.one_hot(checks.class_indices(digits.target, 0, NUM_CLASSES, where), NUM_CLASSES),
      ids=row_ids(len(images)),
      class_names=class_name_range(NUM_CLASSES),
    )
    classes = np.argmax(everything.label, axis=1)
    parts = split_60_20_20(classes, where)
    return {name: subset(everything, idx) for name, idx in parts.items()}
