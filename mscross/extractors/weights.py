"""Converted weights, cached: a published weight file is converted to a params pytree once, and
the result is stored under the cache directory keyed by the file's SHA-256, so a changed or
replaced file is converted afresh and an unchanged one is read back in well under a second.

Cache: `mscross.caches.weights()`/<name>-<sha256 prefix>.npz.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mscross import atomic, caches
from mscross.errors import ConfigError

# Folded into every cache key: bump when a converter's output changes for the same file.
CONVERSION_VERSION = "1"


def cache_dir() -> Path:
  return caches.weights()


def sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def package_file(package: str, relative: str, install: str) -> Path:
  """A file shipped inside an installed package; ConfigError saying how to install it if not."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise ConfigError(f"the weights come from the package {package!r}, not installed: {install}")
  path = Path(next(iter(spec.submodule_search_locations))) / relative
  if not path.is_file():
    raise ConfigError(f"{path}: missing from the installed package {package!r}; {install}")
  return path


def _flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      if "/" in key:
        raise ValueError(f"param name {key!r} contains '/'")
      out.update(_flatten(value, f"{prefix}{key}/"))
    return out
  return {prefix[:-1]: np.asarray(tree)}


def _unflatten(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for key, value in arrays.items():
    node = tree
    *parents, leaf = key.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def converted(
  name: str, source: Path, convert: Callable[[Path], dict[str, Any]]
) -> tuple[dict[str, Any], str]:
  """(params, fingerprint) of the weight file `source` converted by `convert` (a nested dict of
  arrays), converting only when no cached copy for the file's hash exists."""
  fingerprint = f"{name}-{sha256(source)[:16]}-c{CONVERSION_VERSION}"
  path = cache_dir() / f"{fingerprint}.npz"
  if path.is_file():
    with np.load(path, allow_pickle=False) as f:
      return _unflatten({key: f[key] for key in f.files}), fingerprint
  params = convert(source)
  path.parent.mkdir(parents=True, exist_ok=True)
  with atomic.replacing(path, suffix=".npz") as tmp:
    np.savez(tmp, **_flatten(params))
  return params, fingerprint
