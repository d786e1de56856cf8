"""Trains a cross-modal retrieval model (or a population of them).

    python train.py --config configs/default.py:method=acmr,dataset=wikipedia \
        --workdir runs/acmr_wiki --config.optim.lr=1e-4
    python train.py --config runs/sweep/best_config.json          # a saved config

On several hosts (a multi-host TPU slice, or GPU hosts), run the same command on every host with
`--multihost`; see docs/multihost.md.

Kept short on purpose: the logic lives in `mscross.training.trainer`, where it can be tested.
"""

import json
import os
import sys

from absl import app, flags

from mscross import cli

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = cli.define_config_flag(os.path.join(_HERE, "configs", "default.py"))
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Where checkpoints and metrics go (default: runs/<method>_<dataset>)."
)
_ALLOW_CHANGE = flags.DEFINE_bool(
  "allow_config_change",
  False,
  "Resume a workdir although the config differs from the one it was started with (the change is "
  "recorded in history.jsonl).",
)
_MULTIHOST = flags.DEFINE_bool(
  "multihost",
  False,
  "Join a multi-process run (jax.distributed.initialize) before anything else: the same command "
  "on every host; the coordinator comes from the environment (TPU pod, SLURM, Open MPI, "
  "JAX_COORDINATOR_ADDRESS) unless the three flags below give it.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "With --multihost: host:port of process 0 (default: environment)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "With --multihost: number of processes (default: environment)."
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "With --multihost: this process's index (default: environment)."
)


def main(argv):
  del argv
  import jax

  from mscross.training import trainer

  if _MULTIHOST.value:
    # Must come before any JAX computation: it decides which devices exist.
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  programs = cli.enable_compilation_cache(cli.COMPILATION_CACHE.value)
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join(
    "runs", f"{config.method}_{config.data.name.replace('/', '_')}"
  )

  def go():
    result = trainer.train_and_evaluate(
      config, workdir, allow_config_change=_ALLOW_CHANGE.value, program_cache=programs
    )
    if jax.process_index() != 0:
      return
    line = {"workdir": workdir, "best_step": [m["best_step"] for m in result["members"]]}
    if result["population"] == 1:
      line["best_step"] = line["best_step"][0]
    line.update({f"test_{k}": v for k, v in result.get("test", {}).items() if k.endswith("map")})
    print(json.dumps(line))

  sys.exit(cli.run(go))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
