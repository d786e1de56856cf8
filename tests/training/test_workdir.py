"""A training workdir has one writer, keeps the config it was started with, and is never touched
by a run that is refused: real train.py and eval.py processes on the embedded digits_halves
dataset (two concurrent runs, resumes with another config, kill -9 and rerun, evaluation during
training, an input transform that makes the data non-finite), plus unit tests of
`mscross.training.workdir`."""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from helpers import REPO

from mscross import data, dotted
from mscross.errors import ConfigError, DataError
from mscross.runs import inputs, layout, lock
from mscross.training import resume

# Every run of the module compiles the same programs, so the compilation cache serves them all.
STEPS, EVERY = 2000, 500


def train_args(config="configs/default.py", **overrides):
  """train.py's arguments: a tiny model; `overrides` replace `--config.<key>` values (a repeated
  flag of a tuple key would append to the first, not replace it)."""
  values = {
    "train.steps": STEPS,
    "train.eval_every": EVERY,
    "train.checkpoint_every": EVERY,
    "model.encoder_layers": "(32,)",
    "model.encoder_width": 16,
  }
  values.update({key.replace("__", "."): value for key, value in overrides.items()})
  return ["--config", config, *(f"--config.{k}={v}" for k, v in values.items())]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  caches = tmp_path_factory.mktemp("caches")
  return {
    **os.environ,
    # One prepared dataset and one compilation cache for the whole module, none shared with
    # other runs on the machine.
    "MSCROSS_CACHE_DIR": str(caches / "data"),
    "MSCROSS_JAX_CACHE_DIR": str(caches / "jax"),
    "PYTHONUNBUFFERED": "1",
  }


def start(env, workdir, *args, script="train.py"):
  args = args or tuple(train_args())
  return subprocess.Popen(
    [sys.executable, script, "--workdir", str(workdir), *args],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def finish(proc, timeout=300):
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"{proc.args[1]} did not finish in {timeout}s: {err[-2000:]}")
  return proc.returncode, out, err


def run(env, workdir, *args, script="train.py", timeout=300):
  return finish(start(env, workdir, *args, script=script), timeout)


def the_error_line(err):
  """The one line a refused command prints (the dataset is prepared by then, so nothing else)."""
  assert "Traceback" not in err, err[-3000:]
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
  return lines[0]


def history(workdir):
  path = Path(workdir) / "history.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]


def step_records(workdir):
  return [r for r in history(workdir) if "config_change" not in r]


def steps_in(directory):
  directory = Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def snapshot(workdir):
  """{relative path: bytes} of every file in the workdir but the lock file, which holds the pid
  of the last process that took the lock, refused or not."""
  root = Path(workdir)
  return {
    str(p.relative_to(root)): p.read_bytes()
    for p in sorted(root.rglob("*"))
    if p.is_file() and p.name != layout.LOCK_FILE
  }


def wait_for(condition, proc, what, timeout=240):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return
    if proc.poll() is not None:
      _, err = proc.communicate()
      pytest.fail(f"train.py ended before {what}: {err[-2000:]}")
    time.sleep(0.02)
  proc.kill()
  pytest.fail(f"no {what} within {timeout}s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
  """A lone, uninterrupted run. It also prepares the dataset and fills the compilation cache,
  so later commands print nothing but their own result."""
  workdir = tmp_path_factory.mktemp("lone")
  rc, out, err = run(env, workdir)
  assert rc == 0, err[-3000:]
  assert json.loads(out.splitlines()[-1])["workdir"] == str(workdir)
  return workdir


# Two writers.


def test_second_train_on_a_busy_workdir_is_refused_at_once(tmp_path, env, reference):
  workdir = tmp_path / "shared"
  first = start(env, workdir)
  try:
    wait_for(lambda: steps_in(workdir / "checkpoints" / "latest"), first, "a first checkpoint")
    # Paused mid-run, lock held and files open, for as long as the second takes to start however
    # slow the machine: a second that waited for the lock would time out here.
    first.send_signal(signal.SIGSTOP)
    try:
      before = snapshot(workdir)
      rc, out, err = run(env, workdir, timeout=120)
      # The first writes nothing while paused: any change is the second's.
      after = snapshot(workdir)
    finally:
      first.send_signal(signal.SIGCONT)
  finally:
    rc1, _, err1 = finish(first)
  assert rc == 2 and out == ""
  line = the_error_line(err)
  assert f"is being trained by process {first.pid}" in line and str(workdir) in line
  assert after == before

  # The first run is unharmed: everything it wrote is what a lone run of the command writes.
  assert rc1 == 0, err1[-3000:]
  # Even the lock file: the second never got the lock, so never wrote its pid.
  assert (workdir / layout.LOCK_FILE).read_text().strip() == str(first.pid)
  ours, lone = step_records(workdir), step_records(reference)
  lines = (workdir / "history.jsonl").read_text().splitlines()
  assert len(lines) == len(set(lines)) == len(ours)
  assert [r["step"] for r in ours] == [r["step"] for r in lone]
  assert [r["step"] for r in ours] == list(range(EVERY, STEPS + 1, EVERY))
  for a, b in zip(ours, lone, strict=True):
    assert a["val_avg_map"] == pytest.approx(b["val_avg_map"], abs=1e-6)
  m_ours = json.loads((workdir / "metrics.json").read_text())
  m_lone = json.loads((reference / "metrics.json").read_text())
  assert m_ours["members"][0]["best_step"] == m_lone["members"][0]["best_step"]
  for key, value in m_lone["test"].items():
    assert m_ours["test"][key] == pytest.approx(value, abs=1e-6), key
  for which in ("latest", "best"):
    assert steps_in(workdir / "checkpoints" / which) == steps_in(reference / "checkpoints" / which)
  # One writer of the event file: a second writer would have opened another.
  assert len(list((workdir / "tensorboard").iterdir())) == 1


# Resuming with another config.


@pytest.mark.parametrize(
  "args, key, new",
  [
    (train_args("configs/default.py:method=acmr"), "method", '"acmr"'),
    (train_args(optim__lr=0.003), "optim.lr", "0.003"),
    (train_args(model__encoder_layers="(64,)"), "model.encoder_layers", "[64]"),
  ],
  ids=["method", "lr", "architecture"],
)
def test_resume_with_another_config_is_refused_with_the_diff(
  tmp_path, env, reference, args, key, new
):
  workdir = tmp_path / "run"
  # A copy of a finished run, whose config.json the command below differs from.
  shutil.copytree(reference, workdir)
  before = snapshot(workdir)
  # The old value as the run stored it: the default config carries any shipped tuned preset.
  stored = dotted.get(json.loads((workdir / "config.json").read_text()), key)
  rc, out, err = run(env, workdir, *args)
  assert rc == 2 and out == ""
  line = the_error_line(err)
  assert f"{key}: {json.dumps(stored)} -> {new}" in line
  assert "--allow_config_change" in line and "new --workdir" in line
  assert snapshot(workdir) == before


def test_allowed_config_change_continues_and_is_recorded(tmp_path, env, reference):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  old_history = (workdir / "history.jsonl").read_text()
  old_lr = layout.read_config(str(workdir)).optim.lr
  more = STEPS + EVERY
  # train.steps is safe to change; optim.lr is not, and is what the flag allows.
  args = train_args(optim__lr=0.003, train__steps=more)
  rc, _, err = run(env, workdir, *args, "--allow_config_change")
  assert rc == 0, err[-3000:]

  # Appended to, never rewritten: the change, then the steps trained under it.
  text = (workdir / "history.jsonl").read_text()
  assert text.startswith(old_history)
  added = [json.loads(line) for line in text[len(old_history) :].splitlines()]
  # Every change is recorded, the safe ones (train.steps) too.
  assert added[0] == {
    "step": STEPS,
    "config_change": {"optim.lr": [old_lr, 0.003], "train.steps": [STEPS, more]},
  }
  assert [r["step"] for r in added[1:]] == [more]
  stored = layout.read_config(str(workdir))
  assert stored.optim.lr == 0.003 and stored.train.steps == more
  assert json.loads((workdir / "metrics.json").read_text())["steps"] == more

  # The workdir's config is now the changed one: the same command needs no flag any more.
  rc, _, err = run(env, workdir, *args)
  assert rc == 0, err[-3000:]
  assert (workdir / "history.jsonl").read_text() == text


def test_allowed_change_the_checkpoints_cannot_take_leaves_the_workdir_as_it_was(
  tmp_path, env, reference
):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  before = snapshot(workdir)
  rc, _, err = run(
    env, workdir, *train_args(model__encoder_layers="(64,)"), "--allow_config_change"
  )
  assert rc == 2, err[-3000:]
  # One line in the project's words, not Orbax's traceback of mismatched arrays.
  assert err.count("error:") == 1 and "does not match the model" in err
  assert "Traceback" not in err and len(err.splitlines()) <= 3
  # Else config.json claims (64,) for checkpoints of (32,): the original command is refused.
  assert snapshot(workdir) == before


# A killed run.


def test_kill_9_leaves_no_stale_lock_and_the_rerun_resumes(tmp_path, env, reference):
  workdir = tmp_path / "killed"
  latest = workdir / "checkpoints" / "latest"
  proc = start(env, workdir)
  wait_for(lambda: steps_in(latest), proc, "a checkpoint in checkpoints/latest")
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  if (workdir / "metrics.json").exists():  # pragma: no cover - faster than the poll
    pytest.skip("the run finished before it could be killed")
  resumed_from = max(steps_in(latest))
  assert resumed_from < STEPS
  # The pid of the dead holder is still in the file, but nothing holds the lock.
  assert lock.holder_pid(str(workdir)) == proc.pid
  assert not lock.is_locked(str(workdir))

  rc, out, err = run(env, workdir)
  assert rc == 0, err[-3000:]
  assert "being trained" not in err
  steps = [r["step"] for r in step_records(workdir)]
  # No step trained twice: the rerun started from the checkpoint, not from scratch.
  assert steps == sorted(set(steps))
  assert [s for s in steps if s > resumed_from] == list(
    range(resumed_from + EVERY, STEPS + 1, EVERY)
  )
  assert json.loads(out.splitlines()[-1])["workdir"] == str(workdir)


# Evaluating while training.


def test_eval_reads_a_workdir_being_trained(tmp_path, env, reference):
  workdir = tmp_path / "training"
  best = workdir / "checkpoints" / "best"
  proc = start(env, workdir)
  try:
    wait_for(lambda: steps_in(best), proc, "a checkpoint in checkpoints/best")
    # Paused, not ended: it still holds the lock (and may be half-way through a save) for as
    # long as eval.py takes to start, however slow the machine.
    proc.send_signal(signal.SIGSTOP)
    rc, out, err = run(env, workdir, "--split", "test", script="eval.py")
  finally:
    proc.kill()
    proc.communicate()
  assert rc == 0, err[-3000:]
  result = json.loads(out.strip().splitlines()[-1])
  assert result["split"] == "test" and 0.0 <= result["avg_map"] <= 1.0
  assert result["step"] in steps_in(best)
  assert "Traceback" not in err
  assert f"is being trained by process {proc.pid}" in err
  assert f"newest complete best checkpoint (step {result['step']})" in err


# A transform that makes the data non-finite.


def test_non_finite_transform_stops_before_training(tmp_path, env, reference):
  workdir = tmp_path / "power"
  # The pixel halves hold zeros, and 0 ** -2 is infinite.
  rc, out, err = run(env, workdir, *train_args(data__power=-2))
  assert rc == 2 and out == ""
  line = the_error_line(err)
  assert "data.power=-2" in line and "modality 'left'" in line and "train data" in line
  # Nothing a later run would resume from or be compared with.
  assert sorted(p.name for p in workdir.iterdir()) == [layout.LOCK_FILE]


@pytest.mark.data("wikipedia/raw_features.mat", "wikipedia/trainset_txt_img_cat.list")
def test_non_finite_transform_on_wikipedia_names_the_per_modality_key(tmp_path, env, data_dir):
  workdir = tmp_path / "wiki"
  # The preset sets data.powers.image (BoVW histograms, full of zeros); data.power is the text's.
  args = train_args("configs/default.py:dataset=wikipedia", data__powers__image=-2)
  rc, out, err = run({**env, "MSCROSS_DATA_DIR": str(data_dir)}, workdir, *args)
  assert rc == 2 and '"workdir"' not in out
  assert "Traceback" not in err
  # The first use prepares the dataset (its progress on stderr); the error is the last line.
  line = err.strip().splitlines()[-1]
  assert line.startswith("error: ") and sum(x.startswith("error: ") for x in err.splitlines()) == 1
  assert "data.powers.image=-2" in line and "modality 'image'" in line
  assert sorted(p.name for p in workdir.iterdir()) == [layout.LOCK_FILE]


def test_normalizer_names_the_transform_and_the_modality():
  zeros = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
  split = data.Split(
    features={"a": zeros, "b": zeros + 1}, label=None, ids=np.array(["x", "y"]), class_names=()
  )
  with pytest.raises(DataError, match=r"data\.power=-2 .* modality 'a' .* train data"):
    inputs.Normalizer.fit(split, standardize=True, power=-2.0, powers={})
  with pytest.raises(DataError, match=r"data\.powers\.a=-0\.5 .* modality 'a'"):
    inputs.Normalizer.fit(split, standardize=True, power=1.0, powers={"a": -0.5})
  fitted = inputs.Normalizer.fit(split, standardize=True, power=-1.0, powers={"a": 1.0})
  # A zero seen first at transform time is caught there, naming where it was.
  with pytest.raises(DataError, match=r"data\.power=-1 .* modality 'b' .* test data"):
    fitted.transform("b", zeros, "test")
  # A NaN already in the input is the input's fault, not the transform's.
  with pytest.raises(DataError, match=r"modality 'a' in the input data are non-finite before"):
    fitted.transform("a", np.array([[np.nan, 1.0]], np.float32))


def test_normalizer_keeps_the_power_key_through_save_and_load(tmp_path):
  x = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)
  split = data.Split(
    features={"a": x, "b": x}, label=None, ids=np.array(["x", "y"]), class_names=()
  )
  fitted = inputs.Normalizer.fit(split, standardize=True, power=-1.0, powers={"a": 0.5})
  fitted.save(str(tmp_path / "t.npz"))
  loaded = inputs.Normalizer.load(str(tmp_path / "t.npz"))
  assert loaded.power_key == {"a": "data.powers.a", "b": "data.power"}
  np.testing.assert_array_equal(loaded.transform("b", x), fitted.transform("b", x))
  with pytest.raises(DataError, match=r"data\.power=-1 .* modality 'b'"):
    loaded.transform("b", np.zeros((1, 2), np.float32))


# Units of mscross.training.workdir.


def cfg(**values):
  c = ml_collections.ConfigDict()
  for name, value in values.items():
    node = c
    *path, last = name.split("__")
    for part in path:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
    node[last] = value
  return c


def test_config_diff_ignores_safe_keys_and_json_round_trips():
  stored = cfg(method="mnsgan", optim__lr=1e-3, model__layers=(32,), train__steps=100, seed=1)
  # train.steps is safe; a list for a tuple and 1.0 for 1 are how JSON gives them back.
  same = cfg(method="mnsgan", optim__lr=1e-3, model__layers=[32], train__steps=900, seed=1.0)
  assert resume.config_diff(stored, same) == []
  assert "train.steps" in resume.SAFE_TO_CHANGE
  other = cfg(method="acmr", optim__lr=3e-3, model__layers=(64,), train__steps=100, seed=1)
  assert resume.config_diff(stored, other) == [
    ("method", "mnsgan", "acmr"),
    ("model.layers", (32,), (64,)),
    ("optim.lr", 1e-3, 3e-3),
  ]
  # A key on one side only is a change too.
  extra = cfg(method="mnsgan", optim__lr=1e-3, model__layers=(32,), seed=1, loss__x__weight=1.0)
  assert [d[0] for d in resume.config_diff(stored, extra)] == ["loss.x.weight"]


def test_check_resume_lists_method_first_however_many_keys_differ(tmp_path):
  stored = cfg(method="mnsgan", **{f"loss__t{i}__weight": 1.0 for i in range(12)})
  layout.write_config(str(tmp_path), stored)
  new = cfg(method="acmr", **{f"loss__t{i}__weight": 2.0 for i in range(12)})
  with pytest.raises(ConfigError) as e:
    resume.check_resume(str(tmp_path), new, allow_change=False)
  message = str(e.value)
  # The listing is cut at eight keys; the one that matters most is never the one cut.
  assert 'method: "mnsgan" -> "acmr"' in message and "(and 5 more)" in message
  assert "\n" not in message
  diffs = resume.check_resume(str(tmp_path), new, allow_change=True)
  assert len(diffs) == 13
  assert resume.check_resume(str(tmp_path / "fresh"), new, allow_change=False) == []


def test_workdir_lock_is_exclusive_and_reusable(tmp_path):
  workdir = str(tmp_path / "wd")
  assert not lock.is_locked(workdir)
  with lock.WorkdirLock(workdir):
    assert lock.is_locked(workdir)
    assert lock.holder_pid(workdir) == os.getpid()
    # flock conflicts between two opens of the file, in one process as in two.
    with pytest.raises(lock.WorkdirBusy, match=f"by process {os.getpid()}"):
      with lock.WorkdirLock(workdir):
        pytest.fail("acquired a held lock")
    assert lock.holder_pid(workdir) == os.getpid()
  assert not lock.is_locked(workdir)
  with lock.WorkdirLock(workdir):
    assert lock.is_locked(workdir)


def test_workdir_lock_is_not_refused_by_a_reader_probing_it(tmp_path):
  workdir = str(tmp_path / "wd")
  with lock.WorkdirLock(workdir):
    pass
  # What is_locked does for eval.py, held for a moment: a trainer starting then must still start.
  probe = open(os.path.join(workdir, layout.LOCK_FILE))
  fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
  release = threading.Timer(0.05, probe.close)
  release.start()
  try:
    with lock.WorkdirLock(workdir):
      assert lock.holder_pid(workdir) == os.getpid()
  finally:
    release.join()
