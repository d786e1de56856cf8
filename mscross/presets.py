"""Method x dataset presets: what `configs/default.py:method=...,dataset=...` builds.

`build(method, dataset)` = `base_config()`, then the dataset's preset (data source, input
transform, training length, learning rate), then the method's settings from the registry
(`mscross/methods.py`: network shape, loss terms, adversary), then the per-(method, dataset)
values in `TUNED`, each inside the method's search space and chosen on the VALIDATION split.
"""

from __future__ import annotations

from mscross import methods
from mscross.config import base_config, set_dotted
from mscross.errors import ConfigError

# Short names for the benchmark datasets.
ALIASES = {"mfeat": "uci_mfeat/fou_pix", "digits": "digits_halves"}


def _wikipedia(c):
  # BoVW histograms and topic proportions are already on a common scale; the Hellinger map on
  # the histograms beat z-scoring on validation.
  c.data.standardize = False
  c.data.powers = {"image": 0.5}
  c.optim.lr = 3e-4
  c.train.batch_size = 64
  c.train.steps = 1500
  c.train.eval_every = 100
  c.train.checkpoint_every = 300


def _uci_mfeat(c):
  c.optim.lr = 3e-3
  c.train.batch_size = 64
  c.train.steps = 2000
  c.train.eval_every = 200
  c.train.checkpoint_every = 400


def _digits(c):
  c.optim.lr = 1e-3
  c.train.batch_size = 64
  c.train.steps = 1500
  c.train.eval_every = 250
  c.train.checkpoint_every = 250


def _generic(c):
  # A user's own features: z-scored inputs and a step cap that early stopping cuts short.
  c.optim.lr = 1e-3
  c.train.steps = 20000
  c.train.eval_every = 250
  c.train.checkpoint_every = 1000
  c.train.patience = 10


FAMILIES = {
  "wikipedia": _wikipedia,
  "uci_mfeat": _uci_mfeat,
  "digits_halves": _digits,
  "dscmr_mat": _generic,
  "features": _generic,
}

# Per (method, dataset family) values, each chosen on the validation split.
TUNED: dict[tuple[str, str], dict] = {
  ("mnsgan", "uci_mfeat"): {"loss.multi_negative.tau": 0.3},
}


def family(dataset: str) -> str:
  """The preset family of a dataset name: "uci_mfeat/fou_kar_pix" -> "uci_mfeat"."""
  name = dataset.split("/", 1)[0]
  if name not in FAMILIES:
    raise ConfigError(f"unknown dataset {dataset!r}; presets exist for {sorted(FAMILIES)}")
  return name


def build(method: str, dataset: str, *, labels: bool = True):
  """The config of `method` ("acmr", "mnsgan", "ms2gan", "dscmr") on `dataset` (a dataset name
  such as "wikipedia", "uci_mfeat/fou_kar_pix", "digits_halves", "features", or an alias in
  ALIASES). `labels=False` trains and scores instance-level retrieval: the class labels are
  dropped and the label-prediction terms switched off."""
  spec = methods.get(method)
  dataset = ALIASES.get(dataset, dataset)
  fam = family(dataset)
  c = base_config()
  c.method = method
  c.data.name = dataset
  FAMILIES[fam](c)
  spec.configure(c)
  for key, value in TUNED.get((method, fam), {}).items():
    set_dotted(c, key, value)
  if not labels:
    from mscross import loss_terms

    c.data.labels = False
    for name in list(c.loss.keys()):
      if loss_terms.LOSS_TERMS[name].needs_labels:
        c.loss[name].weight = 0.0
  return c
