"""DSCMR (Zhen et al., CVPR 2019)
on the Wikipedia benchmark: 128-d SIFT BoVW vs 10-d LDA.

Needs wikipedia/ in the data directory: --config.data.data_dir or MSCROSS_DATA_DIR.
"""

from mscross import presets


def get_config(arg=None):
  del arg
  return presets.build("dscmr", "wikipedia")
