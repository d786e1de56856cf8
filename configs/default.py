"""The embedded default: MNS-GAN on digits_halves (scikit-learn's digits, left vs right half).

Needs no data directory and trains in well under two minutes on a laptop CPU.
"""

from mscross import presets


def get_config(arg=None):
  del arg
  return presets.build("mnsgan", "digits")
