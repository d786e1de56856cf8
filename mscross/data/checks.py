"""Validation of arrays read from dataset source files, shared by every builder.

Each check raises `DataError` with a single line that names the offending file (and, for .mat
files, the variable), so a user can fix the input without reading a traceback. Builders run
these checks on the arrays right after reading the source, before TFDS writes anything, so a
broken source never leaves a prepared (and later trusted) cache behind.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.io

from mscross.errors import DataError, one_line

# Limits of `class_count`; see there.
MAX_CLASSES = 65_536
CLASSES_PER_EXAMPLE = 10


def _count(n: int, singular: str, plural: str) -> str:
  """ "1 <singular>" or "<n> <plural>", for counts in messages."""
  n = int(n)
  return f"{n} {singular if n == 1 else plural}"


def require_files(directory: Path, names: Sequence[str]) -> list[Path]:
  """Returns `directory / name` for each name; DataError if any of them is not a file."""
  paths = [directory / name for name in names]
  missing = [p.name for p in paths if not p.is_file()]
  if missing:
    raise DataError(
      f"missing {', '.join(missing)} in {directory} (expected files: {', '.join(names)})"
    )
  return paths


def mat_shape(path: Path, key: str) -> tuple[int, ...]:
  """Shape of variable `key` in a MATLAB file, read from the header without loading the data."""
  try:
    variables = scipy.io.whosmat(os.fspath(path))
  except Exception as exc:  # scipy raises several unrelated types for a bad file
    raise DataError(f"{path}: not a readable MATLAB v5 .mat file ({one_line(exc)})") from exc
  shapes = {name: shape for name, shape, _ in variables}
  if key not in shapes:
    raise DataError(f"{path}: no variable '{key}' (found: {', '.join(sorted(shapes)) or 'none'})")
  return tuple(shapes[key])


def load_mat(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
  """Loads the named variables from a MATLAB v5 .mat file; DataError if unreadable or absent."""
  try:
    contents = scipy.io.loadmat(os.fspath(path), variable_names=list(keys))
  except Exception as exc:  # scipy raises several unrelated types for a bad file
    raise DataError(f"{path}: not a readable MATLAB v5 .mat file ({one_line(exc)})") from exc
  missing = [key for key in keys if key not in contents]
  if missing:
    found = sorted(name for name, _, _ in scipy.io.whosmat(os.fspath(path)))
    raise DataError(f"{path}: no variable '{missing[0]}' (found: {', '.join(found) or 'none'})")
  return {key: contents[key] for key in keys}


def read_lines(path: Path) -> list[str]:
  """The lines of a UTF-8 text file; DataError if it is not text."""
  try:
    return path.read_text(encoding="utf-8").splitlines()
  except UnicodeDecodeError as exc:
    raise DataError(f"{path}: not a UTF-8 text file ({one_line(exc)})") from exc


def _float_or_nan(field: str) -> float:
  # An empty field means a missing value; NaN lets the feature and label checks report it
  # with their own messages instead of a generic parse error.
  return float(field) if field.strip() else np.nan


def read_csv(path: Path) -> np.ndarray:
  """Reads a numeric CSV with one header row into a float64 [rows, columns] array."""
  try:
    with warnings.catch_warnings():
      # numpy only warns on a file without data rows; the empty-split check reports that.
      warnings.simplefilter("ignore", UserWarning)
      return np.loadtxt(
        path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64, converters=_float_or_nan
      )
  except (ValueError, UnicodeDecodeError) as exc:
    raise DataError(f"{path}: unparsable CSV ({one_line(exc)})") from exc


def feature_width(shape: Sequence[int], where: str) -> int:
  """The number of columns of an [N, d] feature matrix of this shape; DataError if not 2-D."""
  if len(shape) != 2:
    raise DataError(
      f"{where}: expected a 2-D (examples x features) array, got shape {tuple(shape)}"
    )
  return int(shape[1])


def is_real(array: np.ndarray) -> bool:
  """Whether an array holds real numbers (integers, floats or booleans; not complex or text)."""
  dtype = np.asarray(array).dtype
  return bool(
    np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == np.bool_
  )


def features(array: np.ndarray, where: str, num_columns: int | None = None) -> np.ndarray:
  """Checks a [N, d] feature matrix (layout, width, finiteness) and returns it as float32.

  Finiteness is checked after the float32 cast, so float64 values too large for float32 are
  reported as inf rather than silently becoming inf in training.
  """
  array = np.asarray(array)
  if feature_width(array.shape, where) == 0:
    raise DataError(f"{where}: no feature columns (shape {tuple(array.shape)})")
  if not is_real(array):
    raise DataError(f"{where}: features must be real numbers, got dtype {array.dtype}")
  if num_columns is not None and array.shape[1] != num_columns:
    raise DataError(f"{where}: {array.shape[1]} feature columns, expected {num_columns}")
  with np.errstate(over="ignore"):
    array = array.astype(np.float32)
  num_nan = int(np.isnan(array).sum())
  num_inf = int(np.isinf(array).sum())
  if num_nan or num_inf:
    raise DataError(f"{where}: {num_nan} NaN and {num_inf} inf values in the features")
  return array


def same_count(counts: Mapping[str, int]) -> int:
  """Checks that every modality/label source has the same number of examples; returns it."""
  values = set(counts.values())
  if len(values) > 1:
    listing = ", ".join(f"{where} has {n}" for where, n in counts.items())
    raise DataError(
      f"different numbers of examples: {listing}; mscross needs paired rows "
      "(row i of every file describes the same example)"
    )
  return values.pop()


def nonempty(num_examples: int, where: str, split: str | None = None) -> None:
  """DataError if a source (or, with `split`, one split drawn from it) has no examples."""
  if num_examples == 0:
    raise DataError(f"{where}: no examples" + (f" in the {split} split" if split else ""))


def same_labels(first: np.ndarray, second: np.ndarray, first_where: str, second_where: str) -> None:
  """DataError if two row-aligned sources disagree on the label of any example."""
  differ = np.any(np.asarray(first) != np.asarray(second), axis=tuple(range(1, np.ndim(first))))
  if differ.any():
    count = _count(differ.sum(), "example", "examples")
    raise DataError(
      f"{first_where} and {second_where}: labels differ for {count} "
      f"(first at example {int(np.argmax(differ))}); mscross needs paired rows "
      "(row i of every file describes the same example)"
    )


def all_labelled(values: np.ndarray, where: str) -> np.ndarray:
  """Checks that class values are numbers, none NaN (no label); returns them flat as float64."""
  if not is_real(values):
    raise DataError(f"{where}: labels must be numbers, got dtype {np.asarray(values).dtype}")
  values = np.asarray(values, dtype=np.float64).reshape(-1)
  missing = np.isnan(values)
  if missing.any():
    count = _count(missing.sum(), "example has", "examples have")
    raise DataError(f"{where}: {count} no label (first at example {int(np.argmax(missing))})")
  return values


def class_indices(values: np.ndarray, first: int, num_classes: int, where: str) -> np.ndarray:
  """Checks class numbers in [first, first + num_classes) and returns them 0-based as int64.

  NaN marks an example without a label (an empty CSV field, for instance).
  """
  values = all_labelled(values, where)
  last = first + num_classes - 1
  bad = (values != np.round(values)) | (values < first) | (values > last)
  if bad.any():
    count = _count(bad.sum(), "label", "labels")
    raise DataError(
      f"{where}: {count} out of range (e.g. {values[bad][0]:g} at example "
      f"{int(np.argmax(bad))}); expected integers {first}..{last}"
    )
  return values.astype(np.int64) - first


def class_count(num_classes: int, num_examples: int | None, where: str) -> int:
  """Refuses a class count no real label set has, before it sizes a [N, C] label matrix.

  The rule: at most MAX_CLASSES classes in any case and, when the count is inferred from the
  largest class index (`num_examples` given), at most CLASSES_PER_EXAMPLE times the number of
  labelled examples over all splits. A stray huge index (a corrupted or mis-typed label file)
  would otherwise silently create that many empty classes.
  """
  if num_examples is not None and num_classes > min(
    MAX_CLASSES, CLASSES_PER_EXAMPLE * num_examples
  ):
    raise DataError(
      f"{where}: the largest class index implies {num_classes:,} classes for "
      f"{_count(num_examples, 'labelled example', 'labelled examples')}; mscross accepts at "
      f"most {CLASSES_PER_EXAMPLE} x the number of examples and {MAX_CLASSES:,} classes "
      "(is a label corrupted?)"
    )
  if num_classes > MAX_CLASSES:
    raise DataError(
      f"{where}: {num_classes:,} classes; mscross accepts at most {MAX_CLASSES:,} classes"
    )
  return num_classes


def one_hot(indices: np.ndarray, num_classes: int) -> np.ndarray:
  """float32 [N, num_classes] one-hot rows from 0-based class indices."""
  # Row-wise assignment: np.eye(num_classes)[indices] would allocate a C x C matrix.
  indices = np.asarray(indices, dtype=np.int64)
  rows = np.zeros((len(indices), num_classes), dtype=np.float32)
  rows[np.arange(len(indices)), indices] = 1.0
  return rows


def multi_hot(matrix: np.ndarray, where: str, num_classes: int | None = None) -> np.ndarray:
  """Checks an [N, C] 0/1 label matrix with at least one label per row; returns float32."""
  matrix = np.asarray(matrix)
  if not is_real(matrix):
    raise DataError(f"{where}: labels must be numbers, got dtype {matrix.dtype}")
  if matrix.ndim != 2:
    raise DataError(
      f"{where}: expected a 2-D (examples x classes) label matrix, got {matrix.shape}"
    )
  if num_classes is not None and matrix.shape[1] != num_classes:
    raise DataError(f"{where}: {matrix.shape[1]} label columns, expected {num_classes}")
  class_count(matrix.shape[1], None, where)
  values = matrix.astype(np.float64)
  bad = ~np.isin(values, (0.0, 1.0))
  if bad.any():
    count = _count(bad.sum(), "label entry", "label entries")
    raise DataError(
      f"{where}: {count} out of range (e.g. {values[bad][0]:g}); "
      "a label matrix must hold only 0 and 1"
    )
  empty = values.sum(axis=1) == 0
  if empty.any():
    count = _count(empty.sum(), "example has", "examples have")
    raise DataError(
      f"{where}: {count} no label (all-zero row, first at example {int(np.argmax(empty))})"
    )
  return values.astype(np.float32)
