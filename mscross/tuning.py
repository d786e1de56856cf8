"""Hyperparameter search on the validation split, with Optuna.

`tune(config, workdir, trials=N)` runs an Optuna study that MAXIMISES the validation score
`config.eval.select_metric` over the search space the method declares in
`mscross/methods/registry.py`. The test split is never read during a sweep.

* Trials run in groups that share a program shape: a group's first trial samples every
  hyperparameter; the others keep its choices (widths, batch size, d_steps, integer and string
  options) and sample their own continuous values, which a population (`mscross.training.plan`)
  trains in one compiled program. `population=1` runs one trial per program.
* Pruning: each member reports its validation score at every evaluation, and Optuna's median
  pruner stops a member whose score is below the median of earlier trials at the same step, so a
  sweep costs a small multiple of one run. Members also stop by `train.patience`.
* Storage: by default a SQLite file `study.db` in the sweep's workdir, so a killed sweep resumes
  where it stopped (trials that were running when it died are marked failed and run again) and
  a second `tune.py` on the same workdir joins as another worker. `storage=` takes any Optuna
  RDB URL (PostgreSQL, MySQL), which is how a sweep spreads over machines.
* The sampler is seeded (TPE, seed + the worker's index), so a single-worker sweep is
  reproducible.
* The best trial's config is written to `best_config.json`, which `train.py --config` reads.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import fcntl
import json
import logging
import os
import socket
import warnings

from mscross import atomic, methods
from mscross import config as config_lib
from mscross.errors import ConfigError
from mscross.training import plan as plan_lib
from mscross.training import trainer

log = logging.getLogger(__name__)
STUDY_NAME = "mscross"
# The sweep's workdir: the study (SQLite), the best trial's config, one line per finished trial.
STUDY_DB, BEST_CONFIG, TRIALS = "study.db", "best_config.json", "trials.jsonl"


@contextlib.contextmanager
def _study_lock(workdir: str):
  """Serialises the workers of one machine around creating the study and claiming trials (two
  workers creating a new SQLite study at once race on its tables)."""
  with open(os.path.join(workdir, ".study.lock"), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _worker_id() -> str:
  return f"{socket.gethostname()}:{os.getpid()}"


def _alive(worker: str) -> bool:
  """Whether a worker id of THIS host names a live process (other hosts' are assumed alive)."""
  host, _, pid = worker.rpartition(":")
  if host != socket.gethostname():
    return True
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError):
    return True
  return True


def open_study(workdir: str, config, *, storage: str | None = None, seed: int = 0):
  """The study of `workdir` (created on first use), with this worker's seeded sampler."""
  import optuna

  os.makedirs(workdir, exist_ok=True)
  url = storage or f"sqlite:///{os.path.abspath(os.path.join(workdir, STUDY_DB))}"
  eval_every = int(config.train.eval_every)
  with _study_lock(workdir):
    study = optuna.create_study(
      storage=url,
      study_name=STUDY_NAME,
      direction="maximize",
      load_if_exists=True,
      # A member is judged only after three evaluations, against five finished trials.
      pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3 * eval_every),
    )
    workers = int(study.user_attrs.get("workers", 0))
    study.set_user_attr("workers", workers + 1)
    stored = study.user_attrs.get("base_config")
    if stored is None:
      study.set_user_attr("base_config", config_lib.to_json(config))
    elif json.loads(stored) != json.loads(config_lib.to_json(config)):
      raise ConfigError(
        f"the study in {workdir} was started with another config; choose another --workdir"
      )
  study.sampler = optuna.samplers.TPESampler(seed=seed + workers, constant_liar=True)
  return study


def load_study(workdir: str, storage: str | None = None):
  """The study of `workdir` as it is, for reading (joins no worker, samples nothing)."""
  import optuna

  url = storage or f"sqlite:///{os.path.abspath(os.path.join(workdir, STUDY_DB))}"
  return optuna.load_study(study_name=STUDY_NAME, storage=url)


# A trial is RUNNING from `study.ask()` on, a moment before its worker is recorded; one with no
# worker after this long was claimed by a worker that died in that moment.
_CLAIM_SECONDS = 600


def _recover(study, *, local: bool) -> int:
  """Marks trials left RUNNING by dead workers as failed and queues their parameters again.

  `local`: the study lives in the workdir's own SQLite file, so every worker claims under the
  workdir's lock, which the caller holds: a RUNNING trial without a worker is then orphaned.
  """
  import optuna

  now = datetime.datetime.now()
  n = 0
  for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    worker = t.user_attrs.get("worker")
    if worker:
      dead = not _alive(worker)
    else:
      started = t.datetime_start or now
      dead = local or (now - started).total_seconds() > _CLAIM_SECONDS
    if dead:
      study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
      if t.params:
        study.enqueue_trial(t.params, skip_if_exists=False)
      n += 1
  return n


def _suggest(trial, space) -> dict:
  values = {}
  for p in space:
    if p.continuous:
      values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
    else:
      values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
  return values


def _claim_group(study, workdir: str, space, total: int, size: int, *, local: bool):
  """Asks for up to `size` trials sharing the first one's structural choices; [] when the
  study has its `total` trials."""
  import optuna

  with _study_lock(workdir):
    _recover(study, local=local)
    done = len(
      study.get_trials(
        deepcopy=False,
        states=(
          optuna.trial.TrialState.COMPLETE,
          optuna.trial.TrialState.PRUNED,
          optuna.trial.TrialState.RUNNING,
        ),
      )
    )
    size = min(size, total - done)
    if size <= 0:
      return []
    tpe = study.sampler
    group = []
    try:
      lead = study.ask()
      lead_values = _suggest(lead, space)
      group.append((lead, lead_values))
      fixed = {p.name: lead_values[p.name] for p in space if not p.continuous}
      with warnings.catch_warnings():
        # Experimental in name only: its interface has not changed since Optuna 2.4.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.PartialFixedSampler(fixed, tpe)
      for _ in range(size - 1):
        t = study.ask()
        group.append((t, _suggest(t, space)))
    finally:
      study.sampler = tpe
    for t, _ in group:
      t.set_user_attr("worker", _worker_id())
      t.set_user_attr("group", group[0][0].number)
    return group


def group_config(config, method: str, group: list[tuple]) -> object:
  """The population config of a group of (trial, values): the lead's values, and every
  member's continuous values as traced per-member hyperparameters."""
  space = {p.name: p for p in methods.get(method).search_space}
  c = copy.deepcopy(config)
  with c.unlocked():
    methods.apply_params(c, method, group[0][1])
    c.population.size = len(group)
    c.population.vary_seed = False  # members compare settings, not seeds
    sweep = {}
    for name, p in space.items():
      if p.continuous:
        sweep[name] = [float(values[name]) for _, values in group]
    c.population.hparams = json.dumps(sweep) if len(group) > 1 else ""
  return c


def best_config(config, method: str, values: dict):
  c = copy.deepcopy(config)
  with c.unlocked():
    methods.apply_params(c, method, values)
  return c


def tune(
  config,
  workdir: str,
  *,
  trials: int,
  population: int = 1,
  storage: str | None = None,
  seed: int = 0,
  progress=print,
):
  """Runs (or joins, or resumes) the study of `workdir` until it has `trials` finished trials.

  Returns the study. Writes `best_config.json` and `trials.jsonl` into `workdir`.
  """
  import optuna

  if trials < 1 or population < 1:
    raise ConfigError("trials and population must be positive")
  # Fails fast on a config no trial could train; each group's config is resolved by its run.
  method = plan_lib.resolve(config).method.name
  space = methods.get(method).search_space
  study = open_study(workdir, config, storage=storage, seed=seed)
  select = config.eval.select_metric
  while group := _claim_group(study, workdir, space, trials, population, local=storage is None):
    trials_of = [t for t, _ in group]
    run_dir = os.path.join(workdir, "groups", f"g{trials_of[0].number:04d}")
    pruned = [False] * len(group)

    def on_evaluation(step, val, trials_of=trials_of, pruned=pruned):
      mask = []
      for i, (t, v) in enumerate(zip(trials_of, val, strict=True)):
        if v is not None and not pruned[i]:
          t.report(v[select], step)
          pruned[i] = t.should_prune()
        mask.append(pruned[i])
      return mask

    c = group_config(config, method, group)
    try:
      result = trainer.train_and_evaluate(
        c, run_dir, evaluate_test=False, on_evaluation=on_evaluation
      )
    except trainer.TrainingDiverged:
      for t in trials_of:
        study.tell(t, state=optuna.trial.TrialState.FAIL)
      progress(f"trials {trials_of[0].number}-{trials_of[-1].number}: every member diverged")
      continue
    for t, member in zip(trials_of, result["members"], strict=True):
      t.set_user_attr("best_step", member["best_step"])
      t.set_user_attr("stopped", member["stopped"])
      t.set_user_attr("run_dir", run_dir)
      if member["stopped"] == "pruned":
        study.tell(t, state=optuna.trial.TrialState.PRUNED)
      elif member["best_step"] < 0:
        study.tell(t, state=optuna.trial.TrialState.FAIL)
      else:
        study.tell(t, member["val"][select])
    _report(study, workdir, config, method, progress, trials_of)
  _report(study, workdir, config, method, progress, [])
  return study


def _report(study, workdir, config, method, progress, group) -> None:
  import optuna

  finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
  complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
  if group:
    state_of = {t.number: t.state.name.lower() for t in finished}
    states = ", ".join(f"#{t.number} {state_of.get(t.number, 'running')}" for t in group)
    best = f"; best #{study.best_trial.number}: {study.best_value:.4f}" if complete else ""
    progress(f"[{len(finished)} trials] {states}{best}")
  with open(os.path.join(workdir, TRIALS), "w") as f:
    for t in finished:
      row = {
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        "params": t.params,
        **{k: v for k, v in t.user_attrs.items() if k != "worker"},
      }
      f.write(json.dumps(row) + "\n")
  if complete:
    best = best_config(config, method, study.best_trial.params)
    atomic.write_text(os.path.join(workdir, BEST_CONFIG), config_lib.to_json(best))
