"""Method and dataset presets that the files in `configs/` combine.

`build(method, dataset)` = `base_config()`, then the dataset preset (data source, input
transform, training length, learning rate), then the method preset (network shape, loss terms
with their weights and options, adversary). Layer sizes and weights that docs/methods.md marks as
proposals are starting points tuned on the VALIDATION split only.
"""

from __future__ import annotations

from mscross.config import base_config
from mscross.errors import ConfigError


def _wikipedia(c):
  c.data.name = "wikipedia"
  # BoVW histograms and topic proportions are already on a common scale; the Hellinger map on
  # the histograms beat z-scoring on validation.
  c.data.standardize = False
  c.data.img_power = 0.5
  c.optim.lr = 3e-4
  c.train.batch_size = 64
  # Every method peaked on validation before step 1200 in trial runs.
  c.train.steps = 1500
  c.train.eval_every = 100
  c.train.checkpoint_every = 300


def _mfeat(c):
  c.data.name = "uci_mfeat/fou_pix"
  c.optim.lr = 3e-3
  c.train.batch_size = 64
  c.train.steps = 2000
  c.train.eval_every = 200
  c.train.checkpoint_every = 400


def _digits(c):
  c.data.name = "digits_halves"
  c.optim.lr = 1e-3
  c.train.batch_size = 64
  c.train.steps = 1500
  c.train.eval_every = 250
  c.train.checkpoint_every = 250


DATASETS = {"wikipedia": _wikipedia, "mfeat": _mfeat, "digits": _digits}


def _acmr(c):
  c.method = "acmr"
  c.model.img_layers = (512, 64)
  c.model.txt_layers = (256, 64)
  c.loss = dict(
    label=dict(weight=1.0),
    acmr_triplet=dict(weight=1.0, margin=0.5, negative="random"),
    reg=dict(weight=1e-4),
  )


def _mnsgan(c):
  c.method = "mnsgan"
  c.model.img_layers = (512, 64)
  c.model.txt_layers = (256, 64)
  c.loss = dict(
    label=dict(weight=1.0),
    multi_negative=dict(weight=1.0, tau=0.1, negatives="all", k=5, intra_weight=0.5, margin=0.0),
    reg=dict(weight=1e-4),
  )


def _ms2gan(c):
  c.method = "ms2gan"
  c.model.img_layers = (512, 128)
  c.model.txt_layers = (256, 128)
  c.model.shared_layers = (128, 128)
  c.model.classifier_input = "concat"
  c.model.retrieval = "joint"
  c.model.mu = 1.0
  c.disc.layers = (32,)
  c.loss = dict(
    label=dict(weight=1.0),
    ms2gan_similarity=dict(weight=1.0, margin=1.0, mining="all"),
    ms2gan_difference=dict(weight=0.1, kind="large_margin", margin=0.5),
  )


def _dscmr(c):
  c.method = "dscmr"
  c.model.img_layers = (2048,)
  c.model.txt_layers = (2048,)
  c.model.shared_layers = (1024,)
  c.model.activation = "relu"
  c.model.shared_activate_final = False
  c.adv.enabled = False
  c.optim.lr = 1e-4
  c.train.batch_size = 100
  c.loss = dict(
    dscmr_label=dict(weight=1.0),
    dscmr_pairwise=dict(weight=1e-3),
    dscmr_invariance=dict(weight=1e-1),
  )


METHODS = {"acmr": _acmr, "mnsgan": _mnsgan, "ms2gan": _ms2gan, "dscmr": _dscmr}

# Per (method, dataset) changes, each chosen on the validation split.
TUNED = {
  ("mnsgan", "mfeat"): {"loss.multi_negative.tau": 0.3},
}


def build(method: str, dataset: str):
  """The config of `method` ("acmr", "mnsgan", "ms2gan", "dscmr") on `dataset` ("wikipedia",
  "mfeat", "digits")."""
  if method not in METHODS:
    raise ConfigError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
  if dataset not in DATASETS:
    raise ConfigError(f"unknown dataset preset {dataset!r}; choose one of {sorted(DATASETS)}")
  c = base_config()
  DATASETS[dataset](c)
  METHODS[method](c)
  apply_overrides(c, TUNED.get((method, dataset), {}))
  return c


def apply_overrides(config, overrides: dict) -> None:
  """Sets dotted keys, e.g. {"loss.multi_negative.tau": 0.3}, as --config.<key>=... would."""
  for dotted, value in overrides.items():
    *path, last = dotted.split(".")
    node = config
    for key in path:
      node = node[key]
    node[last] = value
