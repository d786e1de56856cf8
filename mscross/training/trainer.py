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
bar, and holds the workdir's lock (`mscross.training.workdir`); every process trains, evaluates
and takes part in the collective checkpoint saves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mscross.errors import MscrossError
from mscross.training import checkpoints, evaluation, input_pipeline, loop, runlog, selection
from mscross.training import plan as plan_lib
from mscross.training import program as program_lib
from mscross.training import workdir as workdir_lib

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
) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns metrics.json.

  Args:
    config: the config; resolved into the run plan here.
    workdir: where everything goes; locked for the life of the run.
    allow_config_change: resume a workdir whose stored config differs from `config` in keys
      other than `workdir.SAFE_TO_CHANGE` (the change is recorded in history.jsonl).
    evaluate_test: False never reads nor scores the test split (hyperparameter search).
    on_evaluation: `fn(step, val_metrics: list[dict | None]) -> prune mask [P]`, called after
      every evaluation with each member's validation metrics (None for stopped members); the
      members it returns True for stop as "pruned".
  """
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  lock = workdir_lib.WorkdirLock(workdir) if is_main else contextlib.nullcontext()
  with lock:
    return _Run(config, workdir, allow_config_change, evaluate_test, on_evaluation).run()


class _Run:
  def __init__(self, config, workdir, allow_config_change, evaluate_test, on_evaluation):
    self.workdir, self.evaluate_test, self.on_evaluation = workdir, evaluate_test, on_evaluation
    self.is_main = jax.process_index() == 0
    self.startup_seconds = None
    names = ("train", "validation", "test") if evaluate_test else ("train", "validation")
    raw = input_pipeline.load_raw(config, names)
    self.problems = input_pipeline.load_problems(config)
    self.plan = plan_lib.resolve(config, input_pipeline.data_spec(raw["train"]))
    self.config, self.spec = config, self.plan.spec
    self.config_changes = workdir_lib.check_resume(
      workdir, config, allow_change=allow_config_change
    )
    self.normalizer = input_pipeline.fit_normalizer(config, raw["train"])
    self.splits = {name: self.normalizer(split, name) for name, split in raw.items()}

  def _commit(self, step: int, history: runlog.RunLog) -> None:
    """Once the state is built or restored: the config change (if any) goes into the history,
    THEN config.json and the data files are written, so an interruption in between leaves the
    old truth in place, and a change is never in config.json without its record."""
    if not self.is_main:
      return
    if self.config_changes:
      history.config_change(step, self.config_changes)
    workdir_lib.write_config(self.workdir, self.config)
    self.normalizer.save(workdir_lib.path(self.workdir, workdir_lib.TRANSFORM))
    workdir_lib.write_spec(self.workdir, self.spec)
    workdir_lib.write_problems(self.workdir, self.problems)
    where = workdir_lib.path(self.workdir, workdir_lib.PROBLEMS)
    for p in self.problems:
      if p.action == "warned":
        log.warning("%s: %s (noted in %s)", self.config.data.name, p.reason, where)
    skipped = sum(p.action == "skipped" for p in self.problems)
    if skipped:
      log.warning(
        "%s: %d pair(s) skipped for an unreadable raw item; each is listed in %s",
        self.config.data.name,
        skipped,
        where,
      )

  def run(self) -> dict:
    t = self.config.train
    train = self.splits["train"]
    self.program = program = program_lib.build(self.plan, len(train))
    state = program.init_state()
    # A copy: the state's buffers are donated to the training loop.
    best_gen = jax.tree.map(jnp.copy, state.params["gen"])
    store = checkpoints.CheckpointStore(self.workdir, keep=int(t.keep_checkpoints))
    tracker = selection.Tracker(self.plan.size, int(t.patience))
    meta = {"train_seconds": 0.0}
    restored = store.restore_latest({"state": state, "best_gen": best_gen})
    if restored is not None:
      _, tree, meta = restored
      state, best_gen = tree["state"], tree["best_gen"]
      tracker = selection.Tracker.from_json(meta["tracker"], int(t.patience))
      # The config is the truth on resume (a change was allowed): its hyperparameters apply.
      state = state.replace(hparams=self.plan.hparams)
      if self.is_main:
        log.info("resuming from step %d of %d", int(np.asarray(state.step)[0]), t.steps)
    state = state.replace(active=jnp.asarray(tracker.active))
    step = int(np.asarray(state.step)[0])
    mesh = program.mesh
    state, best_gen = loop.replicate(state, mesh), loop.replicate(best_gen, mesh)
    self.store, self.tracker, self.meta = store, tracker, meta
    try:
      with runlog.RunLog(self.workdir, step, enabled=self.is_main) as history:
        self._commit(step, history)
        data = program.loop.data(train)
        state, best_gen, stopping = self._train(state, best_gen, data, history, step)
    finally:
      store.close()
    if stopping:
      raise KeyboardInterrupt
    return self._final(best_gen)

  def _save_latest(self, state, best_gen, seconds) -> None:
    self.meta["train_seconds"], self.meta["tracker"] = seconds(), self.tracker.to_json()
    step = int(loop.to_host(state.step)[0])
    self.store.save_latest(step, {"state": state, "best_gen": best_gen}, self.meta)

  def _train(self, state, best_gen, data, history: runlog.RunLog, step: int):
    t, tracker = self.config.train, self.tracker
    started, before = time.perf_counter(), float(self.meta["train_seconds"])
    seconds = lambda: before + time.perf_counter() - started
    bar = tqdm(
      total=int(t.steps),
      initial=step,
      desc=f"{self.config.method}/{self.config.data.name}",
      unit="step",
      dynamic_ncols=True,
      disable=None if self.is_main else True,
    )
    stopping = False
    with loop.StopSignal() as stop:
      while step < t.steps and tracker.active.any() and not (stopping := stop.requested()):
        target = min(
          [int(t.steps)] + [(step // e + 1) * e for e in (t.eval_every, t.checkpoint_every)]
        )
        state, m = self._chunk(state, data, target - step)
        # Fetching the metrics also waits for the chunk (see mscross.training.loop on why).
        m = {k: np.asarray(v, np.float64) for k, v in loop.to_host(m).items()}
        bar.update(target - step)
        step, records = self._records(state, m)
        if all(s == selection.DIVERGED for s in tracker.status):
          # Nothing after the last good save is kept: a rerun starts from that checkpoint.
          history.write(records, tracker.size)
          break
        if step % t.eval_every == 0 or step == t.steps:
          best_gen = self._evaluate(step, state, best_gen, records, bar, m)
        state = state.replace(active=loop.replicate(jnp.asarray(tracker.active), self.program.mesh))
        # History first: a crash between the two leaves records past the last checkpoint,
        # which the resumed run drops (`runlog`) and writes again as it retrains those steps.
        history.write(records, tracker.size)
        if step % t.checkpoint_every == 0 or step == t.steps or not tracker.active.any():
          self._save_latest(state, best_gen, seconds)
      stopping = stopping or stop.requested()
      if stopping:
        self._save_latest(state, best_gen, seconds)
    bar.close()
    if stopping:
      if self.is_main:
        log.warning("interrupted at step %d; state saved, rerun the same command to resume", step)
      return state, best_gen, True
    self.train_seconds, self.last_step = seconds(), step
    self.skipped = np.asarray(loop.to_host(state.skipped))
    if all(s == selection.DIVERGED for s in tracker.status):
      kept = (
        f"the last good checkpoint (step {self.store.latest.latest_step()}) is kept in "
        f"{self.workdir}/{workdir_lib.CHECKPOINTS}/latest"
      )
      raise TrainingDiverged(
        f"training stopped at step {step}: every member had {t.max_nonfinite} consecutive steps "
        f"with non-finite losses or gradients; {kept}. Lower config.optim.lr or set "
        "config.optim.grad_clip, then rerun in a new workdir."
      )
    if step >= t.steps:
      tracker.finish()
    return state, best_gen, False

  def _records(self, state, m: dict) -> tuple[int, list[dict]]:
    """The step reached, and one history record per member; stops diverged members."""
    tracker = self.tracker
    counters = loop.to_host((state.step, state.skipped, state.nonfinite_run))
    step = int(counters[0][0])
    skipped, nonfinite = np.asarray(counters[1]), np.asarray(counters[2])
    was_active = tracker.active
    tracker.stop(nonfinite >= self.config.train.max_nonfinite, selection.DIVERGED)
    records = [
      {"step": step, "member": i, **{k: float(v[i]) for k, v in m.items()}, "skipped": int(s)}
      for i, s in enumerate(skipped)
    ]
    for i in np.flatnonzero(was_active & ~tracker.active):
      records[i]["diverged"] = True
    return step, records

  def _evaluate(self, step, state, best_gen, records, bar, m):
    """Scores validation, keeps each improved member's generator (and saves it), prunes."""
    tracker, select = self.tracker, self.config.eval.select_metric
    val = self._scores(loop.local_copy(state.params["gen"]), "validation", tracker.active)
    improved = tracker.update(step, [v[select] if v else np.nan for v in val])
    if improved.any():
      best_gen = loop.where_members(jnp.asarray(improved), state.params["gen"], best_gen)
      # Every process scores identical params identically: all take this collective save.
      self.meta["tracker"] = tracker.to_json()
      self.store.save_best(step, {"gen": best_gen}, self.meta)
    if self.on_evaluation is not None:
      tracker.stop(self.on_evaluation(step, val), selection.PRUNED)
    for i, v in enumerate(val):
      if v is not None:
        records[i].update({f"val_{k}": x for k, x in v.items()})
    if self.plan.adversarial:
      # The game's state beside `lambda` and `loss_adv`: how well the discriminator still tells
      # the modalities apart on validation embeddings (chance is 1/K).
      params = loop.local_copy(state.params)
      acc = evaluation.disc_accuracy(
        self.program.disc_accuracy, params["gen"], params["disc"], self.splits["validation"]
      )
      for i, v in enumerate(val):
        if v is not None:
          records[i]["val_disc_acc"] = float(acc[i])
    live = [v[select] for v in val if v is not None]
    if live:
      bar.set_postfix(loss=f"{np.mean(m['loss_emb']):.3f}", **{f"val_{select}": f"{max(live):.4f}"})
    return best_gen

  def _chunk(self, state, data, num_steps: int):
    train_loop = self.program.loop
    if self.startup_seconds is not None:
      return train_loop(state, data, num_steps)
    # This process's first step runs alone (chunks of any length train alike): the time to a
    # first trained step, start-up and compilation included, is worth reporting.
    state, first = train_loop(state, data, 1)
    jax.block_until_ready(state.step)
    self.startup_seconds = runlog.process_age()
    if num_steps == 1:
      return state, first
    state, rest = train_loop(state, data, num_steps - 1)
    mean = lambda a, b: (np.asarray(a) + (num_steps - 1) * np.asarray(b)) / num_steps
    return state, jax.tree.map(mean, loop.to_host(first), loop.to_host(rest))

  def _scores(self, gen, name: str, members) -> list[dict | None]:
    split = self.splits[name]
    emb = evaluation.embed_split(self.program.embed, gen, split, self.program.mu)
    return [
      evaluation.metrics_of(self.config, emb[i], split) if keep else None
      for i, keep in enumerate(members)
    ]

  def _final(self, best_gen) -> dict:
    gen = loop.local_copy(best_gen)
    names = ("validation", "test") if self.evaluate_test else ("validation",)
    scored = {name: self._scores(gen, name, [True] * self.plan.size) for name in names}
    result = runlog.summary(
      self.plan,
      self.tracker,
      scored,
      steps=self.last_step,
      skipped=self.skipped,
      train_seconds=self.train_seconds,
      startup_seconds=self.startup_seconds,
    )
    if self.is_main:
      runlog.write_metrics(self.workdir, result)
    return result
