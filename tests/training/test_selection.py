"""Tests of mscross.training.selection.Tracker: the best score and step per member against a
hand-worked sequence, early stopping after exactly `patience` evaluations without improvement,
NaN scores, the stop reasons, the step cap, and the JSON form a resumed run reads back (which
re-activates members stopped by the cap, or by a patience that was since raised)."""

import json

import numpy as np
import pytest

from mscross.training.selection import CAP, DIVERGED, PATIENCE, PRUNED, TRAINING, Tracker

NAN = float("nan")


def round_trip(tracker, patience):
  """The tracker as a resumed run reads it back from the checkpoint's JSON."""
  return Tracker.from_json(json.loads(json.dumps(tracker.to_json())), patience)


def test_improvement_bookkeeping_matches_hand_worked_sequence():
  t = Tracker.start(3, patience=0)
  # (step, scores of members 0..2, which improved). A tie is no improvement; patience 0 never
  # stops anyone.
  sequence = [
    (10, [0.1, 0.5, 0.2], [True, True, True]),
    (20, [0.3, 0.4, 0.2], [True, False, False]),
    (30, [0.2, 0.6, 0.25], [False, True, True]),
    (40, [0.3, 0.1, 0.1], [False, False, False]),
    (50, [0.35, 0.6, 0.3], [True, False, True]),
  ]
  for step, scores, improved in sequence:
    t, got = t.update(step, np.array(scores))
    np.testing.assert_array_equal(got, improved, err_msg=str(step))
  np.testing.assert_allclose(t.best_score, [0.35, 0.6, 0.3])
  np.testing.assert_array_equal(t.best_step, [50, 30, 50])
  np.testing.assert_array_equal(t.since_best, [0, 2, 0])
  assert t.status == (TRAINING,) * 3
  assert t.active.tolist() == [True] * 3


@pytest.mark.parametrize("patience", [1, 3])
def test_patience_stops_after_exactly_that_many_evaluations_without_improvement(patience):
  t = Tracker.start(2, patience)
  t, _ = t.update(0, [0.5, 0.5])
  # Member 1 keeps improving; member 0 never does again.
  for i in range(1, patience):
    t, _ = t.update(i, [0.5, 0.5 + i])
    assert t.status == (TRAINING, TRAINING), i
  t, _ = t.update(patience, [0.4, 0.5 + patience])
  assert t.status == (PATIENCE, TRAINING)
  assert t.active.tolist() == [False, True]
  assert int(t.since_best[0]) == patience
  # A stopped member is left alone, however good its later scores.
  t, improved = t.update(patience + 1, [0.9, 0.0])
  assert improved.tolist() == [False, False]
  assert t.best_score[0] == 0.5 and t.best_step[0] == 0
  assert int(t.since_best[0]) == patience
  assert t.status[0] == PATIENCE


def test_improvement_resets_the_patience_count():
  t = Tracker.start(1, patience=2)
  for step, score in [(1, 0.5), (2, 0.4), (3, 0.6), (4, 0.6)]:
    t, _ = t.update(step, [score])
  assert t.status == (TRAINING,)
  assert int(t.since_best[0]) == 1 and t.best_step[0] == 3
  t, _ = t.update(5, [0.1])
  assert t.status == (PATIENCE,)


def test_nan_never_counts_as_better():
  t = Tracker.start(2, patience=3)
  # Before any finite score the best is -inf: NaN must not take its place.
  t, improved = t.update(10, [NAN, 0.2])
  assert improved.tolist() == [False, True]
  assert t.best_score[0] == -np.inf and t.best_step[0] == -1
  t, _ = t.update(20, [0.1, NAN])
  t, improved = t.update(30, [NAN, NAN])
  assert improved.tolist() == [False, False]
  np.testing.assert_allclose(t.best_score, [0.1, 0.2])
  np.testing.assert_array_equal(t.best_step, [20, 10])
  np.testing.assert_array_equal(t.since_best, [1, 2])
  # NaN uses up patience like any other evaluation without improvement.
  t, _ = t.update(40, [NAN, NAN])
  assert t.status == (TRAINING, PATIENCE)


def test_stop_reasons_and_stopped_members_are_left_alone():
  t = Tracker.start(4, patience=0)
  t, _ = t.update(10, [0.1, 0.2, 0.3, 0.4])
  t = t.stop([True, False, False, False], DIVERGED)
  t = t.stop(np.array([True, True, False, False]), PRUNED)
  # The first reason stays: member 0 diverged before the search pruned it.
  assert t.status == (DIVERGED, PRUNED, TRAINING, TRAINING)
  assert t.active.tolist() == [False, False, True, True]
  t, improved = t.update(20, [0.9, 0.9, 0.9, 0.0])
  assert improved.tolist() == [False, False, True, False]
  np.testing.assert_allclose(t.best_score, [0.1, 0.2, 0.9, 0.4])
  np.testing.assert_array_equal(t.since_best, [0, 0, 0, 1])
  t = t.finish()
  assert t.status == (DIVERGED, PRUNED, CAP, CAP)
  assert not t.active.any()


def test_finish_stops_only_members_still_training():
  t = Tracker.start(3, patience=1)
  t, _ = t.update(1, [0.5, 0.5, 0.5])
  t, _ = t.update(2, [0.4, 0.6, 0.6])  # member 0 runs out of patience
  t = t.stop([False, True, False], DIVERGED)
  t = t.finish()
  assert t.status == (PATIENCE, DIVERGED, CAP)


def test_json_round_trip():
  t = Tracker.start(4, patience=2)
  t, _ = t.update(10, [0.5, NAN, 0.1, 0.3])
  t, _ = t.update(20, [0.4, NAN, 0.2, 0.3])
  t = t.stop([False, False, True, False], PRUNED)
  raw = t.to_json()
  # A member without a finite score yet is stored as null: JSON has no -inf.
  assert raw == {
    "patience": 2,
    "best_score": [0.5, None, 0.2, 0.3],
    "best_step": [10, -1, 20, 10],
    "since_best": [1, 2, 0, 1],
    "status": [TRAINING, PATIENCE, PRUNED, TRAINING],
  }
  back = round_trip(t, 2)
  assert back.size == 4 and back.patience == 2
  np.testing.assert_array_equal(back.best_score, t.best_score)
  np.testing.assert_array_equal(back.best_step, t.best_step)
  np.testing.assert_array_equal(back.since_best, t.since_best)
  assert back.status == t.status
  # The resumed tracker goes on exactly as the original.
  for step, scores in [(30, [0.6, 0.9, 0.9, 0.2]), (40, [0.55, 0.9, 0.9, 0.2])]:
    (back, a), (t, b) = back.update(step, scores), t.update(step, scores)
    np.testing.assert_array_equal(a, b)
  assert back.to_json() == t.to_json()
  assert back.status == (TRAINING, PATIENCE, PRUNED, PATIENCE)
  assert back.best_step.tolist() == [30, -1, 20, 10]


def test_resume_reactivates_members_stopped_by_the_cap():
  t = Tracker.start(3, patience=0)
  t, _ = t.update(10, [0.1, 0.2, 0.3])
  t = t.stop([False, True, False], DIVERGED)
  t = t.finish()
  assert t.status == (CAP, DIVERGED, CAP)
  # Resumed with a higher step cap: the capped members train on; a diverged one never does.
  back = round_trip(t, 0)
  assert back.status == (TRAINING, DIVERGED, TRAINING)
  assert back.best_step.tolist() == [10, 10, 10]


@pytest.mark.parametrize(
  "new_patience,status",
  [(2, PATIENCE), (1, PATIENCE), (3, TRAINING), (5, TRAINING), (0, TRAINING)],
  ids=["same", "lowered", "raised", "raised_more", "switched_off"],
)
def test_resume_reactivates_patience_stops_only_when_patience_allows(new_patience, status):
  t = Tracker.start(2, patience=2)
  for step, scores in [(10, [0.5, 0.5]), (20, [0.4, 0.6]), (30, [0.4, 0.7])]:
    t, _ = t.update(step, scores)
  assert t.status == (PATIENCE, TRAINING)
  back = round_trip(t, new_patience)
  assert back.patience == new_patience
  assert back.status == (status, TRAINING)
  assert back.since_best.tolist() == [2, 0]


def test_reactivated_member_stops_when_the_raised_patience_runs_out():
  t = Tracker.start(1, patience=2)
  for step, score in [(10, 0.5), (20, 0.4), (30, 0.4)]:
    t, _ = t.update(step, [score])
  assert t.status == (PATIENCE,)
  back = round_trip(t, 4)
  # Two evaluations without improvement are already counted: two more stop it.
  back, _ = back.update(40, [0.3])
  assert back.status == (TRAINING,)
  back, _ = back.update(50, [0.5])  # a tie with the best
  assert back.status == (PATIENCE,)
  assert back.best_step.tolist() == [10]


def test_status_names():
  # The names are stored in checkpoints and read back by resumed runs: renaming one would
  # silently stop reactivating old runs' members.
  assert (TRAINING, PATIENCE, DIVERGED, PRUNED, CAP) == (
    "training",
    "patience",
    "diverged",
    "pruned",
    "cap",
  )
