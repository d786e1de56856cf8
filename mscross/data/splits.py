"""A dataset's splits: the in-memory `Split` record, and the seeded ways builders draw splits
(held-out fractions, 60/20/20, validation carved from train) and name rows and classes."""

from __future__ import annotations

import dataclasses

import numpy as np

from mscross.data import checks
from mscross.errors import DataError, one_line

SPLITS = ("train", "validation", "test")

# Splits are a property of the dataset, not of a training run, so their seed is fixed here
# rather than taken from the training seed: every run and every model sees the same test set.
SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset with K >= 2 row-aligned modalities, held in memory.

  Attributes:
    features: modality name -> float32 [N, d_m] features; the dict order is the dataset's
      modality order (row i of every array describes example i).
    label: float32 [N, C] multi-hot labels (one-hot for single-label data); None when the
      dataset is unlabelled.
    ids: str [N], a human-readable id per example.
    class_names: the C class names, in label-column order; () when unlabelled.
  """

  features: dict[str, np.ndarray]
  label: np.ndarray | None
  ids: np.ndarray
  class_names: tuple[str, ...]

  def __post_init__(self):
    # A private copy: the record is frozen, and a caller's dict must not change it afterwards.
    object.__setattr__(self, "features", dict(self.features))
    object.__setattr__(self, "class_names", tuple(self.class_names))
    rows = {name: len(array) for name, array in self.features.items()}
    rows["ids"] = len(self.ids)
    if self.label is not None:
      rows["label"] = len(self.label)
    if len(set(rows.values())) > 1:
      raise ValueError(f"Split arrays differ in length: {rows}")

  @property
  def modalities(self) -> tuple[str, ...]:
    """The modality names, in the dataset's order."""
    return tuple(self.features)

  def __len__(self) -> int:
    return len(self.ids)


def subset(split: Split, indices: np.ndarray) -> Split:
  """The examples of `split` at `indices`, in that order."""
  return Split(
    features={name: array[indices] for name, array in split.features.items()},
    label=None if split.label is None else split.label[indices],
    ids=split.ids[indices],
    class_names=split.class_names,
  )


def holdout(
  indices: np.ndarray, fraction: float, strata: np.ndarray | None, where: str, hint: str = ""
) -> tuple[np.ndarray, np.ndarray]:
  """Splits `indices` into (kept, held out), holding out `fraction` of them with SPLIT_SEED.

  With `strata` (one class per index) the split keeps class proportions. Both parts come back
  sorted so that examples stay in source order, which keeps ids easy to trace back.
  """
  # Imported here: scikit-learn takes seconds to import and only a cold prepare needs it.
  from sklearn.model_selection import train_test_split

  try:
    kept, held = train_test_split(
      indices, test_size=fraction, random_state=SPLIT_SEED, stratify=strata
    )
  except ValueError as exc:
    kind = "a class-stratified" if strata is not None else "a"
    raise DataError(
      f"{where}: cannot hold out {kind} {fraction:.0%} of {len(indices)} examples "
      f"({one_line(exc)}){hint}"
    ) from exc
  return np.sort(kept), np.sort(held)


def split_60_20_20(classes: np.ndarray, where: str) -> dict[str, np.ndarray]:
  """Class-stratified, seeded 60% train / 20% validation / 20% test indices."""
  train, rest = holdout(np.arange(len(classes)), 0.4, classes, where)
  validation, test = holdout(rest, 0.5, classes[rest], where)
  return {"train": train, "validation": validation, "test": test}


def carve_validation(train: Split, fraction: float, where: str) -> tuple[Split, Split]:
  """(train, validation) with a seeded `fraction` of `train` held out as validation.

  Class-stratified for single-label data; plain random for multi-label or unlabelled data,
  where no single class per example exists to stratify on.
  """
  strata = None
  if train.label is not None and np.all(train.label.sum(axis=1) == 1):
    strata = np.argmax(train.label, axis=1)
  hint = "; give a validation split instead"
  kept, held = holdout(np.arange(len(train)), fraction, strata, where, hint)
  checks.nonempty(len(kept), where, "train")
  return subset(train, kept), subset(train, held)


def class_name_range(num_classes: int) -> tuple[str, ...]:
  """Class names "0".."C-1" for data whose classes carry no names."""
  return tuple(str(c) for c in range(num_classes))


def row_ids(num_examples: int) -> np.ndarray:
  """Ids "0".."N-1": an example's row in its source file(s)."""
  return np.asarray([str(i) for i in range(num_examples)], dtype=str)
