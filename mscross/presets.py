"""Method x dataset presets: what `configs/default.py:method=...,dataset=...` builds.

`build(method, dataset)` = the schema's defaults (`mscross.config`), then the dataset's preset
(its builder's `PRESET`: input transform, training length, learning rate), then the method's
settings from the registry (`mscross.methods`: network shape, loss terms, adversary), then the
per-(method, dataset) values in `TUNED`, each inside the method's search space and chosen on the
VALIDATION split. Every loss term's entry is filled in with every option's default, so any option
can be overridden from the command line.
"""

from __future__ import annotations

from mscross import data, dotted, methods
from mscross.config import base_config
from mscross.errors import ConfigError, DataError
from mscross.methods import registry

# Per (method, dataset family) values, each chosen on the validation split.
TUNED: dict[tuple[str, str], dict] = {
  ("mnsgan", "uci_mfeat"): {"loss.multi_negative.tau": 0.3},
}


def build(method: str, dataset: str, *, labels: bool = True):
  """The config of `method` (a name of `mscross.methods.names()`) on `dataset` (a dataset name
  of `mscross.data.available_datasets()`, or a short name such as "mfeat"). `labels=False`
  trains and scores instance-level retrieval: the class labels are dropped and the
  label-prediction terms switched off."""
  spec = methods.get(method)
  dataset = data.canonical_name(dataset)
  try:
    builder = data.builder(dataset)
  except DataError as e:  # a name on the command line, not a problem with data files
    raise ConfigError(str(e)) from None
  c = base_config()
  c.method = method
  c.data.name = dataset
  for key, value in builder.PRESET.items():
    dotted.set_(c, key, value)
  # Listed with the dataset's default (empty: its own features), so that the encoders show in
  # the written config and `--config.data.encoders.<modality>=...` has a key to override.
  c.data.encoders = {m: builder.DEFAULT_ENCODERS.get(m, "") for m in builder.RAW_MODALITIES}
  spec.configure(c)
  c.adv.enabled = spec.adversarial
  c.loss = {name: registry.complete_options(name, entry) for name, entry in c.loss.items()}
  for key, value in TUNED.get((method, builder.NAME), {}).items():
    dotted.set_(c, key, value)
  if not labels:
    c.data.labels = False
    for name in list(c.loss.keys()):
      if registry.term(name).needs_labels:
        c.loss[name].weight = 0.0
  return c
