"""A real train.py process killed mid-run (SIGKILL, SIGTERM) resumes on rerun and ends where an
uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import REPO

import mscross

STEPS, EVERY = 600, 100
# Six chunks, each followed by an evaluation and a save: seconds in which to kill the process.
ARGS = [
  "--config",
  "configs/default.py",
  f"--config.train.steps={STEPS}",
  f"--config.train.eval_every={EVERY}",
  f"--config.train.checkpoint_every={EVERY}",
  "--config.model.encoder_layers=(64,)",
  "--config.model.encoder_width=32",
]


def start(workdir):
  return subprocess.Popen(
    [sys.executable, "train.py", "--workdir", str(workdir), *ARGS],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, "PYTHONUNBUFFERED": "1"},
  )


def saved_steps(workdir):
  latest = Path(workdir) / "checkpoints" / "latest"
  return (
    sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit()) if latest.exists() else []
  )


def wait_for_checkpoint(proc, workdir, timeout=240):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if saved_steps(workdir):
      return
    if proc.poll() is not None:
      pytest.fail(f"train.py ended before its first checkpoint: {proc.stderr.read()[-2000:]}")
    time.sleep(0.05)
  proc.kill()
  pytest.fail("no checkpoint appeared in time")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = start(workdir)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-2000:]
  return workdir


def finish_and_compare(workdir, reference, killed_at):
  proc = start(workdir)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-2000:]
  history = [json.loads(line) for line in (workdir / "history.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in history]
  # Resumed from the last checkpoint (so at most checkpoint_every steps were lost), not from 0.
  assert steps.count(EVERY) == 1
  assert [s for s in steps if s > killed_at] == list(range(killed_at + EVERY, STEPS + 1, EVERY))
  ours = json.loads((workdir / "metrics.json").read_text())
  theirs = json.loads((reference / "metrics.json").read_text())
  assert ours["members"][0]["best_step"] == theirs["members"][0]["best_step"]
  for key in ("i2t_map", "t2i_map", "avg_map"):
    assert ours["test"][key] == pytest.approx(theirs["test"][key], abs=1e-6)
  # Same parameters: the same embeddings from both best checkpoints.
  p_ours = mscross.load(str(workdir)).params
  p_ref = mscross.load(str(reference)).params
  for a, b in zip(_leaves(p_ours), _leaves(p_ref), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_sigkill_then_rerun_resumes_to_the_same_parameters(tmp_path, reference):
  workdir = tmp_path / "killed"
  proc = start(workdir)
  wait_for_checkpoint(proc, workdir)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  if not (workdir / "metrics.json").exists():
    killed_at = max(saved_steps(workdir))
    assert killed_at < STEPS
  else:  # pragma: no cover - the machine was faster than the poll; nothing to resume
    pytest.skip("the run finished before it could be killed")
  finish_and_compare(workdir, reference, killed_at)


def test_sigterm_saves_state_before_exiting(tmp_path, reference):
  workdir = tmp_path / "terminated"
  proc = start(workdir)
  wait_for_checkpoint(proc, workdir)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  if proc.returncode == 0:  # pragma: no cover
    pytest.skip("the run finished before the signal arrived")
  assert proc.returncode == 130, err[-2000:]
  assert "interrupted" in err and "Traceback" not in err
  history = [json.loads(line) for line in (workdir / "history.jsonl").read_text().splitlines()]
  # The state at the signal was saved, even off the checkpoint_every grid.
  assert max(saved_steps(workdir)) == history[-1]["step"]
  finish_and_compare(workdir, reference, history[-1]["step"])
