"""One run's state, and what the trainer's spine does with it: plain functions, each from one
immutable `RunState` to the next.

* `start`: the population's initial state, or the latest readable checkpoint's;
* `advance`: a chunk of training steps on the device, then members past `train.max_nonfinite`
  consecutive non-finite steps stopped (`stop_diverged`) and the chunk's history records;
* `evaluate`: validation scores of the active members; each improved member's generator is kept
  (and saved as `checkpoints/best`), and the search's prune mask stops members;
* `save`: the whole state to `checkpoints/latest`;
* `scores`, `final`: the selected states scored at the end, as metrics.json holds them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mscross.runs import checkpoints, embedding
from mscross.training import evaluation, loop, runlog, selection
from mscross.training.program import Program
from mscross.training.step import TrainState


@dataclasses.dataclass(frozen=True)
class RunState:
  """Everything a run carries from one chunk to the next."""

  state: TrainState  # the population's train state, replicated on the mesh
  best_gen: Any  # each member's best generator so far
  tracker: selection.Tracker
  step: int
  seconds_before: float  # training seconds of the processes before this one (a resumed run)
  started: float  # when this process started training (perf_counter)
  startup_seconds: float | None  # process start to its first trained step

  @property
  def train_seconds(self) -> float:
    return self.seconds_before + time.perf_counter() - self.started

  def meta(self) -> dict:
    """What a checkpoint records beside the arrays."""
    return {"train_seconds": self.train_seconds, "tracker": self.tracker.to_json()}


def start(program: Program, store: checkpoints.CheckpointStore) -> RunState:
  """The run's state: fresh, or resumed from the newest readable `latest` checkpoint."""
  plan = program.plan
  state = program.init_state()
  # A copy: the state's buffers are donated to the training loop.
  best_gen = jax.tree.map(jnp.copy, state.params["gen"])
  tracker = selection.Tracker.start(plan.size, plan.schedule.patience)
  before = 0.0
  restored = store.restore_latest({"state": state, "best_gen": best_gen})
  if restored is not None:
    _, tree, meta = restored
    state, best_gen = tree["state"], tree["best_gen"]
    tracker = selection.Tracker.from_json(meta["tracker"], plan.schedule.patience)
    before = float(meta["train_seconds"])
    # The config is the truth on resume (a change was allowed): its hyperparameters apply.
    state = state.replace(hparams=plan.hparams.initial())
  state = state.replace(active=jnp.asarray(tracker.active))
  step = int(np.asarray(state.step)[0])
  mesh = program.mesh
  replicated = loop.replicate(state, mesh), loop.replicate(best_gen, mesh)
  return RunState(*replicated, tracker, step, before, time.perf_counter(), None)


def next_stop(step: int, schedule) -> int:
  """The step the next chunk ends at: the next evaluation, save or the cap."""
  every = (schedule.eval_every, schedule.checkpoint_every)
  return min([schedule.steps] + [(step // e + 1) * e for e in every])


def advance(run: RunState, program: Program, data, num_steps: int) -> tuple[RunState, list[dict]]:
  """`num_steps` steps of every active member; the run after them (diverged members stopped)
  and one history record per member (the chunk's mean metrics)."""
  train_loop = program.loop
  state, startup = run.state, run.startup_seconds
  if startup is None:
    # This process's first step runs alone (chunks of any length train alike): the time to a
    # first trained step, start-up and compilation included, is worth reporting.
    state, first = train_loop(state, data, 1)
    jax.block_until_ready(state.step)
    startup = runlog.process_age()
    metrics = first
    if num_steps > 1:
      state, rest = train_loop(state, data, num_steps - 1)
      mean = lambda a, b: (np.asarray(a) + (num_steps - 1) * np.asarray(b)) / num_steps
      metrics = jax.tree.map(mean, loop.to_host(first), loop.to_host(rest))
  else:
    state, metrics = train_loop(state, data, num_steps)
  # Fetching the metrics also waits for the chunk (see mscross.training.loop on why).
  m = {k: np.asarray(v, np.float64) for k, v in loop.to_host(metrics).items()}
  step, skipped, nonfinite = loop.to_host((state.step, state.skipped, state.nonfinite_run))
  was_active = run.tracker.active
  limit = program.plan.schedule.max_nonfinite
  tracker = run.tracker.stop(np.asarray(nonfinite) >= limit, selection.DIVERGED)
  records = [
    {"step": int(step[0]), "member": i, **{k: float(v[i]) for k, v in m.items()}, "skipped": int(s)}
    for i, s in enumerate(np.asarray(skipped))
  ]
  for i in np.flatnonzero(was_active & ~tracker.active):
    records[i]["diverged"] = True
  run = dataclasses.replace(
    run, state=state, tracker=tracker, step=int(step[0]), startup_seconds=startup
  )
  return run, records


def selected(run: RunState, program: Program):
  """The generator weights a run evaluates, selects and keeps: the weights' average when the plan
  keeps one (`train.ema_decay`), else the weights themselves."""
  return run.state.ema if program.plan.ema else run.state.params["gen"]


def scores(program: Program, gen, split, members) -> list[dict | None]:
  """Each member's metrics on a (transformed) split with generators `gen` [P, ...] (host-local),
  None for the members that `members` [P] leaves out."""
  emb = embedding.embed_split(program.embed, gen, split, *program.mix)
  return [
    program.plan.evaluation.metrics(emb[i], split) if keep else None
    for i, keep in enumerate(members)
  ]


def evaluate(
  run: RunState, program: Program, validation, store, on_evaluation, records: list[dict]
) -> tuple[RunState, list[dict], str | None]:
  """Scores validation for the active members and keeps each improved member's generator (saved
  at once); `on_evaluation(step, val) -> prune mask` stops members. Returns the run, `records`
  with the validation metrics (and the discriminator's accuracy) added, and the best score, for
  the progress bar."""
  plan = program.plan
  select = plan.evaluation.select_metric
  val = scores(program, loop.local_copy(selected(run, program)), validation, run.tracker.active)
  tracker, improved = run.tracker.update(run.step, [v[select] if v else np.nan for v in val])
  run = dataclasses.replace(run, tracker=tracker)
  if improved.any():
    best_gen = loop.where_members(jnp.asarray(improved), selected(run, program), run.best_gen)
    run = dataclasses.replace(run, best_gen=best_gen)
    # Every process scores identical params identically: all take this collective save.
    store.save_best(run.step, {"gen": best_gen}, run.meta())
  if on_evaluation is not None:
    pruned = on_evaluation(run.step, val)
    run = dataclasses.replace(run, tracker=run.tracker.stop(pruned, selection.PRUNED))
  records = [dict(r) for r in records]
  for i, v in enumerate(val):
    if v is not None:
      records[i].update({f"val_{k}": x for k, x in v.items()})
  if plan.adversarial:
    # The game's state beside `lambda` and `loss_adv`: how well the discriminator still tells
    # the modalities apart on validation embeddings (chance is 1/K).
    params = loop.local_copy(run.state.params)
    acc = evaluation.disc_accuracy(program.disc_accuracy, params["gen"], params["disc"], validation)
    for i, v in enumerate(val):
      if v is not None:
        records[i]["val_disc_acc"] = float(acc[i])
  live = [v[select] for v in val if v is not None]
  return run, records, f"{max(live):.4f}" if live else None


def with_active(run: RunState, program: Program) -> RunState:
  """The run's train state told which members still train (stopped ones take no step)."""
  active = loop.replicate(jnp.asarray(run.tracker.active), program.mesh)
  return dataclasses.replace(run, state=run.state.replace(active=active))


def save(run: RunState, store: checkpoints.CheckpointStore) -> None:
  store.save_latest(run.step, {"state": run.state, "best_gen": run.best_gen}, run.meta())


def final(run: RunState, program: Program, splits: dict, train_seconds: float) -> dict:
  """metrics.json: every member's selected state scored on every split in `splits` but train."""
  gen = loop.local_copy(run.best_gen)
  names = [name for name in ("validation", "test") if name in splits]
  scored = {name: scores(program, gen, splits[name], [True] * program.plan.size) for name in names}
  # At the step cap, members still training stopped by the cap.
  capped = run.step >= program.plan.schedule.steps
  return runlog.final_result(
    program.plan,
    run.tracker.finish() if capped else run.tracker,
    scored,
    steps=run.step,
    skipped=np.asarray(loop.to_host(run.state.skipped)),
    train_seconds=train_seconds,
    startup_seconds=run.startup_seconds,
  )
