"""Interpreting label arrays read from files: class indices or 0/1 matrices, one form per dataset.

Feature releases store labels in one of two forms, and the same form must be used by every split
of a dataset:
  class indices  a vector, an (N, 1) column or, as MATLAB saves a vector, a (1, N) row;
  0/1 matrix     (N, C), one column per class, several 1s per row allowed (multi-label).
Both come out as float32 (N, C) multi-hot rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mscross.data import checks
from mscross.errors import DataError


def is_index_form(labels: np.ndarray, num_examples: int) -> bool:
  """Whether labels are class indices (vector, (N,1) or (1,N)) rather than an (N, C) matrix.

  A single column is always indices (a one-class matrix would carry no information), and so is
  a single row unless the split has one example, where (1, C) is that example's label row.
  """
  labels = np.asarray(labels)
  if labels.ndim <= 1:
    return True
  return labels.ndim == 2 and (labels.shape[1] == 1 or (labels.shape[0] == 1 and num_examples != 1))


def to_multi_hot(
  raw: Mapping[str, np.ndarray],
  num_examples: Mapping[str, int],
  where: Mapping[str, str],
  *,
  first_index: int | None,
  class_names: Sequence[str] | None = None,
  folder: str = "",
) -> dict[str, np.ndarray]:
  """Float32 multi-hot labels of every split, all in one form with one class count.

  Args:
    raw: each split's label array as read, keyed by split name (train first).
    num_examples: each split's number of examples, to tell a (1, N) index row from a label row.
    where: each split's label source, for messages ("file [variable]").
    first_index: the class index of the first class (0 or 1); None detects it from the
      smallest index over all splits, which must then be 0 or 1.
    class_names: the class names when the source declares them; their number is then C.
      Otherwise C is the largest index (plus one if 0-based), or the matrix width.
    folder: the dataset folder, named when the splits disagree with each other.

  Raises:
    DataError: forms differ between splits, or any label is missing, out of range, not a number
      or implies an implausible number of classes (see `checks.class_count`).
  """
  forms = {split: is_index_form(raw[split], num_examples[split]) for split in raw}
  if len(set(forms.values())) > 1:
    listing = ", ".join(
      f"{where[s]} {'class indices' if forms[s] else 'a 0/1 matrix'}" for s in raw
    )
    raise DataError(f"{folder}: label forms differ between splits ({listing})")
  if next(iter(forms.values())):
    return _indices_to_multi_hot(raw, where, first_index, class_names)
  first_split = next(iter(raw))
  num_classes = len(class_names) if class_names is not None else None
  if num_classes is None and np.ndim(raw[first_split]) == 2:
    num_classes = np.shape(raw[first_split])[1]
  return {s: checks.multi_hot(raw[s], where[s], num_classes) for s in raw}


def _indices_to_multi_hot(
  raw: Mapping[str, np.ndarray],
  where: Mapping[str, str],
  first_index: int | None,
  class_names: Sequence[str] | None,
) -> dict[str, np.ndarray]:
  # Missing labels are reported per file before they can confuse the range rules below.
  flat = {split: checks.all_labelled(values, where[split]) for split, values in raw.items()}
  lowest = {split: values.min() for split, values in flat.items() if values.size}
  if not lowest:
    first_split = next(iter(raw))
    raise DataError(f"{where[first_split]}: no examples")
  smallest_split = min(lowest, key=lowest.get)
  first = first_index
  if first is None:
    first = lowest[smallest_split]
    if first not in (0, 1):
      raise DataError(
        f"{where[smallest_split]}: labels out of range: smallest class index is {first:g}, "
        "expected 0 (0-based labels) or 1 (1-based labels)"
      )
    first = int(first)
  for split, values in flat.items():
    bad = ~np.isfinite(values) | (values != np.round(values)) | (values < first)
    if bad.any():
      count = "1 label" if bad.sum() == 1 else f"{int(bad.sum())} labels"
      raise DataError(
        f"{where[split]}: {count} out of range (e.g. {values[bad][0]:g} at example "
        f"{int(np.argmax(bad))}); expected whole-number class indices from {first}"
      )
  if class_names is not None:
    num_classes = len(class_names)
  else:
    largest_split = max(lowest, key=lambda s: flat[s].max())
    total = sum(values.size for values in flat.values())
    largest = int(flat[largest_split].max())
    num_classes = checks.class_count(largest - first + 1, total, where[largest_split])
  return {
    split: checks.one_hot(
      checks.class_indices(values, first, num_classes, where[split]), num_classes
    )
    for split, values in flat.items()
  }
