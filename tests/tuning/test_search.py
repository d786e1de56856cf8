"""Hyperparameter search: validation only, reproducible, populations of trials, resumable, and
two workers on one study."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

from mscross import config as config_lib
from mscross import data, dotted, methods, presets, tuning
from mscross.tuning import search, storage

TINY = {
  "train.steps": 20,
  "train.eval_every": 10,
  "train.checkpoint_every": 10,
}


def tiny_config():
  c = presets.build("mnsgan", "digits_halves")
  for key, value in TINY.items():
    dotted.set_(c, key, value)
  return c


def finished(study):
  return [t for t in study.get_trials() if t.state.is_finished()]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sweep"))
  seen_splits = []
  real = data.Prepared.split

  def spy(self, split):
    seen_splits.append(split)
    return real(self, split)

  data.Prepared.split = spy
  try:
    study = tuning.tune(tiny_config(), workdir, trials=4, population=2, progress=lambda _: None)
  finally:
    data.Prepared.split = real
  return workdir, study, seen_splits


def test_a_sweep_never_reads_nor_scores_the_test_split(sweep):
  workdir, _, seen = sweep
  assert "test" not in seen and "validation" in seen
  groups = sorted(Path(workdir, search.GROUPS).glob("*/g*"))
  assert len(groups) == 2
  for group in groups:
    metrics = json.loads((group / "metrics.json").read_text())
    assert "test" not in metrics and all("test" not in m for m in metrics["members"])


def test_trials_run_as_populations_that_share_the_structural_choices(sweep):
  workdir, study, _ = sweep
  trials = finished(study)
  assert len(trials) == 4 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
  space = methods.get("mnsgan").search_space
  structural = [p.name for p in space if not p.continuous]
  groups = {}
  for t in trials:
    groups.setdefault(t.user_attrs["group"], []).append(t)
  assert sorted(len(g) for g in groups.values()) == [2, 2]
  for members in groups.values():
    assert len({tuple(t.params[n] for n in structural) for t in members}) == 1
    # ... and sample their own continuous values.
    assert members[0].params["optim.lr"] != members[1].params["optim.lr"]
  # A trial's value is the best validation score its member reached.
  t = next(t for t in trials if t.state.name == "COMPLETE")
  with open(os.path.join(t.user_attrs["run_dir"], "metrics.json")) as f:
    run = json.load(f)
  member = next(m for m in run["members"] if m["optim.lr"] == pytest.approx(t.params["optim.lr"]))
  assert t.value == pytest.approx(member["val"]["avg_map"])


def test_best_config_is_a_ready_config(sweep):
  workdir, study, _ = sweep
  best = config_lib.load_config_file(os.path.join(workdir, "best_config.json"))
  params = study.best_trial.params
  assert best.optim.lr == pytest.approx(params["optim.lr"])
  assert best.train.batch_size == params["train.batch_size"]
  assert best.model.encoder_width == params["embedding_width"]
  assert best.model.encoder_layers == (params["hidden_width"],)
  assert best.population.size == 1 and best.method == "mnsgan"
  config_lib.validate(best)
  lines = [json.loads(x) for x in open(os.path.join(workdir, "trials.jsonl"))]
  assert sorted(r["number"] for r in lines) == [t.number for t in finished(study)]


def test_a_seeded_sweep_is_reproducible(sweep, tmp_path):
  _, study, _ = sweep
  again = tuning.tune(tiny_config(), str(tmp_path), trials=2, population=2, progress=lambda _: None)
  first = sorted(finished(study), key=lambda t: t.number)[:2]
  for a, b in zip(first, sorted(finished(again), key=lambda t: t.number), strict=True):
    assert a.params == b.params
    assert a.value == pytest.approx(b.value, abs=1e-6)


def test_a_second_config_on_the_same_study_is_refused(sweep):
  workdir, _, _ = sweep
  other = tiny_config()
  other.optim.b1 = 0.9
  with pytest.raises(Exception, match="another config"):
    tuning.tune(other, workdir, trials=5, progress=lambda _: None)


def _tune_cmd(workdir, trials):
  return [
    sys.executable,
    "tune.py",
    "--config",
    "configs/default.py",
    f"--workdir={workdir}",
    f"--trials={trials}",
    "--population=1",
    *[f"--config.{k}={v}" for k, v in TINY.items()],
  ]


def _states(workdir):
  with sqlite3.connect(os.path.join(workdir, "study.db")) as db:
    try:
      return [row for row in db.execute("SELECT number, state FROM trials ORDER BY number")]
    except sqlite3.OperationalError:  # the file exists, its tables not yet
      return []


@pytest.mark.slow
def test_two_workers_share_one_study_without_losing_or_repeating_trials(tmp_path):
  workdir = tmp_path / "shared"
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  procs = [
    subprocess.Popen(_tune_cmd(workdir, 4), cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    for _ in range(2)
  ]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
  states = _states(workdir)
  numbers = [n for n, _ in states]
  assert len(numbers) == len(set(numbers)) == 4
  assert {s for _, s in states} <= {"COMPLETE", "PRUNED"}


@pytest.mark.slow
def test_a_killed_sweep_resumes_and_retries_the_trials_it_was_running(tmp_path):
  workdir = tmp_path / "killed"
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  proc = subprocess.Popen(_tune_cmd(workdir, 3), cwd=REPO, env=env, stderr=subprocess.PIPE)
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline:
    db = workdir / "study.db"
    if db.exists() and any(s == "RUNNING" for _, s in _states(workdir)):
      break
    assert proc.poll() is None, "the sweep ended before it could be killed"
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  rerun = subprocess.run(_tune_cmd(workdir, 3), cwd=REPO, env=env, capture_output=True, text=True)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  states = dict(_states(workdir))
  done = [n for n, s in states.items() if s in ("COMPLETE", "PRUNED")]
  assert len(done) == 3 and "RUNNING" not in states.values()
  # The trial that died with its worker was marked failed and run again.
  assert list(states.values()).count("FAIL") >= 1


def test_a_claim_cut_short_is_recovered_at_once(tmp_path):
  import optuna

  study = tuning.open_study(str(tmp_path), tiny_config())
  study.ask()  # RUNNING, and its worker never recorded: the claim died halfway
  assert storage.recover(study) == [0]
  assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.FAIL]


def test_another_machine_s_trial_is_recovered_once_its_heartbeat_is_stale(tmp_path):
  import optuna

  study = tuning.open_study(str(tmp_path), tiny_config())
  trial = study.ask({"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
  trial.set_user_attr("worker", "another-machine:4242")
  trial.set_user_attr("heartbeat", time.time())
  assert storage.recover(study, recovery_seconds=60) == []  # alive, as far as anyone knows
  trial.set_user_attr("heartbeat", time.time() - 61)
  assert storage.recover(study, recovery_seconds=60) == [0]
  states = [(t.number, t.state.name, t.user_attrs.get("rerun_of")) for t in study.get_trials()]
  # Marked failed, and its parameters queued again as a new trial.
  assert states == [(0, "FAIL", None), (1, "WAITING", 0)]
  assert study.get_trials()[1].system_attrs["fixed_params"] == trial.params
