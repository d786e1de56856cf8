"""`train_and_evaluate(config, workdir)`: the training loop behind train.py.

Steps run on the device in chunks between evaluation points. At every `eval_every` steps the
VALIDATION split is scored and the best state so far is kept in `checkpoints/best`; every
`checkpoint_every` steps (and on SIGINT/SIGTERM) the state is saved to `checkpoints/latest`, from
which a rerun of the same command resumes. At the end the best-on-validation state is scored on
validation and test and written to `WORKDIR/metrics.json`.

With more than one device (`config.parallel`, see `mscross.parallel`) the chunks are data
parallel over a mesh of every device used, of every process under `train.py --multihost`; the
state is replicated and checkpointed as ordinary arrays, so any device count can resume it. Every
process trains, evaluates (on its own replica of the params) and takes part in the collective
checkpoint saves; only process 0 writes config.json, history.jsonl, metrics.json, logs and the
progress bar.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import jax
import numpy as np
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from mscross import checkpoints, evaluate, input_pipeline, models, parallel, train_step
from mscross import config as config_lib
from mscross.errors import MscrossError

log = logging.getLogger(__name__)


class TrainingDiverged(MscrossError):
  """Too many consecutive steps had a non-finite loss or gradient."""


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


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns metrics.json."""
  config_lib.validate(config)
  num_devices = parallel.resolve_num_devices(config)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    config_lib.save_config(config, workdir)
  t = config.train

  splits = input_pipeline.load_splits(config)
  train, val, test = splits["train"], splits["validation"], splits["test"]
  n, num_classes = len(train.label), train.label.shape[1]
  net, disc = models.build_models(config, num_classes)
  txs = train_step.make_optimizers(config)
  state = train_step.init_state(config, net, disc, train.image.shape[1], train.text.shape[1], txs)
  data_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
  if num_devices == 1 and jax.process_count() == 1:
    step_fn = train_step.make_train_step(config, net, disc, txs, int(t.steps))
    chunk = train_step.make_train_chunk(step_fn, data_key, n, int(t.batch_size))
    arrays = input_pipeline.device_arrays(train)
  else:
    mesh = parallel.make_mesh(num_devices)
    step_fn = train_step.make_train_step(
      config, net, disc, txs, int(t.steps), axis_name=parallel.AXIS
    )
    chunk, arrays = parallel.make_parallel_chunk(
      step_fn,
      mesh,
      data_key,
      train,
      int(t.batch_size),
      feed=config.parallel.feed,
      host_steps=int(config.parallel.host_steps),
    )
    # Restoring into a replicated target restores replicated, whatever wrote the checkpoint.
    state = parallel.replicate(state, mesh)
    if is_main:
      log.info("data parallel over %d devices, %d processes", num_devices, jax.process_count())
  embed_fn = evaluate.make_embed_fn(config, net)
  select = config.eval.select_metric

  store = checkpoints.CheckpointStore(workdir, keep=int(t.keep_checkpoints))
  meta = {"best_score": -np.inf, "best_step": -1, "train_seconds": 0.0}
  restored = store.restore_latest(state)
  if restored is not None:
    _, state, meta = restored
    if is_main:
      log.info("resuming from step %d of %d", int(parallel.to_host(state.step)), t.steps)
  step = int(parallel.to_host(state.step))

  history_path = os.path.join(workdir, "history.jsonl") if is_main else os.devnull
  started = time.perf_counter()
  seconds_before = float(meta["train_seconds"])

  def save_latest(state):
    meta["train_seconds"] = seconds_before + time.perf_counter() - started
    store.save_latest(int(parallel.to_host(state.step)), state, meta)

  bar = tqdm(
    total=int(t.steps),
    initial=step,
    desc=f"{config.method}/{config.data.name}",
    unit="step",
    dynamic_ncols=True,
    disable=None if is_main else True,
  )
  # TensorBoard event files beside history.jsonl (`tensorboard --logdir WORKDIR`).
  board = SummaryWriter(os.path.join(workdir, "tensorboard")) if is_main else None
  stopping = False
  with _StopFlag() as stop, open(history_path, "a") as history:
    # A collective under several processes: all of them stop at the same step.
    should_stop = lambda: parallel.any_process(stop.signum is not None)
    while step < t.steps and not (stopping := should_stop()):
      target = _next_boundary(step, int(t.steps), int(t.eval_every), int(t.checkpoint_every))
      state, m = chunk(state, arrays, target - step)
      # Fetching the metrics also waits for the chunk (see mscross.parallel on why that matters).
      m = {k: float(v) for k, v in parallel.to_host(m).items()}
      bar.update(target - step)
      counters = parallel.to_host((state.step, state.skipped, state.nonfinite_run))
      step, skipped, nonfinite_run = (int(c) for c in counters)
      record = {"step": step, **m, "skipped": skipped}

      if nonfinite_run >= t.max_nonfinite:
        bar.close()
        history.write(json.dumps({**record, "diverged": True}) + "\n")
        # Nothing after the last good save is kept: the rerun starts from that checkpoint.
        last_good = store.restore_latest(state)
        store.close()
        if board is not None:
          board.close()
        where = (
          f"the last good checkpoint (step {last_good[0]}) is kept in {workdir}/checkpoints/latest"
          if last_good is not None
          else "no checkpoint had been saved yet"
        )
        raise TrainingDiverged(
          f"training stopped at step {step}: {nonfinite_run} consecutive steps had non-finite "
          f"losses or gradients ({skipped} skipped in all); {where}. "
          "Lower config.optim.lr or set config.optim.grad_clip, then rerun."
        )
      if step % t.eval_every == 0 or step == t.steps:
        gen = parallel.local_copy(state.params["gen"])
        val_metrics = evaluate.split_metrics(config, embed_fn, gen, val)
        record.update({f"val_{k}": v for k, v in val_metrics.items()})
        # Every process scores identical params identically: all take this collective save.
        if val_metrics[select] > meta["best_score"]:
          meta.update(best_score=val_metrics[select], best_step=step)
          store.save_best(step, state, meta)
        bar.set_postfix(
          loss=f"{m['loss_emb']:.3f}",
          d=f"{m['loss_disc']:.3f}",
          **{f"val_{select}": f"{val_metrics[select]:.4f}"},
        )
      if step % t.checkpoint_every == 0 or step == t.steps:
        save_latest(state)
      history.write(json.dumps(record) + "\n")
      history.flush()
      if board is not None:
        for key, value in record.items():
          if key != "step" and np.isfinite(value):
            board.add_scalar(key.replace("val_", "val/", 1), value, step)
        board.flush()
    stopping = stopping or should_stop()
  bar.close()
  if board is not None:
    board.close()

  if stopping:
    save_latest(state)
    store.close()
    if is_main:
      log.warning("interrupted at step %d; state saved, rerun the same command to resume", step)
    raise KeyboardInterrupt

  best = store.restore_best(state)
  store.close()
  best_step, best_state, _ = best
  gen = parallel.local_copy(best_state.params["gen"])
  result = {
    "method": config.method,
    "dataset": config.data.name,
    "steps": int(t.steps),
    "best_step": int(best_step),
    "select_metric": select,
    "train_seconds": round(seconds_before + time.perf_counter() - started, 3),
    "skipped_steps": int(parallel.to_host(state.skipped)),
    "val": evaluate.split_metrics(config, embed_fn, gen, val),
    "test": evaluate.split_metrics(config, embed_fn, gen, test),
  }
  if is_main:
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)
  return result
