"""Trains a cross-modal retrieval model.

    python train.py --config configs/acmr_wikipedia.py --workdir runs/acmr_wiki \
        --config.optim.lr=1e-4

Kept short on purpose: the logic lives in `mscross.trainer`, where it can be tested.
"""

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from mscross import cli, trainer

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = config_flags.DEFINE_config_file(
  "config", os.path.join(_HERE, "configs", "default.py"), "Config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Where checkpoints and metrics go (default: runs/<method>_<dataset>)."
)


def main(argv):
  del argv
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join(
    "runs", f"{config.method}_{config.data.name.replace('/', '_')}"
  )

  def go():
    result = trainer.train_and_evaluate(config, workdir)
    print(
      json.dumps(
        {
          "workdir": workdir,
          "best_step": result["best_step"],
          **{f"test_{k}": v for k, v in result["test"].items() if k.endswith("map")},
        }
      )
    )

  sys.exit(cli.run(go))


if __name__ == "__main__":
  app.run(main)
