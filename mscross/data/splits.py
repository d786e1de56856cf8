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
  indices: np.ndarray,
  fraction: float,
  strata: np.ndarray | None,
  where: str,
  hint: str = "",
  groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Splits `indices` into (kept, held out), holding out `fraction` of them with SPLIT_SEED.

  With `strata` (one class per index) the split keeps class proportions. With `groups` (one
  group name per index) it holds out `fraction` of the groups instead, every group whole on one
  side; classes are then not stratified. Both parts come back sorted so that examples stay in
  source order, which keeps ids easy to trace back.
  """
  # Imported here: scikit-learn takes seconds to import and only a cold prepare needs it.
  from sklearn.model_selection import GroupShuffleSplit, train_test_split

  try:
    if groups is not None:
      splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=SPLIT_SEED)
      kept_at, held_at = next(splitter.split(indices, groups=groups))
      kept, held = indices[kept_at], indices[held_at]
    else:
      kept, held = train_test_split(
        indices, test_size=fraction, random_state=SPLIT_SEED, stratify=strata
      )
  except ValueError as exc:
    kind = (
      "a group-wise" if groups is not None else "a class-stratified" if strata is not None else "a"
    )
    raise DataError(
      f"{where}: cannot hold out {kind} {fraction:.0%} of {len(indices)} examples "
      f"({one_line(exc)}){hint}"
    ) from exc
  return np.sort(kept), np.sort(held)


def split_60_20_20(
  classes: np.ndarray | None, where: str, groups: np.ndarray | None = None, *, size: int = 0
) -> dict[str, np.ndarray]:
  """Seeded 60% train / 20% validation / 20% test indices of `size` examples (or one per
  class in `classes`): class-stratified with `classes`, whole groups apart with `groups`."""
  n = len(classes) if classes is not None else size
  train, rest = holdout(np.arange(n), 0.4, classes, where, groups=groups)
  part = lambda x: None if x is None else x[rest]
  validation, test = holdout(rest, 0.5, part(classes), where, groups=part(groups))
  return {"train": train, "validation": validation, "test": test}


def carve_validation(
  train: Split, fraction: float, where: str, groups: np.ndarray | None = None
) -> tuple[Split, Split]:
  """(train, validation) with a seeded `fraction` of `train` held out as validation.

  With `groups` (one per example), a fraction of the groups, each whole on one side; else
  class-stratified for single-label data, plain random for multi-label or unlabelled data,
  where no single class per example exists to stratify on.
  """
  strata = None
  if groups is None and train.label is not None and np.all(train.label.sum(axis=1) == 1):
    strata = np.argmax(train.label, axis=1)
  hint = "; give a validation split instead"
  kept, held = holdout(np.arange(len(train)), fraction, strata, where, hint, groups)
  checks.nonempty(len(kept), where, "train")
  return subset(train, kept), subset(train, held)


# A validation item whose extracted features lie at least this close (cosine) to a train item's
# in some modality is a near-duplicate of it: scoring it measures memory, not generalisation.
NEAR_DUPLICATE_COSINE = 0.99


def nearest_cosine(query: np.ndarray, reference: np.ndarray, block: int = 1024) -> np.ndarray:
  """[N]: each `query` row's highest cosine similarity to a `reference` row (float64; a zero
  row has cosine 0 to everything)."""

  def unit(x):
    x = np.asarray(x, np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)

  q, r = unit(query), unit(reference)
  if not len(q) or not len(r):
    return np.full(len(q), -np.inf)
  return np.concatenate([np.max(q[i : i + block] @ r.T, axis=1) for i in range(0, len(q), block)])


def move_near_duplicates(
  train: Split, validation: Split, *, threshold: float = NEAR_DUPLICATE_COSINE, where: str = ""
) -> tuple[Split, Split]:
  """(train, validation) with every validation item that is a near-duplicate of a train item
  (cosine >= `threshold` between their features in any modality) moved to the end of train.

  Validation then holds items unlike the training collection, as the items of a test split
  drawn later from the same source are: a protocol (`data.validation=novel`) for data whose
  train list repeats itself. DataError when no validation item is left.
  """
  near = np.zeros(len(validation), bool)
  for m, x in validation.features.items():
    near |= nearest_cosine(x, train.features[m]) >= threshold
  if near.all():
    raise DataError(
      f"{where or 'validation'}: every one of the {len(validation)} validation items is a "
      f"near-duplicate (cosine >= {threshold}) of a train item; use data.validation=as_prepared"
    )
  moved, kept = np.flatnonzero(near), np.flatnonzero(~near)
  merged = Split(
    features={
      m: np.concatenate([x, validation.features[m][moved]]) for m, x in train.features.items()
    },
    label=None if train.label is None else np.concatenate([train.label, validation.label[moved]]),
    ids=np.concatenate([train.ids, validation.ids[moved]]),
    class_names=train.class_names,
  )
  return merged, subset(validation, kept)


def class_name_range(num_classes: int) -> tuple[str, ...]:
  """Class names "0".."C-1" for data whose classes carry no names."""
  return tuple(str(c) for c in range(num_classes))


def row_ids(num_examples: int) -> np.ndarray:
  """Ids "0".."N-1": an example's row in its source file(s)."""
  return np.asarray([str(i) for i in range(num_examples)], dtype=str)
