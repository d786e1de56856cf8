"""`train_and_evaluate(config, workdir)`: the training run behind train.py.

One run trains a population of `population.size` members (one, by default) in one program
(`mscross.population`, `mscross.parallel`). Steps run on the device in chunks between
evaluation points. Every `eval_every` steps the VALIDATION split is scored for every member; a
member's best state so far is kept (`checkpoints/best` holds every member's best generator),
and with `train.patience` a member stops once its validation score has not improved for that
many evaluations (`mscross.selection`). Every `checkpoint_every` steps (and on SIGINT/SIGTERM)
the whole state is saved to `checkpoints/latest`, from which a rerun of the same command
resumes. At the end each member's best-on-validation state is scored on validation and test and
written to `WORKDIR/metrics.json`: every member, and the mean and std over them.

Data flow: the dataset builder's raw splits -> the input transform fitted on train (saved as
input_transform.npz) -> the training split on the device, the validation split embedded at
every evaluation -> metrics.

Only process 0 (under `train.py --multihost`) writes config.json, history.jsonl, metrics.json,
logs and the progress bar, and holds the workdir's lock (`mscross.workdir`); every process
trains, evaluates and takes part in the collective checkpoint saves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mscross import (
  checkpoints,
  evaluate,
  input_pipeline,
  models,
  parallel,
  population,
  selection,
  train_step,
)
from mscross import config as config_lib
from mscross import workdir as workdir_lib
from mscross.errors import MscrossError

log = logging.getLogger(__name__)
SPEC_FILE = "dataset.json"


class TrainingDiverged(MscrossError):
  """Every member had too many consecutive steps with a non-finite loss or gradient."""


class _StopFlag:
  """Turns SIGINT/SIGTERM into a flag checked between chunks, so the state is saved first."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    if self.signum is not None:  # a second signal: stop now
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _next_boundary(step: int, total: int, *everies: int) -> int:
  return min([total] + [(step // e + 1) * e for e in everies])


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
    config: the config; validated here.
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
    self.config, self.workdir = config, workdir
    self.evaluate_test, self.on_evaluation = evaluate_test, on_evaluation
    self.is_main = jax.process_index() == 0
    self.startup_seconds = None
    names = ("train", "validation", "test") if evaluate_test else ("train", "validation")
    raw = input_pipeline.load_raw(config, names)
    self.spec = input_pipeline.data_spec(raw["train"])
    config_lib.validate(config, self.spec.modalities, labelled=self.spec.num_classes > 0)
    self.config_changes = workdir_lib.check_resume(
      workdir, config, allow_change=allow_config_change
    )
    self.normalizer = input_pipeline.fit_normalizer(config, raw["train"])
    self.splits = {name: self.normalizer(split, name) for name, split in raw.items()}

  def _commit(self, step: int) -> None:
    """Once the state is built or restored: the config change (if any) goes into the history,
    THEN config.json and the data files are written, so an interruption in between leaves the
    old truth in place, and a change is never in config.json without its record."""
    if not self.is_main:
      return
    if self.config_changes:
      change = {k: [a, b] for k, a, b in self.config_changes}
      with self._history(step) as history:
        history.write(json.dumps({"step": step, "config_change": change}) + "\n")
    config_lib.save_config(self.config, self.workdir)
    self.normalizer.save(os.path.join(self.workdir, input_pipeline.TRANSFORM_FILE))
    with open(os.path.join(self.workdir, SPEC_FILE), "w") as f:
      json.dump(self.spec.to_json(), f, indent=1)

  def run(self) -> dict:
    config, t = self.config, self.config.train
    members = population.member_configs(config)
    keys = population.traced_keys(members)
    self.members_info = population.describe(members, keys)
    hparams = population.stacked_hparams(members, keys)
    # The run's length is traced too (the DANN schedule depends on it): a longer run, or a
    # resumed one with a new cap, reuses the compiled program.
    hparams["train.steps"] = jnp.full(len(members), float(t.steps), jnp.float32)
    net, disc = models.build_models(config, self.spec)
    txs = train_step.make_optimizers(config)
    mesh = parallel.make_mesh(parallel.resolve_num_devices(config))
    step_fn = train_step.make_step(config, net, disc, txs, int(t.steps), axis_name=parallel.AXIS)
    train = self.splits["train"]
    loop = parallel.TrainLoop(
      step_fn,
      mesh,
      len(train),
      int(t.batch_size),
      feed=config.parallel.feed,
      host_steps=int(config.parallel.host_steps),
      program_key=_program_key(config, self.spec, keys),
    )
    state = train_step.init_population(
      net, disc, self.spec, txs, population.member_seeds(members), hparams
    )
    # A copy: the state's buffers are donated to the training loop.
    best_gen = jax.tree.map(jnp.copy, state.params["gen"])
    self.embed = evaluate.make_population_embed_fn(config, net)
    self.mu = hparams.get("model.mu", jnp.full(len(members), config.model.mu, jnp.float32))

    store = checkpoints.CheckpointStore(self.workdir, keep=int(t.keep_checkpoints))
    tracker = selection.Tracker(len(members), int(t.patience))
    meta = {"train_seconds": 0.0}
    restored = store.restore_latest({"state": state, "best_gen": best_gen})
    if restored is not None:
      _, tree, meta = restored
      state, best_gen = tree["state"], tree["best_gen"]
      tracker = selection.Tracker.from_json(meta["tracker"], int(t.patience))
      # The config is the truth on resume (a change was allowed): its hyperparameters apply.
      state = state.replace(hparams=hparams)
      if self.is_main:
        log.info("resuming from step %d of %d", int(np.asarray(state.step)[0]), t.steps)
    state = state.replace(active=jnp.asarray(tracker.active))
    self._commit(int(np.asarray(state.step)[0]))
    state, best_gen = parallel.replicate(state, mesh), parallel.replicate(best_gen, mesh)
    data = loop.data(train)
    self.store, self.tracker = store, tracker
    try:
      state, best_gen, stopping = self._train(loop, state, best_gen, data, meta)
    finally:
      store.close()
    if stopping:
      raise KeyboardInterrupt
    return self._final(best_gen)

  def _history(self, step: int):
    """history.jsonl opened for appending, without the records of steps after `step` (the
    resumed step): those belong to training that no checkpoint kept, and is done again."""
    if not self.is_main:
      return open(os.devnull, "a")
    path = os.path.join(self.workdir, "history.jsonl")
    if os.path.exists(path):
      with open(path) as f:
        lines = f.readlines()
      kept = [line for line in lines if _record_step(line) <= step]
      if len(kept) != len(lines):
        with open(path + ".tmp", "w") as f:
          f.writelines(kept)
        os.replace(path + ".tmp", path)
    return open(path, "a")

  def _train(self, loop, state, best_gen, data, meta):
    config, t, tracker, store = self.config, self.config.train, self.tracker, self.store
    step = int(np.asarray(parallel.to_host(state.step))[0])
    started, seconds_before = time.perf_counter(), float(meta["train_seconds"])

    def save_latest(state):
      meta["train_seconds"] = seconds_before + time.perf_counter() - started
      meta["tracker"] = tracker.to_json()
      store.save_latest(
        int(parallel.to_host(state.step)[0]), {"state": state, "best_gen": best_gen}, meta
      )

    where = jax.jit(
      lambda mask, new, old: jax.tree.map(
        lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old
      )
    )
    bar = tqdm(
      total=int(t.steps),
      initial=step,
      desc=f"{config.method}/{config.data.name}",
      unit="step",
      dynamic_ncols=True,
      disable=None if self.is_main else True,
    )
    board = _Board(self.workdir) if self.is_main else None
    stopping = False
    with _StopFlag() as stop, self._history(step) as history:
      # A collective under several processes: all of them stop at the same step.
      should_stop = lambda: parallel.any_process(stop.signum is not None)
      while step < t.steps and tracker.active.any() and not (stopping := should_stop()):
        target = _next_boundary(step, int(t.steps), int(t.eval_every), int(t.checkpoint_every))
        state, m = self._chunk(loop, state, data, target - step)
        # Fetching the metrics also waits for the chunk (see mscross.parallel on why).
        m = {k: np.asarray(v, np.float64) for k, v in parallel.to_host(m).items()}
        bar.update(target - step)
        counters = parallel.to_host((state.step, state.skipped, state.nonfinite_run))
        step = int(counters[0][0])
        skipped, nonfinite = np.asarray(counters[1]), np.asarray(counters[2])
        was_active = tracker.active
        tracker.stop(nonfinite >= t.max_nonfinite, selection.DIVERGED)
        records = [
          {
            "step": step,
            "member": i,
            **{k: float(v[i]) for k, v in m.items()},
            "skipped": int(skipped[i]),
          }
          for i in range(tracker.size)
        ]
        for i in np.flatnonzero(was_active & ~tracker.active):
          records[i]["diverged"] = True
        if all(s == selection.DIVERGED for s in tracker.status):
          # Nothing after the last good save is kept: a rerun starts from that checkpoint.
          _write(history, board, records, tracker.size)
          break
        if step % t.eval_every == 0 or step == t.steps:
          val = self._validate(state, tracker.active)
          improved = tracker.update(
            step, [v[config.eval.select_metric] if v else np.nan for v in val]
          )
          if improved.any():
            best_gen = where(jnp.asarray(improved), state.params["gen"], best_gen)
            # Every process scores identical params identically: all take this collective save.
            meta["tracker"] = tracker.to_json()
            store.save_best(step, {"gen": best_gen}, meta)
          if self.on_evaluation is not None:
            tracker.stop(self.on_evaluation(step, val), selection.PRUNED)
          for i, v in enumerate(val):
            if v is not None:
              records[i].update({f"val_{k}": x for k, x in v.items()})
          select = config.eval.select_metric
          live = [v[select] for v in val if v is not None]
          if live:
            bar.set_postfix(
              loss=f"{np.mean(m['loss_emb']):.3f}", **{f"val_{select}": f"{max(live):.4f}"}
            )
        state = state.replace(active=parallel.replicate(jnp.asarray(tracker.active), loop.mesh))
        # History first: a crash between the two leaves records past the last checkpoint,
        # which the resumed run drops (`_history`) and writes again as it retrains those steps.
        _write(history, board, records, tracker.size)
        if step % t.checkpoint_every == 0 or step == t.steps or not tracker.active.any():
          save_latest(state)
      stopping = stopping or should_stop()
      if stopping:
        save_latest(state)
    bar.close()
    if board is not None:
      board.close()
    if stopping:
      if self.is_main:
        log.warning("interrupted at step %d; state saved, rerun the same command to resume", step)
      return state, best_gen, True
    self.train_seconds = seconds_before + time.perf_counter() - started
    self.skipped = np.asarray(parallel.to_host(state.skipped))
    self.last_step = step
    if all(s == selection.DIVERGED for s in tracker.status):
      kept = (
        f"the last good checkpoint (step {store.latest.latest_step()}) is kept in "
        f"{self.workdir}/checkpoints/latest"
      )
      raise TrainingDiverged(
        f"training stopped at step {step}: every member had {t.max_nonfinite} consecutive steps "
        f"with non-finite losses or gradients; {kept}. Lower config.optim.lr or set "
        "config.optim.grad_clip, then rerun in a new workdir."
      )
    if step >= t.steps:
      tracker.finish()
    return state, best_gen, False

  def _chunk(self, loop, state, data, num_steps: int):
    if self.startup_seconds is not None:
      return loop(state, data, num_steps)
    # This process's first step runs alone (chunks of any length train alike): the time to a
    # first trained step, start-up and compilation included, is worth reporting.
    state, first = loop(state, data, 1)
    jax.block_until_ready(state.step)
    self.startup_seconds = _process_age()
    if num_steps == 1:
      return state, first
    state, rest = loop(state, data, num_steps - 1)
    mean = lambda a, b: (np.asarray(a) + (num_steps - 1) * np.asarray(b)) / num_steps
    return state, jax.tree.map(mean, parallel.to_host(first), parallel.to_host(rest))

  def _validate(self, state, active) -> list[dict | None]:
    gen = parallel.local_copy(state.params["gen"])
    val = self.splits["validation"]
    emb = evaluate.embed_split(self.embed, gen, val, self.mu)
    return [
      evaluate.metrics_of(self.config, emb[i], val) if active[i] else None
      for i in range(len(active))
    ]

  def _final(self, best_gen) -> dict:
    config, tracker = self.config, self.tracker
    gen = parallel.local_copy(best_gen)
    names = ("validation", "test") if self.evaluate_test else ("validation",)
    scored = {}
    for name in names:
      emb = evaluate.embed_split(self.embed, gen, self.splits[name], self.mu)
      scored[name] = [evaluate.metrics_of(config, e, self.splits[name]) for e in emb]
    members = []
    for i in range(tracker.size):
      entry = {
        "member": i,
        **self.members_info[i],
        "best_step": int(tracker.best_step[i]),
        "stopped": tracker.status[i],
        "skipped_steps": int(self.skipped[i]),
        "val": scored["validation"][i],
      }
      if self.evaluate_test:
        entry["test"] = scored["test"][i]
      members.append(entry)
    # A member that diverged before its first evaluation has no selected state.
    kept = [e for e in members if e["best_step"] >= 0]
    result = {
      "method": config.method,
      "dataset": config.data.name,
      "modalities": list(self.spec.modalities),
      "labelled": self.spec.num_classes > 0,
      "steps": int(self.last_step),
      "max_steps": int(config.train.steps),
      "population": tracker.size,
      "select_metric": config.eval.select_metric,
      "train_seconds": round(self.train_seconds, 3),
      # Process start to the first trained step of this process (None: nothing left to train).
      "startup_seconds": None if self.startup_seconds is None else round(self.startup_seconds, 3),
      "members": members,
    }
    for name, key in (("val", "val"), ("test", "test")):
      if kept and key in kept[0]:
        result[name], result[f"{name}_std"] = evaluate.mean_and_std([e[key] for e in kept])
    if self.is_main:
      path = os.path.join(self.workdir, "metrics.json")
      with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
      os.replace(path + ".tmp", path)
    return result


# Config keys that never shape the training loop's program: inputs of it (seeds, traced
# hyperparameters, the run's length) or settings of what runs around it.
_NOT_IN_PROGRAM = (
  "seed",
  "population.hparams",
  "population.vary_seed",
  "train.steps",
  "train.eval_every",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "train.patience",
  "train.max_nonfinite",
  "data.data_dir",
)


def _program_key(config, spec, traced: list[str]) -> str:
  """What shapes the training loop beyond its arguments' shapes (see mscross.program_cache)."""
  skip = {*traced, *_NOT_IN_PROGRAM}
  flat = config_lib.flatten(config)
  kept = {k: v for k, v in flat.items() if k not in skip and not k.startswith("eval.")}
  return json.dumps({"config": kept, "spec": spec.to_json()}, sort_keys=True, default=str)


def _process_age() -> float:
  """Seconds since this process started (Linux /proc; elsewhere since mscross was imported)."""
  try:
    with open("/proc/self/stat") as f:
      start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError):
    return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def _record_step(line: str) -> float:
  try:
    return json.loads(line).get("step", 0)
  except json.JSONDecodeError:
    return float("inf")  # a line cut off by a crash mid-write


class _Board:
  """TensorBoard event files, opened at the first write: tensorboardX takes a second or more to
  import (it loads PyTorch when that is installed), which is no reason to delay the first step."""

  def __init__(self, workdir: str):
    self.path, self._writer = os.path.join(workdir, "tensorboard"), None

  def add_scalar(self, tag: str, value: float, step: int) -> None:
    if self._writer is None:
      from tensorboardX import SummaryWriter

      self._writer = SummaryWriter(self.path)
    self._writer.add_scalar(tag, value, step)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _write(history, board, records: list[dict], size: int) -> None:
  for r in records:
    history.write(json.dumps(r) + "\n")
    if board is not None:
      suffix = f"/member{r['member']}" if size > 1 else ""
      for key, value in r.items():
        if key not in ("step", "member") and isinstance(value, float) and np.isfinite(value):
          board.add_scalar(key.replace("val_", "val/", 1) + suffix, value, r["step"])
  history.flush()
  if board is not None:
    board.flush()
