"""ACMR (Wang et al., ACM MM 2017) on the Wikipedia benchmark (128-d SIFT BoVW / 10-d LDA).

Needs the data directory (--config.data.data_dir or MSCROSS_DATA_DIR) holding wikipedia/.
"""

from mscross.config import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.method = "acmr"
  c.data.name = "wikipedia"
  c.model.img_layers = (512, 64)
  c.model.txt_layers = (256, 64)
  c.disc.layers = (32, 16)
  c.loss.label.weight = 1.0
  c.loss.acmr_triplet.weight = 1.0
  c.loss.acmr_triplet.margin = 0.5
  c.loss.reg.weight = 1e-4
  c.optim.lr = 1e-4
  c.train.batch_size = 64
  c.train.steps = 3000
  c.train.eval_every = 150
  c.train.checkpoint_every = 300
  return c
