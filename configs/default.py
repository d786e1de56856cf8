"""The embedded default: ACMR on digits_halves (scikit-learn's digits, left half vs right half).

Needs no data directory and trains in well under two minutes on a laptop CPU.
"""

from mscross.config import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.method = "acmr"
  c.data.name = "digits_halves"
  c.model.img_layers = (256, 64)
  c.model.txt_layers = (256, 64)
  c.loss.label.weight = 1.0
  c.loss.acmr_triplet.margin = 0.5
  c.optim.lr = 1e-3
  c.train.batch_size = 64
  c.train.steps = 1500
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  return c
