"""mscross.load on a finished run: quiet when all is well, a clear error when it is not."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO

import mscross
from mscross.errors import CheckpointError
from mscross.retrieval import evaluate
from mscross.runs import layout


def test_loading_a_finished_run_prints_nothing(trained_run):
  workdir, _ = trained_run
  code = f"import mscross; m = mscross.load({workdir!r}); print(m.step)"
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == "", proc.stderr  # no warning of the checkpoint library's
  assert int(proc.stdout) > 0


def test_a_damaged_checkpoint_is_still_reported(trained_run, tmp_path):
  workdir, _ = trained_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  best = copy / layout.CHECKPOINTS / "best"
  for root, _, files in os.walk(best):
    for name in files:
      if "state" in root.split(os.sep):
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"not a checkpoint")
  with pytest.raises(CheckpointError, match="best checkpoint"):
    mscross.load(str(copy))


def test_members_and_their_best_steps(trained_run):
  workdir, result = trained_run
  model = mscross.load(workdir)
  assert model.step == result["members"][0]["best_step"] and model.modalities == ("left", "right")
  with pytest.raises(CheckpointError, match="member 1 does not exist"):
    mscross.load(workdir, member=1)


def test_the_eval_report_shows_the_game_at_the_reported_step(trained_run, tmp_path):
  workdir, _ = trained_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  evaluate.evaluate_workdir(str(copy), split="validation", report=True)
  with open(copy / "report_validation" / "report.json") as f:
    game = json.load(f)["game"]
  with open(copy / layout.HISTORY) as f:
    evals = [r for r in map(json.loads, f) if "val_disc_acc" in r]
  best = mscross.load(str(copy)).step
  assert game["chance"] == 0.5 and game["last"]["step"] == evals[-1]["step"]
  assert game["best"] == {
    "step": best,
    **{k: r[k] for r in evals if r["step"] == best for k in ("val_disc_acc", "lambda", "loss_adv")},
  }
