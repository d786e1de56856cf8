"""Searches a method's hyperparameters on the validation split (Optuna).

    python tune.py --config configs/default.py:method=mnsgan,dataset=wikipedia \
        --trials 24 --workdir runs/tune_mnsgan_wiki
    python train.py --config runs/tune_mnsgan_wiki/best_config.json --workdir runs/mnsgan_best

Run the same command again to resume a stopped sweep, or in a second terminal to add a worker.
`--storage postgresql+psycopg://...` shares one study between machines (README: "One study on
many machines"). Watch a study with `optuna-dashboard sqlite:///runs/tune_mnsgan_wiki/study.db`.

Kept short on purpose: the logic lives in `mscross.tuning`.
"""

import os
import sys

from absl import app, flags

from mscross import cli
from mscross.tuning import storage

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = cli.define_config_flag(os.path.join(_HERE, "configs", "default.py"))
_WORKDIR = flags.DEFINE_string("workdir", None, "The sweep's folder.", required=True)
_TRIALS = flags.DEFINE_integer(
  "trials", 24, "Finished trials the study should reach.", lower_bound=1
)
_POPULATION = flags.DEFINE_integer(
  "population", 4, "Trials trained together in one program (same shape).", lower_bound=1
)
_STORAGE = flags.DEFINE_string(
  "storage", None, "Optuna RDB URL (default: sqlite:///<workdir>/study.db)."
)
_SEED = flags.DEFINE_integer("sampler_seed", 0, "Seed of the TPE sampler.")
_RECOVERY = flags.DEFINE_float(
  "recovery_seconds",
  storage.DEFAULT_RECOVERY_SECONDS,
  "How long a trial's heartbeat may be silent before another worker takes its worker for dead "
  "and runs the trial again (a dead worker of this machine is noticed at once).",
  lower_bound=0.1,
)


def main(argv):
  del argv

  def go():
    from mscross import tuning

    programs = cli.enable_compilation_cache(cli.COMPILATION_CACHE.value)
    study = tuning.tune(
      _CONFIG.value,
      _WORKDIR.value,
      program_cache=programs,
      trials=_TRIALS.value,
      population=_POPULATION.value,
      storage=_STORAGE.value,
      seed=_SEED.value,
      recovery_seconds=_RECOVERY.value,
    )
    print(tuning.study_summary(study))
    if not tuning.counts(study).get("complete"):
      print("no trial completed (every one was pruned or failed)", file=sys.stderr)
      return 1
    print(f"config: {os.path.join(_WORKDIR.value, tuning.BEST_CONFIG)}")
    return 0

  sys.exit(cli.run(go))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
