"""train.py and eval.py as a user runs them: real subprocesses on tiny runs."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, TINY_FLAGS

from mscross import presets

TINY = list(TINY_FLAGS)


def run(*args, cwd=REPO):
  return subprocess.run(
    [sys.executable, *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONUNBUFFERED": "1"},
  )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  wd = tmp_path_factory.mktemp("cli") / "run"
  proc = run("train.py", "--config", "configs/default.py", "--workdir", str(wd), *TINY)
  assert proc.returncode == 0, proc.stderr[-2000:]
  last = json.loads(proc.stdout.strip().splitlines()[-1])
  assert {"test_i2t_map", "test_t2i_map", "test_avg_map"} <= set(last)
  return wd


def test_train_writes_config_metrics_and_checkpoints(workdir):
  config = json.loads((workdir / "config.json").read_text())
  # The command-line override reached the resolved config.
  assert config["train"]["steps"] == 20 and config["model"]["encoder_layers"] == [32]
  # train.py built the config this process builds: it read the tests' tuned-presets folder too.
  here = presets.build("mnsgan", "digits_halves")
  assert (config["optim"]["lr"], config["adv"]["weight"]) == (here.optim.lr, here.adv.weight)
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["steps"] == 20
  assert (workdir / "checkpoints" / "best").is_dir()


def test_eval_prints_the_metrics_json_numbers(workdir, tmp_path):
  proc = run("eval.py", "--workdir", str(workdir), "--export", str(tmp_path / "emb"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  printed = json.loads(proc.stdout.strip().splitlines()[-1])
  metrics = json.loads((workdir / "metrics.json").read_text())
  for key, value in metrics["test"].items():
    assert abs(printed[key] - value) <= 1e-6, key
  assert sorted(os.listdir(tmp_path / "emb")) == [
    "emb_left.npy",
    "emb_right.npy",
    "ids.npy",
    "labels.npy",
  ]


def test_eval_scores_runs_given_together_as_one_ensemble(workdir):
  proc = run("eval.py", "--workdir", str(workdir), "--workdir", str(workdir), "--ensemble")
  assert proc.returncode == 0, proc.stderr[-2000:]
  printed = json.loads(proc.stdout.strip().splitlines()[-1])
  metrics = json.loads((workdir / "metrics.json").read_text())
  # The same model twice: the mean of two equal cosines ranks as one, up to float32 rounding of
  # the concatenated embeddings, which may swap a near-tie.
  assert abs(printed["avg_map"] - metrics["test"]["avg_map"]) <= 1e-5
  assert [m["member"] for m in printed["ensemble"]] == [0, 0]


def test_rerun_of_a_finished_run_trains_nothing(workdir):
  before = (workdir / "history.jsonl").read_text()
  proc = run("train.py", "--config", "configs/default.py", "--workdir", str(workdir), *TINY)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (workdir / "history.jsonl").read_text() == before


def test_eval_on_a_workdir_without_a_run_is_one_line_error(tmp_path):
  proc = run("eval.py", "--workdir", str(tmp_path))
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error:")
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
  "override",
  ["--config.no_such_key=3", "--config.train.steps=many", "--no_such_flag", "--config.eval.ks=1"],
)
def test_bad_flags_are_one_line_errors(override, tmp_path):
  proc = run("train.py", "--workdir", str(tmp_path / "w"), override)
  assert proc.returncode == 2
  assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()
  if override.startswith("--config.eval.ks"):  # a key renamed since: the error names the new one
    assert "eval.ks, which mscross now calls eval.precision_ks" in proc.stderr


def test_unknown_method_is_a_one_line_error(tmp_path):
  proc = run("train.py", "--workdir", str(tmp_path / "w"), "--config.method=gan9000")
  assert proc.returncode == 2
  assert "unknown method 'gan9000'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_saved_json_config_trains_like_its_python_preset(workdir, tmp_path):
  """train.py --config <workdir>/config.json (what tune.py's best_config.json is) rebuilds the
  same run."""
  again = tmp_path / "again"
  proc = run("train.py", "--config", str(workdir / "config.json"), "--workdir", str(again))
  assert proc.returncode == 0, proc.stderr[-2000:]
  first = json.loads((workdir / "metrics.json").read_text())
  second = json.loads((again / "metrics.json").read_text())
  assert second["test"]["avg_map"] == pytest.approx(first["test"]["avg_map"], abs=1e-6)


def test_config_file_arguments_choose_method_and_dataset(tmp_path):
  proc = run(
    "train.py",
    "--config",
    "configs/default.py:method=dscmr,dataset=digits_halves,labels=false",
    "--workdir",
    str(tmp_path / "w"),
    "--config.train.steps=10",
    "--config.train.eval_every=10",
    "--config.model.encoder_width=32",
    "--config.model.shared_layers=(16,)",
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
  assert metrics["method"] == "dscmr" and metrics["labelled"] is False
  # Instance-level retrieval: recall and ranks, and mAP = MRR.
  assert {"i2t_r@1", "t2i_r@10", "avg_median_rank", "avg_mrr"} <= set(metrics["test"])
  assert metrics["test"]["avg_map"] == pytest.approx(metrics["test"]["avg_mrr"])
  bad = run("train.py", "--config", "configs/default.py:method=gan9000", "--workdir", str(tmp_path))
  assert bad.returncode == 2 and "gan9000" in bad.stderr and "Traceback" not in bad.stderr
