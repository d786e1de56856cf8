"""Model selection on the validation split, per population member.

`Tracker` keeps, for each member, its best validation score and the step that reached it, the
evaluations since then (early stopping with `train.patience`) and why the member stopped:

* "patience": `patience` evaluations in a row without a better validation score;
* "diverged": `train.max_nonfinite` consecutive steps with non-finite losses or gradients;
* "pruned": the hyperparameter search judged it hopeless (mscross.tuning);
* "cap": it was still improving when training reached `train.steps`;
* "training": it has not stopped yet.

The tracker is saved with every checkpoint, so a resumed run selects exactly as an
uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np

TRAINING, PATIENCE, DIVERGED, PRUNED, CAP = "training", "patience", "diverged", "pruned", "cap"


class Tracker:
  def __init__(self, size: int, patience: int):
    self.patience = int(patience)
    self.best_score = np.full(size, -np.inf)
    self.best_step = np.full(size, -1, np.int64)
    self.since_best = np.zeros(size, np.int64)
    self.status = [TRAINING] * size

  @property
  def size(self) -> int:
    return len(self.status)

  @property
  def active(self) -> np.ndarray:
    return np.asarray([s == TRAINING for s in self.status])

  def update(self, step: int, scores: np.ndarray) -> np.ndarray:
    """Records the validation `scores` [P] of `step`; returns which members improved. Members
    that stopped earlier are left alone; a member that runs out of patience stops here."""
    improved = np.zeros(self.size, bool)
    for m, score in enumerate(np.asarray(scores, np.float64)):
      if self.status[m] != TRAINING:
        continue
      # NaN (no query with a relevant item) never counts as better.
      if not math.isnan(score) and score > self.best_score[m]:
        self.best_score[m], self.best_step[m], self.since_best[m] = score, step, 0
        improved[m] = True
      else:
        self.since_best[m] += 1
        if self.patience and self.since_best[m] >= self.patience:
          self.status[m] = PATIENCE
    return improved

  def stop(self, members, reason: str) -> None:
    for m in np.flatnonzero(np.asarray(members, bool)):
      if self.status[m] == TRAINING:
        self.status[m] = reason

  def finish(self) -> None:
    """At the step cap: members still training stopped by the cap."""
    self.stop(self.active, CAP)

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
    t = cls(len(raw["status"]), patience)
    t.best_score = np.asarray([-np.inf if s is None else s for s in raw["best_score"]], np.float64)
    t.best_step = np.asarray(raw["best_step"], np.int64)
    t.since_best = np.asarray(raw["since_best"], np.int64)
    t.status = list(raw["status"])
    # A resumed run may have raised the patience or the cap: members stopped by either train on.
    for m, s in enumerate(t.status):
      if s == CAP or (s == PATIENCE and (not patience or t.since_best[m] < patience)):
        t.status[m] = TRAINING
    return t
