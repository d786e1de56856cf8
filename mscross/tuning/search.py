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
* Workers: a study may have any number of workers, on one machine or many
  (`mscross.tuning.storage`): together they finish exactly `trials` trials (complete or
  pruned), and the trials of a worker that died are run again. A killed sweep resumes where it
  stopped when its command is run again.
* The sampler is seeded (TPE, seed + the worker's index), so a single-worker sweep is
  reproducible.
* The best trial's config, as the study has it, is written to `best_config.json` (which
  `train.py --config` reads), and every finished trial to `trials.jsonl`.
* A group trains in `<workdir>/groups/<study key>/g<lead trial>`: its checkpoints belong to one
  study (a key drawn when the study is created) and one group of trials, so a workdir reused
  for another study never resumes the first one's checkpoints.
* A worker that stalled (stopped, cut off) long enough for another to take its trials over
  says so in one line when it comes back, drops that group's work and goes on with the study.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
import warnings

from mscross import atomic, methods
from mscross import config as config_lib
from mscross.errors import ConfigError
from mscross.training import plan as plan_lib
from mscross.training import trainer
from mscross.tuning import storage as storage_lib

BEST_CONFIG, TRIALS = "best_config.json", "trials.jsonl"
GROUPS, GROUP_FILE = "groups", "group.json"


class _TakenOver(Exception):
  """The group's trials were finished by another worker, which took this one for dead."""


def open_study(workdir: str, config, *, storage: str | None = None, seed: int = 0, progress=None):
  """The study of `workdir` (or of the `storage` URL), created on first use, with this
  worker's seeded sampler. A study started with another config is refused."""
  import optuna

  os.makedirs(workdir, exist_ok=True)
  url = storage_lib.url_of(workdir, storage)
  eval_every = int(config.train.eval_every)
  with storage_lib.claim_lock(url, workdir):
    study = optuna.create_study(
      storage=storage_lib.open_storage(url, progress),
      study_name=storage_lib.STUDY_NAME,
      direction="maximize",
      load_if_exists=True,
      # A member is judged only after three evaluations, against five finished trials.
      pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3 * eval_every),
    )
    workers = int(study.user_attrs.get("workers", 0))
    study.set_user_attr("workers", workers + 1)
    if "key" not in study.user_attrs:
      study.set_user_attr("key", uuid.uuid4().hex[:12])
    stored = study.user_attrs.get("base_config")
    if stored is None:
      study.set_user_attr("base_config", config_lib.to_json(config))
    elif json.loads(stored) != json.loads(config_lib.to_json(config)):
      raise ConfigError(
        f"the study in {storage_lib.shown(url)} was started with another config; choose "
        "another --workdir (or storage)"
      )
  study.sampler = optuna.samplers.TPESampler(seed=seed + workers, constant_liar=True)
  return study


def search_space(config, method: str) -> tuple:
  """The method's search space, less the settings of label predictions on unlabelled data."""
  labelled = bool(config.data.labels)
  return tuple(p for p in methods.get(method).search_space if labelled or not p.needs_labels)


def load_study(workdir: str, storage: str | None = None):
  """The study of `workdir` as it is, for reading (joins no worker, samples nothing)."""
  import optuna

  url = storage_lib.url_of(workdir, storage)
  return optuna.load_study(study_name=storage_lib.STUDY_NAME, storage=storage_lib.open_storage(url))


def _suggest(trial, space) -> dict:
  values = {}
  for p in space:
    if p.continuous:
      values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
    else:
      values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
  return values


def counts(study) -> dict[str, int]:
  """Trials by state (lower-case names), and how many were run again after their worker died."""
  out: dict[str, int] = {}
  trials = study.get_trials(deepcopy=False)
  for t in trials:
    out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
  out["rerun"] = sum("rerun_of" in t.user_attrs for t in trials)
  return out


def _claim_group(study, url, workdir, space, total: int, size: int, recovery_seconds: float):
  """Asks for up to `size` trials sharing the first one's structural choices; [] when the
  study has its `total` trials (complete, pruned or running)."""
  import optuna

  with storage_lib.claim_lock(url, workdir):
    storage_lib.recover(study, recovery_seconds=recovery_seconds)
    c = counts(study)
    size = min(size, total - c.get("complete", 0) - c.get("pruned", 0) - c.get("running", 0))
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
      t.set_user_attr("worker", storage_lib.worker_id())
      t.set_user_attr("group", group[0][0].number)
    return group


def group_config(config, method: str, group: list[tuple]) -> object:
  """The population config of a group of (trial, values): the lead's values, and every
  member's continuous values as traced per-member hyperparameters."""
  space = {p.name: p for p in search_space(config, method)}
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
  recovery_seconds: float = storage_lib.DEFAULT_RECOVERY_SECONDS,
  progress=print,
  program_cache: str | None = None,
):
  """Runs (or joins, or resumes) the study of `workdir` (or `storage`) until it has `trials`
  finished trials; a worker whose last claim finds nothing left ends, while others may still
  train. Returns the study; writes `best_config.json` and `trials.jsonl` into `workdir`.
  `recovery_seconds`: how long a trial's heartbeat may be silent before another worker takes
  its worker for dead and runs it again. `program_cache`: where traced programs are kept
  (`mscross.training.program_cache`), None for nowhere."""
  if trials < 1 or population < 1:
    raise ConfigError("trials and population must be positive")
  if not recovery_seconds > 0:
    raise ConfigError(f"recovery_seconds must be positive, got {recovery_seconds}")
  # Fails fast on a config no trial could train; each group's config is resolved by its run.
  method = plan_lib.resolve(config).method.name
  space = search_space(config, method)
  url = storage_lib.url_of(workdir, storage)
  study = open_study(workdir, config, storage=storage, seed=seed, progress=progress)

  def again(fn):
    return storage_lib.retrying(fn, url, progress)

  def claim():
    return _claim_group(study, url, workdir, space, trials, population, recovery_seconds)

  while group := again(claim):
    _run_group(
      study, config, method, group, workdir, recovery_seconds, again, progress, program_cache
    )
    again(lambda: _report(study, workdir, config, method, progress, [t for t, _ in group]))
  again(lambda: _report(study, workdir, config, method, progress, []))
  return study


def group_dir(workdir: str, study, trials, progress) -> str:
  """The folder of a group's run, keyed by the study and the group's lead trial, and marked with
  both: a folder there that another study or group left (copied in, say) is moved aside, said
  in one line, and the group starts afresh."""
  key = study.user_attrs["key"]
  run_dir = os.path.join(workdir, GROUPS, key, f"g{trials[0].number:04d}")
  owner = {"study": key, "trials": [t.number for t in trials]}
  marker = os.path.join(run_dir, GROUP_FILE)
  if os.path.isdir(run_dir):
    try:
      with open(marker) as f:
        found = json.load(f)
    except (OSError, ValueError):
      found = None
    if found != owner:
      aside = f"{run_dir}.foreign-{uuid.uuid4().hex[:6]}"
      os.rename(run_dir, aside)
      progress(f"{run_dir} held another study's or group's run; moved to {aside}, starting afresh")
  os.makedirs(run_dir, exist_ok=True)
  atomic.write_text(marker, json.dumps(owner))
  return run_dir


def _run_group(
  study, config, method, group, workdir, recovery_seconds, again, progress, program_cache
) -> None:
  import optuna

  select = config.eval.select_metric
  trials_of = [t for t, _ in group]
  run_dir = group_dir(workdir, study, trials_of, progress)
  pruned = [False] * len(group)

  def on_evaluation(step, val):
    mask = []
    for i, (t, v) in enumerate(zip(trials_of, val, strict=True)):
      if v is not None and not pruned[i]:
        try:
          again(lambda t=t, v=v: t.report(v[select], step))
        except optuna.exceptions.UpdateFinishedTrialError as e:
          raise _TakenOver from e
        pruned[i] = again(t.should_prune)
      mask.append(pruned[i])
    return mask

  beat = storage_lib.Heartbeat(trials_of, max(recovery_seconds / 10, 0.5))
  first, last = trials_of[0].number, trials_of[-1].number
  which = f"trial {first} was" if first == last else f"trials {first}-{last} were"
  taken_over = (
    f"{which} taken over by another worker while this one was stalled (its "
    f"heartbeat silent for over {recovery_seconds:g} s); dropping their work and going on"
  )
  try:
    with beat:
      result = trainer.train_and_evaluate(
        group_config(config, method, group),
        run_dir,
        evaluate_test=False,
        on_evaluation=on_evaluation,
        program_cache=program_cache,
      )
  except _TakenOver:
    progress(taken_over)
    again(lambda: storage_lib.release(study, trials_of))
    return
  except trainer.TrainingDiverged:
    for t in trials_of:
      again(lambda t=t: study.tell(t, state=optuna.trial.TrialState.FAIL))
    progress(f"trials {trials_of[0].number}-{trials_of[-1].number}: every member diverged")
    return
  for t, member in zip(trials_of, result["members"], strict=True):

    def record(t=t, member=member):
      t.set_user_attr("best_step", member["best_step"])
      t.set_user_attr("stopped", member["stopped"])
      t.set_user_attr("run_dir", run_dir)
      if member["stopped"] == "pruned":
        study.tell(t, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
      elif member["best_step"] < 0:
        study.tell(t, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
      else:
        study.tell(t, member["val"][select], skip_if_finished=True)

    try:
      again(record)
    except optuna.exceptions.UpdateFinishedTrialError:
      # Taken over after its last evaluation: the other worker's result stands.
      progress(taken_over)
      again(lambda: storage_lib.release(study, trials_of))
      return


def study_summary(study) -> str:
  """One line on the study as the database has it: complete, or still running on other workers,
  with its best trial (so far)."""
  c = counts(study)
  done = c.get("complete", 0) + c.get("pruned", 0)
  parts = [f"{c.get('complete', 0)} complete", f"{c.get('pruned', 0)} pruned"]
  if c.get("fail"):
    parts.append(f"{c['fail']} failed ({c['rerun']} of them run again)")
  best = "no trial complete yet"
  if c.get("complete"):
    t = study.best_trial
    best = f"best trial #{t.number}: {t.value:.4f} {t.params}"
  if c.get("running", 0) or c.get("waiting", 0):
    left = c.get("running", 0) + c.get("waiting", 0)
    return (
      f"this worker is done; {left} trial(s) still to finish on other workers ({done} finished: "
      f"{', '.join(parts)}); {best.replace('best trial', 'best so far')}"
    )
  return f"study complete: {done} trials ({', '.join(parts)}); {best}"


def _report(study, workdir, config, method, progress, group) -> None:
  import optuna

  trials = study.get_trials(deepcopy=False)
  finished = [t for t in trials if t.state.is_finished()]
  complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
  if group:
    state_of = {t.number: t.state.name.lower() for t in finished}
    states = ", ".join(f"#{t.number} {state_of.get(t.number, 'running')}" for t in group)
    best = f"; best #{study.best_trial.number}: {study.best_value:.4f}" if complete else ""
    progress(f"[{len(finished)} trials] {states}{best}")
  rows = [
    {
      "number": t.number,
      "state": t.state.name,
      "value": t.value,
      "params": t.params,
      **{k: v for k, v in t.user_attrs.items() if k not in ("worker", "heartbeat")},
    }
    for t in finished
  ]
  atomic.write_lines(os.path.join(workdir, TRIALS), [json.dumps(r) + "\n" for r in rows])
  if complete:
    best = best_config(config, method, study.best_trial.params)
    atomic.write_text(os.path.join(workdir, BEST_CONFIG), config_lib.to_json(best))
