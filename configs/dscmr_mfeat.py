"""DSCMR (Zhen et al., CVPR 2019)
on UCI multiple features: Fourier (76-d) vs pixel (240-d).

Needs uci_mfeat/ in the data directory: --config.data.data_dir or MSCROSS_DATA_DIR.
"""

from mscross import presets


def get_config(arg=None):
  del arg
  return presets.build("dscmr", "mfeat")
