"""ACMR on UCI multiple features, Fourier coefficients (76-d) vs pixel averages (240-d).

Needs the data directory (--config.data.data_dir or MSCROSS_DATA_DIR) holding uci_mfeat/.
"""

from mscross.config import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.method = "acmr"
  c.data.name = "uci_mfeat/fou_pix"
  c.model.img_layers = (256, 64)
  c.model.txt_layers = (256, 64)
  c.loss.acmr_triplet.margin = 0.5
  c.optim.lr = 1e-3
  c.train.batch_size = 64
  c.train.steps = 2000
  c.train.eval_every = 200
  c.train.checkpoint_every = 400
  return c
