"""Where mscross keeps what it can always compute again: one root, `$MSCROSS_CACHE_DIR` or
`~/.cache/mscross`, with a folder per kind of thing kept.

    <root>/tfds/        prepared datasets (`mscross.data.cache`)
    <root>/tfds/_extracted/  each raw modality's extracted features, per extractor and item list
    <root>/extractors/  pretrained extractors' converted weights (`mscross.extractors.weights`)
    <root>/jax/         JAX's compilation cache, and traced programs (`programs/`)

Deleting any of them costs time, never a result. `$MSCROSS_JAX_CACHE_DIR` puts the JAX folder
elsewhere (the tests share one between processes).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "MSCROSS_CACHE_DIR"
JAX_ENV = "MSCROSS_JAX_CACHE_DIR"

PREPARED, EXTRACTED, WEIGHTS, JAX, PROGRAMS = "tfds", "_extracted", "extractors", "jax", "programs"


def root() -> Path:
  """The cache root: $MSCROSS_CACHE_DIR, else ~/.cache/mscross."""
  configured = os.environ.get(ROOT_ENV)
  return Path(configured).expanduser() if configured else Path.home() / ".cache" / "mscross"


def prepared() -> Path:
  """Prepared datasets, one folder per builder and source state."""
  return root() / PREPARED


def extracted() -> Path:
  """Extracted features of raw items, keyed by extractor and items."""
  return prepared() / EXTRACTED


def weights() -> Path:
  """Converted weights of pretrained extractors."""
  return root() / WEIGHTS


def jax_dir() -> Path:
  """JAX's persistent compilation cache: $MSCROSS_JAX_CACHE_DIR, else <root>/jax."""
  configured = os.environ.get(JAX_ENV)
  return Path(configured).expanduser() if configured else root() / JAX


def programs() -> Path:
  """Traced training programs (`mscross.training.program_cache`), beside JAX's cache."""
  return jax_dir() / PROGRAMS
