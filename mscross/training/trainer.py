"""`train_and_evaluate(config, workdir)`: the training run behind train.py.

One run trains a population of `population.size` members (one, by default) in one program
(`mscross.training.plan`, `mscross.training.program`). Steps run on the device in chunks between
evaluation points. Every `eval_every` steps the VALIDATION split is scored for every member; a
member's best state so far is kept (`checkpoints/best` holds every member's best generator), and
with `train.patience` a member stops once its validation score has not improved for that many
evaluations (`mscross.training.selection`). Every `checkpoint_every` steps (and on
SIGINT/SIGTERM) the whole state is saved to `checkpoints/latest`, from which a rerun of the same
command resumes. At the end each member's best-on-validation state is scored on validation and
test and written to `metrics.json` (`mscross.training.runlog`): every member, and the mean and
std over them.

Only process 0 (under `train.py --multihost`) writes the workdir's files, logs and the progress
bar, and holds the workdir's lock (`mscross.runs.lock`); every process trains, evaluates and
takes part in the collective checkpoint saves.

`train_and_evaluate` reads top to bottom: the data, the plan, the program, then chunks of steps
over one immutable run state (`mscross.training.run`), then the final scores.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from mscross.errors import MscrossError
from mscross.runs import checkpoints, inputs, layout, lock
from mscross.training import loop, resume, runlog
from mscross.training import plan as plan_lib
from mscross.training import program as program_lib
from mscross.training import run as run_lib

log = logging.getLogger(__name__)


class TrainingDiverged(MscrossError):
  """Every member had too many consecutive steps with a non-finite loss or gradient."""


def train_and_evaluate(
  config,
  workdir: str,
  *,
  allow_config_change: bool = False,
  evaluate_test: bool = True,
  on_evaluation: Callable | None = None,
  program_cache: str | None = None,
) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns metrics.json.

  Args:
    config: the config; resolved into the run plan here.
    workdir: where everything goes; locked for the life of the run.
    allow_config_change: resume a workdir whose stored config differs from `config` in keys
      other than `resume.SAFE_TO_CHANGE` (the change is recorded in history.jsonl).
    evaluate_test: False never reads nor scores the test split (hyperparameter search).
    on_evaluation: `fn(step, val_metrics: list[dict | None]) -> prune mask [P]`, called after
      every evaluation with each member's validation metrics (None for stopped members); the
      members it returns True for stop as "pruned".
    program_cache: a folder to keep the traced training loop in (`program_cache`), so that a
      later run of the same shape skips tracing it; None keeps nothing.
  """
  main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  with lock.WorkdirLock(workdir) if main else contextlib.nullcontext():
    source = inputs.DataSource.of(config)
    names = ("train", "validation", "test") if evaluate_test else ("train", "validation")
    raw, problems = source.load(names)
    plan = plan_lib.resolve(config, inputs.spec_of(raw["train"]))
    changes = resume.check_resume(workdir, config, allow_change=allow_config_change)
    normalizer = source.fit(raw["train"])
    splits = {name: normalizer(split, name) for name, split in raw.items()}
    program = program_lib.build(plan, len(splits["train"]), cache_dir=program_cache)
    with checkpoints.CheckpointStore(workdir, keep=plan.schedule.keep_checkpoints) as store:
      run = run_lib.start(program, store)
      if main and run.step:
        log.info("resuming from step %d of %d", run.step, plan.schedule.steps)
      with runlog.RunLog(workdir, run.step, enabled=main) as history:
        if main:
          _commit(workdir, config, changes, normalizer, plan, problems, history, run.step)
        run, stopped = _train(run, program, splits, store, history, on_evaluation, main)
      train_seconds = run.train_seconds
      if stopped:
        if main:
          log.warning(
            "interrupted at step %d; state saved, rerun the same command to resume", run.step
          )
        raise KeyboardInterrupt
      if run.tracker.all_diverged:
        raise TrainingDiverged(
          f"training stopped at step {run.step}: every member had "
          f"{plan.schedule.max_nonfinite} consecutive steps with non-finite losses or gradients; "
          f"the last good checkpoint (step {store.latest.latest_step()}) is kept in {workdir}/"
          f"{layout.CHECKPOINTS}/latest. Lower config.optim.lr or set config.optim.grad_clip, "
          "then rerun in a new workdir."
        )
    result = run_lib.final(run, program, splits, train_seconds)
    if main:
      layout.write_metrics(workdir, result)
    return result


def _commit(workdir, config, changes, normalizer, plan, problems, history, step: int) -> None:
  """Once the state is built or restored: the config change (if any) goes into the history,
  THEN config.json and the data files are written, so an interruption in between leaves the
  old truth in place, and a change is never in config.json without its record."""
  if changes:
    history.config_change(step, changes)
  layout.write_config(workdir, config)
  normalizer.save(layout.path(workdir, layout.TRANSFORM))
  layout.write_spec(workdir, plan.spec)
  layout.write_problems(workdir, problems)
  where = layout.path(workdir, layout.PROBLEMS)
  for p in problems:
    if p.action == "warned":
      log.warning("%s: %s (noted in %s)", plan.data.name, p.reason, where)
  skipped = sum(p.action == "skipped" for p in problems)
  if skipped:
    log.warning(
      "%s: %d pair(s) skipped for an unreadable raw item; each is listed in %s",
      plan.data.name,
      skipped,
      where,
    )


def _train(run, program, splits, store, history, on_evaluation, main: bool):
  """Chunks of steps until the step cap, the last member's stop or a signal (SIGINT, SIGTERM);
  returns the run and whether a signal stopped it (the state is then saved)."""
  plan = program.plan
  schedule = plan.schedule
  data = program.loop.data(splits["train"])
  bar = tqdm(
    total=schedule.steps,
    initial=run.step,
    desc=f"{plan.method.name}/{plan.data.name}",
    unit="step",
    dynamic_ncols=True,
    disable=None if main else True,
  )
  with bar, loop.StopSignal() as stop:
    while (
      not (stopped := stop.requested()) and run.step < schedule.steps and run.tracker.active.any()
    ):
      before = run.step
      run, records = run_lib.advance(
        run, program, data, run_lib.next_stop(before, schedule) - before
      )
      bar.update(run.step - before)
      if run.tracker.all_diverged:
        # Nothing after the last good save is kept: a rerun starts from that checkpoint.
        history.write(records, plan.size)
        break
      if run.step % schedule.eval_every == 0 or run.step == schedule.steps:
        run, records, best = run_lib.evaluate(
          run, program, splits["validation"], store, on_evaluation, records
        )
        if best is not None:
          loss = np.mean([r["loss_emb"] for r in records])
          bar.set_postfix(loss=f"{loss:.3f}", **{f"val_{plan.evaluation.select_metric}": best})
      run = run_lib.with_active(run, program)
      # History first: a crash between the two leaves records past the last checkpoint,
      # which the resumed run drops (`runlog`) and writes again as it retrains those steps.
      history.write(records, plan.size)
      if _saves_at(run, schedule):
        run_lib.save(run, store)
    stopped = stopped or stop.requested()
    if stopped:
      run_lib.save(run, store)
  return run, stopped


def _saves_at(run, schedule) -> bool:
  return (
    run.step % schedule.checkpoint_every == 0
    or run.step == schedule.steps
    or not run.tracker.active.any()
  )
