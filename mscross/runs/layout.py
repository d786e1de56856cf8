"""A run's workdir: the names of its files, stated here and nowhere else, and reading and writing
them. Training writes a workdir; evaluation and `mscross.load` read it.

    config.json            the resolved config, the run's truth on resume
    dataset.json           the data spec (modalities, widths, classes)
    input_transform.npz    the input transform fitted on the training split
    data_problems.tsv      raw items skipped or converted when the dataset was prepared
    history.jsonl          losses and validation metrics at every evaluation
    metrics.json           the final result
    checkpoints/           Orbax checkpoints (latest/, best/)
    tensorboard/           TensorBoard event files
    .lock                  the writer's lock (`mscross.runs.lock`)
"""

from __future__ import annotations

import json
import os

from mscross import atomic
from mscross import config as config_lib
from mscross.data import raw
from mscross.errors import ConfigError

CONFIG = "config.json"
SPEC = "dataset.json"
TRANSFORM = "input_transform.npz"
HISTORY = "history.jsonl"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
LOCK_FILE = ".lock"
# Raw items skipped or converted when the dataset was prepared, one a line, tab-separated.
PROBLEMS = "data_problems.tsv"


def path(workdir: str, name: str) -> str:
  """The path of one of the workdir's files (a name above)."""
  return os.path.join(workdir, name)


def write_config(workdir: str, config) -> None:
  # A crash mid-write must not leave a truncated config.json: the run's truth on resume.
  atomic.write_text(path(workdir, CONFIG), config_lib.to_json(config))


def read_config(workdir: str):
  """The resolved config a training run wrote to the workdir."""
  file = path(workdir, CONFIG)
  if not os.path.exists(file):
    raise ConfigError(f"{file} not found: is {workdir!r} a workdir written by train.py?")
  return config_lib.load_config_file(file)


def write_spec(workdir: str, spec) -> None:
  atomic.write_json(path(workdir, SPEC), spec.to_json(), indent=1)


def write_problems(workdir: str, problems) -> None:
  """The dataset's skipped or converted raw items (`mscross.data.Problem`), as a TSV file with
  a header row; no file when there were none."""
  if problems:
    atomic.write_text(path(workdir, PROBLEMS), raw.problems_tsv(problems))
  elif os.path.exists(path(workdir, PROBLEMS)):
    os.remove(path(workdir, PROBLEMS))


def read_spec(workdir: str) -> dict:
  with open(path(workdir, SPEC)) as f:
    return json.load(f)


def write_metrics(workdir: str, result: dict) -> None:
  atomic.write_json(path(workdir, METRICS), result)


def read_history(workdir: str) -> list[dict]:
  """The records of `history.jsonl` (empty when there is none); a line cut off by a crash
  mid-write is left out."""
  file = path(workdir, HISTORY)
  if not os.path.exists(file):
    return []
  out = []
  with open(file) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return out


GAME_KEYS = ("val_disc_acc", "lambda", "loss_adv")


def game_state(workdir: str, member: int = 0, best_step: int | None = None) -> dict | None:
  """The adversarial game at the member's last evaluation (and at `best_step`, when given):
  `val_disc_acc` (the discriminator's modality accuracy on validation embeddings; chance is
  1/K), `lambda` (the adversary's current weight) and `loss_adv` (the generator's adversarial
  term). None when the run had no adversary."""
  records = [
    r
    for r in read_history(workdir)
    if r.get("member", 0) == member and "val_disc_acc" in r and "config_change" not in r
  ]
  if not records:
    return None
  pick = lambda r: {"step": r["step"], **{k: r.get(k) for k in GAME_KEYS}}
  out = {"last": pick(records[-1])}
  at_best = [r for r in records if r["step"] == best_step]
  if at_best:
    out["best"] = pick(at_best[-1])
  return out
