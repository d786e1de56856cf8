"""Method x dataset presets: what `configs/default.py:method=...,dataset=...` builds.

`build(method, dataset)` = the schema's defaults (`mscross.config`), then the dataset's preset
(its builder's `PRESET`: input transform, training length, learning rate), then the method's
settings from the registry (`mscross.methods`: network shape, loss terms, adversary), then, where
the benchmark tuned this (method, dataset variant), the tuned values stored as data in
`mscross/presets/tuned/` (`mscross.presets.store`), each inside the method's search space and
chosen on the VALIDATION split; each file names the command that tuned it. Every loss term's
entry is filled in with every option's default, so any option can be overridden from the
command line.
"""

from __future__ import annotations

import logging

from mscross import data, dotted, methods
from mscross.config import base_config
from mscross.errors import ConfigError, DataError
from mscross.methods import registry
from mscross.presets import store


def _builder(dataset: str):
  try:
    return data.builder(dataset)
  except DataError as e:  # a name on the command line, not a problem with data files
    raise ConfigError(str(e)) from None


def variant_extractors(dataset: str, extractors: dict[str, str] | None) -> dict[str, str]:
  """`extractors` ({raw modality: extractor name}) checked against the dataset's raw modalities,
  less those equal to its builder's defaults: the part of the dataset variant that names it."""
  builder = _builder(data.canonical_name(dataset))
  out = {}
  for modality, name in (extractors or {}).items():
    if modality not in builder.RAW_MODALITIES:
      raw = ", ".join(builder.RAW_MODALITIES) or "none"
      raise ConfigError(
        f"{modality}={name}: {builder.NAME} has no raw modality {modality!r} to encode (its raw "
        f"modalities: {raw})"
      )
    if name != builder.DEFAULT_EXTRACTORS.get(modality, ""):
      out[modality] = name
  return out


def tuned(method: str, dataset: str, extractors: dict[str, str] | None = None):
  """The stored tuned preset (`store.Tuned`) of `method` on this dataset variant, or None."""
  dataset = data.canonical_name(dataset)
  return store.read(method, dataset, variant_extractors(dataset, extractors))


def build(
  method: str,
  dataset: str,
  *,
  labels: bool = True,
  extractors: dict[str, str] | None = None,
  use_tuned: bool = True,
):
  """The config of `method` (a name of `mscross.methods.names()`) on `dataset` (a dataset name
  of `mscross.data.available_datasets()`, or a short name such as "mfeat"). `extractors`
  ({modality: extractor name}) picks extractors for the dataset's raw modalities, e.g.
  {"text": "wordllama"} on wikipedia. `labels=False` trains and scores instance-level
  retrieval: the class labels are dropped and the label-prediction terms switched off.
  `use_tuned=False` leaves out the stored tuned values (the benchmark's studies start there)."""
  spec = methods.get(method)
  dataset = data.canonical_name(dataset)
  builder = _builder(dataset)
  chosen = variant_extractors(dataset, extractors)
  c = base_config()
  c.method = method
  c.data.name = dataset
  for key, value in builder.PRESET.items():
    dotted.set_(c, key, value)
  # Listed with the dataset's default (empty: its own features), so that the extractors show in
  # the written config and `--config.data.extractors.<modality>=...` has a key to override.
  c.data.extractors = {
    m: chosen.get(m, builder.DEFAULT_EXTRACTORS.get(m, "")) for m in builder.RAW_MODALITIES
  }
  spec.configure(c)
  c.adv.enabled = spec.adversarial
  c.loss = {name: registry.complete_options(name, entry) for name, entry in c.loss.items()}
  found = store.read(method, dataset, chosen) if use_tuned else None
  if found is not None:
    for key, value in found.settings.items():
      dotted.set_(c, key, value)
    methods.apply_params(c, method, found.params)
    logging.info("%s on %s: tuned preset %s", method, dataset, store.path(method, dataset, chosen))
  if not labels:
    c.data.labels = False
    for name in list(c.loss.keys()):
      if registry.term(name).needs_labels:
        c.loss[name].weight = 0.0
  return c
