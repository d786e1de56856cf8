"""Hyperparameter search (`tune.py`): `search` runs the study's trials in populations on the
validation split; `storage` keeps a study shared by several workers, on one machine or many,
consistent (serialised claims, heartbeats, recovery of a dead worker's trials, reconnection)."""

from mscross.tuning.search import (
  BEST_CONFIG,
  TRIALS,
  best_config,
  counts,
  group_config,
  load_study,
  open_study,
  study_summary,
  tune,
)
from mscross.tuning.storage import DEFAULT_RECOVERY_SECONDS, STUDY_DB, StorageError

__all__ = [
  "BEST_CONFIG",
  "DEFAULT_RECOVERY_SECONDS",
  "STUDY_DB",
  "TRIALS",
  "StorageError",
  "best_config",
  "counts",
  "group_config",
  "load_study",
  "open_study",
  "study_summary",
  "tune",
]
