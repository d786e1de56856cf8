"""One study shared by several tune.py workers on a real PostgreSQL server (tests/postgres.py):
exactly the trials asked for, none run twice; a worker killed mid-trial; the server restarted
under a worker; and a storage that cannot be opened."""

import os
import signal
import subprocess
import sys
import tempfile
import time

import optuna
import pytest
from helpers import REPO, free_port

from mscross import config as config_lib
from mscross import presets, tuning

pytestmark = pytest.mark.slow
TINY = (
  "--config.train.steps=20",
  "--config.train.eval_every=10",
  "--config.train.checkpoint_every=10",
)
# One compilation cache for every worker of this module: trials of one shape compile once.
ENV = {
  **os.environ,
  "PYTHONUNBUFFERED": "1",
  "MSCROSS_JAX_CACHE_DIR": tempfile.mkdtemp(prefix="mscross-test-jax-"),
}


def tune_cmd(workdir, url, trials, population=1, *extra):
  return [
    sys.executable,
    "tune.py",
    "--config=configs/default.py",
    f"--workdir={workdir}",
    f"--storage={url}",
    f"--trials={trials}",
    f"--population={population}",
    *TINY,
    *extra,
  ]


def start(cmd):
  return subprocess.Popen(
    cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )


def load(url):
  return optuna.load_study(study_name="mscross", storage=url)


def wait_for(url, condition, proc, seconds=300):
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    try:
      trials = load(url).get_trials()
    except Exception:  # noqa: BLE001 - the study is not created yet
      trials = []
    found = [t for t in trials if condition(t)]
    if found:
      return found[0]
    time.sleep(0.3)
  raise AssertionError("timed out")


def test_two_workers_finish_exactly_the_trials_asked_and_name_the_study_s_best(
  postgres_server, tmp_path
):
  url = postgres_server.create_database("two_workers")
  # Two workdirs: as on two machines, nothing is shared but the server.
  procs = [start(tune_cmd(tmp_path / f"machine{i}", url, 4, 2)) for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-2000:]
  study = load(url)
  c = tuning.counts(study)
  print(f"two workers: 4 trials asked, {c}")
  assert c.get("complete", 0) + c.get("pruned", 0) == 4, c
  assert not c.get("running") and not c.get("fail") and not c.get("waiting"), c
  # No trial ran twice: each ran under one worker, in one group of that worker's workdir.
  by_worker = {}
  for t in study.trials:
    by_worker.setdefault(t.user_attrs["worker"], set()).add(t.number)
    assert str(tmp_path) in t.user_attrs["run_dir"]
  assert sum(len(n) for n in by_worker.values()) == 4 == len(set().union(*by_worker.values()))
  # The worker that completed the study names its best trial as the database has it, and writes
  # that trial's config; one that ended earlier says the study goes on and names the best so far.
  best = study.best_trial
  completing = [i for i, (out, _) in enumerate(outs) if "study complete: 4 trials" in out]
  assert completing, [out for out, _ in outs]
  for i, (out, _) in enumerate(outs):
    if i in completing:
      assert f"best trial #{best.number}: {best.value:.4f}" in out
      saved = config_lib.load_config_file(tmp_path / f"machine{i}" / tuning.BEST_CONFIG)
      assert saved.optim.lr == pytest.approx(best.params["optim.lr"])
    else:
      assert "this worker is done" in out and "best so far" in out


def test_a_worker_killed_mid_trial_is_run_again_by_the_next(postgres_server, tmp_path):
  url = postgres_server.create_database("killed")
  worker = start(tune_cmd(tmp_path / "a", url, 2, 1, "--recovery_seconds=4"))
  killed = wait_for(
    url, lambda t: t.state.name == "RUNNING" and "heartbeat" in t.user_attrs, worker
  )
  worker.kill()
  worker.communicate(timeout=60)
  # As if its machine had vanished: no process check here can tell, only the heartbeat.
  storage = optuna.storages.RDBStorage(url)
  study_id = storage.get_study_id_from_name("mscross")
  trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, killed.number)
  storage.set_trial_user_attr(trial_id, "worker", "vanished-machine:1")

  rerun = subprocess.run(
    tune_cmd(tmp_path / "b", url, 2, 1, "--recovery_seconds=4"),
    cwd=REPO,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  study = load(url)
  c = tuning.counts(study)
  print(f"killed worker: 2 trials asked, {c}")
  assert c.get("complete", 0) + c.get("pruned", 0) == 2 and c.get("fail") == 1, c
  states = {t.number: t for t in study.trials}
  assert states[killed.number].state.name == "FAIL"  # never counted as complete
  again = [t for t in study.trials if t.user_attrs.get("rerun_of") == killed.number]
  assert len(again) == 1 and again[0].state.name in ("COMPLETE", "PRUNED")
  assert again[0].params == killed.params
  # Not before its heartbeat had been silent for --recovery_seconds.
  last_beat = float(states[killed.number].user_attrs["heartbeat"])
  assert again[0].datetime_start.timestamp() - last_beat >= 4


def test_a_server_restart_under_a_worker_is_said_and_survived(postgres_server, tmp_path):
  url = postgres_server.create_database("restart")
  worker = start(tune_cmd(tmp_path / "a", url, 2, 1))
  wait_for(url, lambda t: t.state.is_finished(), worker)
  postgres_server.restart()
  out, err = worker.communicate(timeout=900)
  text = out + err
  assert "Traceback" not in text
  lost = [line for line in text.splitlines() if "study's storage" in line and "lost" in line]
  assert len(lost) == 1, text[-3000:]
  assert "s3cret" not in text and "***" in lost[0]  # the password is never printed
  if worker.returncode != 0:  # it stopped cleanly instead: one error line, and a rerun finishes
    assert worker.returncode == 2 and err.strip().splitlines()[-1].startswith("error: ")
    rerun = subprocess.run(
      tune_cmd(tmp_path / "a", url, 2, 1), cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
  c = tuning.counts(load(url))
  print(f"server restart: 2 trials asked, {c}; the worker said: {lost[0]}")
  assert c.get("complete", 0) + c.get("pruned", 0) == 2 and not c.get("running"), c


def test_a_paused_worker_whose_trials_were_taken_over_says_so_and_goes_on(
  postgres_server, tmp_path
):
  url = postgres_server.create_database("paused")
  # Long enough trials that the paused worker still has evaluations to report when it is back.
  longer = ("--config.train.steps=40", "--recovery_seconds=4")
  paused = start(tune_cmd(tmp_path / "a", url, 2, 1, *longer))
  first = wait_for(url, lambda t: t.state.name == "RUNNING" and "heartbeat" in t.user_attrs, paused)
  os.kill(paused.pid, signal.SIGSTOP)
  try:
    time.sleep(6)  # its heartbeat falls silent for longer than --recovery_seconds
    other = subprocess.run(
      tune_cmd(tmp_path / "b", url, 2, 1, *longer),
      cwd=REPO,
      env=ENV,
      capture_output=True,
      text=True,
      timeout=900,
    )
    assert other.returncode == 0, other.stderr[-2000:]
    assert load(url).trials[first.number].state.name == "FAIL"  # taken over
  finally:
    os.kill(paused.pid, signal.SIGCONT)
  out, err = paused.communicate(timeout=900)
  print(f"paused worker said: {out[-600:]}")
  assert paused.returncode == 0 and "Traceback" not in out + err, err[-3000:]
  said = [line for line in (out + err).splitlines() if "taken over by another worker" in line]
  assert len(said) == 1 and f"trial {first.number} was taken over" in said[0], out + err
  c = tuning.counts(load(url))
  print(f"paused worker: 2 trials asked, {c}")
  assert c.get("complete", 0) + c.get("pruned", 0) == 2 and c.get("fail") == 1, c
  assert not c.get("running") and not c.get("waiting") and c["rerun"] == 1, c


def test_a_workdir_reused_for_another_study_never_resumes_its_runs(postgres_server, tmp_path):
  workdir = tmp_path / "reused"
  run_dirs = []
  for name in ("first_study", "second_study"):
    url = postgres_server.create_database(name)
    proc = subprocess.run(
      tune_cmd(workdir, url, 1), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The same seeded sampler proposes the same first trial to both studies.
    assert "resuming from step" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
    run_dirs.append(load(url).trials[0].user_attrs["run_dir"])
  assert run_dirs[0] != run_dirs[1] and all(str(workdir) in d for d in run_dirs)


def test_a_storage_that_cannot_be_opened_is_one_error_line(postgres_server, tmp_path):
  wrong = {
    "password": postgres_server.url("postgres", password="not-the-password"),
    "database": postgres_server.url("no_such_database"),
    "port": f"postgresql+psycopg://mscross:pw@127.0.0.1:{free_port()}/postgres",
    "driver": postgres_server.url("postgres").replace("+psycopg", "+nosuchdriver"),
  }
  # tune.py end to end for one of them: one `error:` line and exit status 2.
  proc = subprocess.run(
    tune_cmd(tmp_path / "cli", wrong["password"], 1),
    cwd=REPO,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith("error: cannot open the study's storage postgresql+")
  assert "not-the-password" not in proc.stderr and "s3cret" not in proc.stderr
  # Every kind of wrong URL is the one-line StorageError that tune.py prints, password masked.
  config = presets.build("mnsgan", "digits_halves")
  for kind, url in wrong.items():
    with pytest.raises(tuning.StorageError) as caught:
      tuning.tune(config, str(tmp_path / kind), trials=1, storage=url, progress=lambda _: None)
    message = str(caught.value)
    assert message.startswith("cannot open the study's storage postgresql+"), (kind, message)
    assert "\n" not in message and "not-the-password" not in message and "s3cret" not in message


def test_a_lost_connection_is_retried_and_said_once_a_fault_is_not():
  import sqlalchemy

  from mscross.tuning import storage

  def wrapped_connection_error():
    # What Optuna raises when the server goes away under a commit.
    try:
      raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))
    except sqlalchemy.exc.SQLAlchemyError as e:
      raise optuna.exceptions.StorageInternalError(
        "An exception is raised during the commit."
      ) from e

  calls, said = [], []

  def flaky():
    calls.append(1)
    if len(calls) < 3:
      wrapped_connection_error()
    return "done"

  url = "postgresql+psycopg://mscross:hidden@db:5432/x"
  assert storage.retrying(flaky, url, said.append) == "done" and len(calls) == 3
  assert len(said) == 2 and "lost the connection" in said[0] and "reconnected" in said[1]
  assert all("hidden" not in line and "***" in line for line in said)

  def fault():
    raise optuna.exceptions.StorageInternalError("exceeding max length")

  with pytest.raises(optuna.exceptions.StorageInternalError):
    storage.retrying(fault, url, said.append)
