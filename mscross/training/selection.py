"""Model selection on the validation split, per population member.

`Tracker` keeps, for each member, its best validation score and the step that reached it, the
evaluations since then (early stopping with `train.patience`) and why the member stopped:

* "patience": `patience` evaluations in a row without a better validation score;
* "diverged": `train.max_nonfinite` consecutive steps with non-finite losses or gradients;
* "pruned": the hyperparameter search judged it hopeless (mscross.tuning);
* "cap": it was still improving when training reached `train.steps`;
* "training": it has not stopped yet.

The tracker is saved with every checkpoint, so a resumed run selects exactly as an
uninterrupted one. It is immutable: `update`, `stop` and `finish` return a new one.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

TRAINING, PATIENCE, DIVERGED, PRUNED, CAP = "training", "patience", "diverged", "pruned", "cap"


@dataclasses.dataclass(frozen=True)
class Tracker:
  """Per member: the best validation score and its step, the evaluations since, and the status.
  Immutable: every change returns a new tracker."""

  patience: int
  best_score: np.ndarray  # float64 [P]
  best_step: np.ndarray  # int64 [P], -1 before the first evaluation
  since_best: np.ndarray  # int64 [P]
  status: tuple[str, ...]

  @classmethod
  def start(cls, size: int, patience: int) -> Tracker:
    return cls(
      int(patience),
      np.full(size, -np.inf),
      np.full(size, -1, np.int64),
      np.zeros(size, np.int64),
      (TRAINING,) * size,
    )

  @property
  def size(self) -> int:
    return len(self.status)

  @property
  def active(self) -> np.ndarray:
    return np.asarray([s == TRAINING for s in self.status])

  @property
  def all_diverged(self) -> bool:
    """Every member stopped for non-finite steps: the run has nothing left to train."""
    return all(s == DIVERGED for s in self.status)

  def update(self, step: int, scores: np.ndarray) -> tuple[Tracker, np.ndarray]:
    """The tracker after the validation `scores` [P] of `step`, and which members improved.
    Members that stopped earlier are left alone; a member that runs out of patience stops."""
    best_score, best_step = self.best_score.copy(), self.best_step.copy()
    since_best, status = self.since_best.copy(), list(self.status)
    improved = np.zeros(self.size, bool)
    for m, score in enumerate(np.asarray(scores, np.float64)):
      if status[m] != TRAINING:
        continue
      # NaN (no query with a relevant item) never counts as better.
      if not math.isnan(score) and score > best_score[m]:
        best_score[m], best_step[m], since_best[m] = score, step, 0
        improved[m] = True
      else:
        since_best[m] += 1
        if self.patience and since_best[m] >= self.patience:
          status[m] = PATIENCE
    return Tracker(self.patience, best_score, best_step, since_best, tuple(status)), improved

  def stop(self, members, reason: str) -> Tracker:
    """The tracker with `members` [P] (bool) that are still training stopped for `reason`."""
    stopping = np.asarray(members, bool)
    status = tuple(
      reason if stop and s == TRAINING else s for s, stop in zip(self.status, stopping, strict=True)
    )
    return dataclasses.replace(self, status=status)

  def finish(self) -> Tracker:
    """At the step cap: members still training stopped by the cap."""
    return self.stop(self.active, CAP)

  def to_json(self) -> dict:
    return {
      "patience": self.patience,
      "best_score": [None if not math.isfinite(s) else float(s) for s in self.best_score],
      "best_step": [int(s) for s in self.best_step],
      "since_best": [int(s) for s in self.since_best],
      "status": list(self.status),
    }

  @classmethod
  def from_json(cls, raw: dict, patience: int) -> Tracker:
    since_best = np.asarray(raw["since_best"], np.int64)
    # A resumed run may have raised the patience or the cap: members stopped by either train on.
    status = tuple(
      TRAINING if s == CAP or (s == PATIENCE and (not patience or since_best[m] < patience)) else s
      for m, s in enumerate(raw["status"])
    )
    return cls(
      int(patience),
      np.asarray([-np.inf if s is None else s for s in raw["best_score"]], np.float64),
      np.asarray(raw["best_step"], np.int64),
      since_best,
      status,
    )
