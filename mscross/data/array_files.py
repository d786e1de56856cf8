"""Reading the user's array files (.npy, .npz, .mat) and dataset manifests (.json, .toml).

Every failure is a one-line `DataError` naming the file, so that a feature folder can be fixed
from the message alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from mscross.data import base, checks
from mscross.errors import DataError, one_line

try:
  import tomllib
except ImportError:  # Python 3.10: TOML manifests are refused with a message saying why
  tomllib = None

ARRAY_SUFFIXES = (".npy", ".mat")
MANIFEST_NAMES = ("manifest.json", "manifest.toml")
MANIFEST_KEYS = ("modalities", "class_names")
NPY_MAGIC = b"\x93NUMPY"


def load_npy(path: Path) -> np.ndarray:
  """The array in a .npy file (no pickled objects)."""
  try:
    with open(path, "rb") as file:
      # np.load takes any other content for a pickle and says so, which misleads here.
      if file.read(len(NPY_MAGIC)) != NPY_MAGIC:
        raise ValueError("no NumPy .npy header")
    return np.load(os.fspath(path), allow_pickle=False)
  except Exception as exc:  # numpy raises several unrelated types for a bad file
    raise DataError(f"{path}: not a readable .npy file ({one_line(exc)})") from exc


def load_npz(path: Path) -> dict[str, np.ndarray]:
  """All arrays in a .npz file, by name, in the file's order."""
  try:
    archive = np.load(os.fspath(path), allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise ValueError("a single array, not a zip archive of named arrays")
    with archive:
      return {name: archive[name] for name in archive.files}
  except Exception as exc:  # numpy and zipfile raise several unrelated types for a bad file
    raise DataError(f"{path}: not a readable .npz file ({one_line(exc)})") from exc


def load_mat_array(path: Path) -> tuple[np.ndarray, str]:
  """(array, variable name) of a .mat file: the variable named like the file, else its only one."""
  try:
    variables = [name for name, _, _ in scipy.io.whosmat(os.fspath(path))]
  except Exception as exc:  # scipy raises several unrelated types for a bad file
    raise DataError(f"{path}: not a readable MATLAB v5 .mat file ({one_line(exc)})") from exc
  if path.stem in variables:
    key = path.stem
  elif len(variables) == 1:
    key = variables[0]
  else:
    raise DataError(
      f"{path}: no variable '{path.stem}' and {len(variables)} others "
      f"({', '.join(variables) or 'none'}); name the variable like the file"
    )
  return checks.load_mat(path, [key])[key], key


def load_array(path: Path) -> tuple[np.ndarray, str]:
  """(array, where) of a .npy or .mat file; `where` names the file (and variable) in messages."""
  if path.suffix == ".npy":
    return load_npy(path), str(path)
  array, key = load_mat_array(path)
  return array, f"{path} [{key}]"


@dataclasses.dataclass(frozen=True)
class Manifest:
  """What a dataset's optional manifest declares; None where it says nothing."""

  path: Path | None = None
  modalities: tuple[str, ...] | None = None
  class_names: tuple[str, ...] | None = None


def find_manifest(folder: Path) -> Path | None:
  """The manifest file in `folder`, if any; DataError if there are two."""
  present = [folder / name for name in MANIFEST_NAMES if (folder / name).is_file()]
  if len(present) > 1:
    raise DataError(f"{folder}: both manifest.json and manifest.toml; keep one")
  return present[0] if present else None


def _parse(path: Path) -> Any:
  try:
    text = path.read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as exc:
    raise DataError(f"{path}: not a readable UTF-8 text file ({one_line(exc)})") from exc
  if path.suffix == ".json":
    try:
      return json.loads(text)
    except json.JSONDecodeError as exc:
      raise DataError(f"{path}: not valid JSON ({one_line(exc)})") from exc
  if tomllib is None:
    raise DataError(f"{path}: TOML manifests need Python 3.11 or newer; use manifest.json")
  try:
    return tomllib.loads(text)
  except tomllib.TOMLDecodeError as exc:
    raise DataError(f"{path}: not valid TOML ({one_line(exc)})") from exc


def _names(value: Any, key: str, path: Path) -> tuple[str, ...]:
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise DataError(f"{path}: '{key}' must be a list of strings, got {value!r}")
  repeated = sorted({v for v in value if value.count(v) > 1})
  if repeated:
    raise DataError(f"{path}: '{key}' lists {repeated[0]!r} more than once")
  return tuple(value)


def read_manifest(folder: Path) -> Manifest:
  """The manifest of a feature folder (see `features`); an empty Manifest if there is none."""
  path = find_manifest(folder)
  if path is None:
    return Manifest()
  content = _parse(path)
  if not isinstance(content, dict):
    raise DataError(f"{path}: expected a table of keys ({', '.join(MANIFEST_KEYS)})")
  unknown = sorted(set(content) - set(MANIFEST_KEYS))
  if unknown:
    raise DataError(
      f"{path}: unknown key '{unknown[0]}'; a manifest may set {', '.join(MANIFEST_KEYS)}"
    )
  modalities = class_names = None
  if "modalities" in content:
    modalities = base.check_modalities(
      _names(content["modalities"], "modalities", path), f"{path} 'modalities'"
    )
  if "class_names" in content:
    class_names = _names(content["class_names"], "class_names", path)
    if not class_names:
      raise DataError(f"{path}: 'class_names' is empty; list the classes or drop the key")
  return Manifest(path=path, modalities=modalities, class_names=class_names)
