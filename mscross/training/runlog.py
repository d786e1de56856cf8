"""The run's log: `history.jsonl` (losses and validation metrics at every evaluation), TensorBoard
event files and the final `metrics.json` (`final_result`), all written by process 0 only.

A resumed run first drops the history records of steps after its checkpoint: that training was
lost with the process and is done again, so its records are written again too.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from mscross import atomic, metrics
from mscross.runs import layout


def _record_step(line: str) -> float:
  try:
    return json.loads(line).get("step", 0)
  except json.JSONDecodeError:
    return float("inf")  # a line cut off by a crash mid-write


class _Board:
  """TensorBoard event files, opened at the first write: tensorboardX takes a second or more to
  import (it loads PyTorch when that is installed), which is no reason to delay the first step."""

  def __init__(self, folder: str):
    self.folder, self._writer = folder, None

  def add_scalar(self, tag: str, value: float, step: int) -> None:
    if self._writer is None:
      from tensorboardX import SummaryWriter

      self._writer = SummaryWriter(self.folder)
    self._writer.add_scalar(tag, value, step)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


class RunLog:
  """`with RunLog(workdir, step, enabled) as log:` the history opened for appending after the
  resumed `step`, and TensorBoard. `enabled=False` (processes other than 0) writes nothing."""

  def __init__(self, workdir: str, step: int, *, enabled: bool = True):
    self.workdir, self.enabled = workdir, enabled
    self._history = open(self._truncated(step) if enabled else os.devnull, "a")  # noqa: SIM115
    self._board = _Board(layout.path(workdir, layout.TENSORBOARD)) if enabled else None

  def _truncated(self, step: int) -> str:
    path = layout.path(self.workdir, layout.HISTORY)
    if os.path.exists(path):
      with open(path) as f:
        lines = f.readlines()
      # A line without its newline was cut off mid-write, even where it parses.
      kept = [line for line in lines if line.endswith("\n") and _record_step(line) <= step]
      if len(kept) != len(lines):
        atomic.write_lines(path, kept)
    return path

  def __enter__(self) -> RunLog:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    self._history.close()
    if self._board is not None:
      self._board.close()
      self._board = None

  def write(self, records: list[dict], size: int) -> None:
    """One record per member of an evaluation (or chunk); TensorBoard gets the finite floats,
    per member when the population has several."""
    for r in records:
      self._history.write(json.dumps(r) + "\n")
      if self._board is not None:
        suffix = f"/member{r['member']}" if size > 1 else ""
        for key, value in r.items():
          if key not in ("step", "member") and isinstance(value, float) and np.isfinite(value):
            self._board.add_scalar(key.replace("val_", "val/", 1) + suffix, value, r["step"])
    self._history.flush()
    if self._board is not None:
      self._board.flush()

  def config_change(self, step: int, changes: list[tuple]) -> None:
    """Records an allowed config change (key, stored value, new value) at the resumed step."""
    change = {k: [a, b] for k, a, b in changes}
    self.write_raw({"step": step, "config_change": change})

  def write_raw(self, record: dict) -> None:
    self._history.write(json.dumps(record) + "\n")
    self._history.flush()


def final_result(
  plan,
  tracker,
  scored: dict[str, list[dict]],
  *,
  steps: int,
  skipped,
  train_seconds: float,
  startup_seconds: float | None,
) -> dict:
  """What metrics.json holds: the run, every member (its seed and differing hyperparameters,
  best step, why it stopped, its scores) and the mean and std over the members that have a
  selected state. `scored` is {"validation": [metrics per member], "test": [...]}."""
  spec = plan.spec
  members = []
  for i, info in enumerate(plan.describe()):
    entry = {
      "member": i,
      **info,
      "best_step": int(tracker.best_step[i]),
      "stopped": tracker.status[i],
      "skipped_steps": int(skipped[i]),
      "val": scored["validation"][i],
    }
    if "test" in scored:
      entry["test"] = scored["test"][i]
    members.append(entry)
  # A member that diverged before its first evaluation has no selected state.
  kept = [e for e in members if e["best_step"] >= 0]
  result = {
    "method": plan.method.name,
    "dataset": plan.data.name,
    "modalities": list(spec.modalities),
    "labelled": spec.num_classes > 0,
    "steps": int(steps),
    "max_steps": plan.schedule.steps,
    "population": plan.size,
    "select_metric": plan.evaluation.select_metric,
    "train_seconds": round(train_seconds, 3),
    # Process start to the first trained step of this process (None: nothing left to train).
    "startup_seconds": None if startup_seconds is None else round(startup_seconds, 3),
    "members": members,
  }
  for key in ("val", "test"):
    if kept and key in kept[0]:
      result[key], result[f"{key}_std"] = metrics.mean_and_std([e[key] for e in kept])
  return result


def process_age() -> float:
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
