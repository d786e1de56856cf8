"""Tests of mscross.training.runlog: history.jsonl gets one JSON line per record and TensorBoard
the finite float values, a resumed log drops the records after its step (and a line cut off
mid-write), config changes are recorded, a disabled log writes nothing, metrics.json is written
whole, the summary it holds (members, and mean and std over those with a selected state), and
the process's age is plausible."""

import json
import math
import os
import shutil
import struct
import subprocess
import time

import numpy as np
import pytest
from helpers import small_config, spec_of
from tensorboardX.proto import event_pb2

from mscross.runs import layout
from mscross.training import plan as plan_lib
from mscross.training import runlog
from mscross.training.selection import Tracker


def history(workdir):
  with open(os.path.join(workdir, "history.jsonl")) as f:
    return f.read().splitlines()


def tensorboard_scalars(workdir):
  """{(tag, step): value} of every scalar in the workdir's event files, read from the TFRecord
  framing directly: [length u64][crc u32][event][crc u32]."""
  folder = os.path.join(workdir, "tensorboard")
  scalars = {}
  for name in os.listdir(folder):
    assert name.startswith("events.out.tfevents."), name
    with open(os.path.join(folder, name), "rb") as f:
      raw = f.read()
    pos = 0
    while pos < len(raw):
      (length,) = struct.unpack("<Q", raw[pos : pos + 8])
      event = event_pb2.Event.FromString(raw[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        scalars[value.tag, event.step] = value.simple_value
  return scalars


RECORDS = [
  {"step": 10, "member": 0, "loss": 0.5, "val_avg_map": 0.25, "evals": 3, "gap": float("nan")},
  {"step": 10, "member": 1, "loss": 1.5, "val_avg_map": 0.75, "evals": 3, "gap": float("inf")},
  {"step": 20, "member": 0, "loss": 0.125, "val_avg_map": 0.5, "evals": 4, "gap": 2.0},
  {"step": 20, "member": 1, "loss": 1.25, "val_avg_map": 0.625, "evals": 4, "gap": -1.0},
]


def same_record(a, b):
  """Equal dicts, NaN equal to NaN."""
  both_nan = lambda x, y: isinstance(x, float) and math.isnan(x) and math.isnan(y)
  return a.keys() == b.keys() and all(a[k] == b[k] or both_nan(a[k], b[k]) for k in a)


def test_records_go_to_history_and_tensorboard(tmp_path):
  with runlog.RunLog(str(tmp_path), 0) as log:
    log.write(RECORDS[:2], size=2)
    # Flushed at every write: a crash loses no finished evaluation.
    assert len(history(tmp_path)) == 2
    log.write(RECORDS[2:], size=2)
  lines = history(tmp_path)
  assert len(lines) == len(RECORDS)
  for line, record in zip(lines, RECORDS, strict=True):
    assert same_record(json.loads(line), record), line
  # Per member, "val_" as a TensorBoard section; neither ints nor non-finite values.
  assert tensorboard_scalars(tmp_path) == {
    ("loss/member0", 10): 0.5,
    ("loss/member1", 10): 1.5,
    ("val/avg_map/member0", 10): 0.25,
    ("val/avg_map/member1", 10): 0.75,
    ("loss/member0", 20): 0.125,
    ("loss/member1", 20): 1.25,
    ("val/avg_map/member0", 20): 0.5,
    ("val/avg_map/member1", 20): 0.625,
    ("gap/member0", 20): 2.0,
    ("gap/member1", 20): -1.0,
  }


def test_single_member_tags_have_no_member_suffix(tmp_path):
  with runlog.RunLog(str(tmp_path), 0) as log:
    log.write([{"step": 5, "member": 0, "loss": 0.5, "val_i2t_map": 0.25}], size=1)
  assert tensorboard_scalars(tmp_path) == {("loss", 5): 0.5, ("val/i2t_map", 5): 0.25}


def test_resume_drops_later_records_and_a_cut_off_line(tmp_path):
  lines = [json.dumps(r) for r in RECORDS] + [
    json.dumps({"step": 30, "member": 0, "loss": 0.1}),
    json.dumps({"note": "no step"}),
    '{"step": 4, "member": 0, "lo',  # the process died mid-write
  ]
  with open(tmp_path / "history.jsonl", "w") as f:
    f.write("\n".join(lines))
  with runlog.RunLog(str(tmp_path), 20) as log:
    # Truncated on opening, before anything is written.
    assert history(tmp_path) == lines[:4] + [lines[5]]
    log.write([{"step": 30, "member": 0, "loss": 0.2}], size=1)
  assert history(tmp_path) == lines[:4] + [
    lines[5],
    json.dumps({"step": 30, "member": 0, "loss": 0.2}),
  ]
  assert sorted(os.listdir(tmp_path)) == ["history.jsonl", "tensorboard"]


def test_resume_keeps_every_record_up_to_its_step(tmp_path):
  text = "".join(json.dumps(r) + "\n" for r in RECORDS)
  (tmp_path / "history.jsonl").write_text(text)
  with runlog.RunLog(str(tmp_path), 20):
    pass
  assert (tmp_path / "history.jsonl").read_text() == text
  with runlog.RunLog(str(tmp_path), 19):
    pass
  assert history(tmp_path) == [json.dumps(r) for r in RECORDS[:2]]
  with runlog.RunLog(str(tmp_path), 0):
    pass
  assert history(tmp_path) == []


def test_config_change_record(tmp_path):
  with runlog.RunLog(str(tmp_path), 40) as log:
    log.config_change(40, [("train.steps", 40, 80), ("train.eval_every", 10, 20)])
  assert [json.loads(line) for line in history(tmp_path)] == [
    {"step": 40, "config_change": {"train.steps": [40, 80], "train.eval_every": [10, 20]}}
  ]
  # No scalar was logged: TensorBoard, which is slow to import, was never opened.
  assert not (tmp_path / "tensorboard").exists()


def test_disabled_log_writes_nothing(tmp_path):
  # Even a history with records after the step is left as it is: process 0 owns it.
  text = "".join(json.dumps(r) + "\n" for r in RECORDS)
  (tmp_path / "history.jsonl").write_text(text)
  with runlog.RunLog(str(tmp_path), 10, enabled=False) as log:
    log.write(RECORDS, size=2)
    log.config_change(10, [("train.steps", 40, 80)])
  assert os.listdir(tmp_path) == ["history.jsonl"]
  assert (tmp_path / "history.jsonl").read_text() == text
  empty = tmp_path / "empty"
  empty.mkdir()
  with runlog.RunLog(str(empty), 0, enabled=False) as log:
    log.write(RECORDS, size=2)
  assert os.listdir(empty) == []


def test_write_metrics_sorted_indented_and_whole(tmp_path):
  (tmp_path / "metrics.json").write_text("old")
  result = {"test": {"i2t_map": 0.5, "avg_map": 0.25}, "best_step": [30, 40], "config": {}}
  layout.write_metrics(str(tmp_path), result)
  text = (tmp_path / "metrics.json").read_text()
  assert json.loads(text) == result
  assert text.splitlines()[:5] == [
    "{",
    '  "best_step": [',
    "    30,",
    "    40",
    "  ],",
  ]
  assert text.index('"avg_map"') < text.index('"i2t_map"')
  assert os.listdir(tmp_path) == ["metrics.json"]
  # A result that cannot be written leaves the previous one, and nothing beside it.
  with pytest.raises(TypeError):
    layout.write_metrics(str(tmp_path), {"bad": object()})
  assert (tmp_path / "metrics.json").read_text() == text
  assert os.listdir(tmp_path) == ["metrics.json"]


# ----------------------------------------------------------------------------------------------
# metrics.json summary
# ----------------------------------------------------------------------------------------------


def test_final_result_of_a_population():
  config = small_config(
    "acmr",
    {"seed": 7, "population.size": 3, "population.hparams": '{"optim.lr": [0.001, 0.002, 0.004]}'},
  )
  plan = plan_lib.resolve(config, spec_of(("a", "b")))
  tracker = Tracker.start(3, patience=0)
  tracker, _ = tracker.update(10, [0.2, float("nan"), 0.1])
  tracker, _ = tracker.update(20, [0.3, float("nan"), 0.05])
  tracker = tracker.stop([False, True, False], "diverged").finish()
  nan = float("nan")
  scored = {
    "validation": [
      {"avg_map": 0.3, "i2t_map": 0.2},
      {"avg_map": nan, "i2t_map": nan},
      {"avg_map": 0.1, "i2t_map": 0.4},
    ],
    "test": [{"avg_map": 0.25}, {"avg_map": nan}, {"avg_map": 0.15}],
  }
  got = runlog.final_result(
    plan, tracker, scored, steps=20, skipped=[0, 5, 1], train_seconds=1.23456, startup_seconds=None
  )
  assert got["method"] == "acmr" and got["dataset"] == config.data.name
  assert got["modalities"] == ["a", "b"] and got["labelled"] is True
  assert got["steps"] == 20 and got["max_steps"] == 50 and got["population"] == 3
  assert got["select_metric"] == "avg_map"
  assert got["train_seconds"] == 1.235 and got["startup_seconds"] is None
  members = got["members"]
  assert [m["member"] for m in members] == [0, 1, 2]
  assert [m["seed"] for m in members] == [7, 8, 9]
  np.testing.assert_allclose([m["optim.lr"] for m in members], [0.001, 0.002, 0.004], rtol=1e-6)
  assert [m["best_step"] for m in members] == [20, -1, 10]
  assert [m["stopped"] for m in members] == ["cap", "diverged", "cap"]
  assert [m["skipped_steps"] for m in members] == [0, 5, 1]
  assert members[2]["val"] == {"avg_map": 0.1, "i2t_map": 0.4}
  assert members[0]["test"] == {"avg_map": 0.25}
  # Member 1 never reached an evaluation with a score: it has no selected state to average.
  np.testing.assert_allclose(got["val"]["avg_map"], 0.2)
  np.testing.assert_allclose(got["val_std"]["avg_map"], math.sqrt(0.02))
  np.testing.assert_allclose(got["val"]["i2t_map"], 0.3)
  np.testing.assert_allclose(got["test"]["avg_map"], 0.2)
  np.testing.assert_allclose(got["test_std"]["avg_map"], math.sqrt(0.005))
  # The summary is what metrics.json holds: it must be writable as JSON.
  json.dumps(got)


def test_final_result_without_test_split_or_selected_state():
  config = small_config("acmr", {"population.size": 2})
  plan = plan_lib.resolve(config, spec_of(("a", "b")))
  tracker = Tracker.start(2, patience=0).stop([True, True], "diverged")
  scored = {"validation": [{"avg_map": float("nan")}] * 2}
  got = runlog.final_result(
    plan, tracker, scored, steps=3, skipped=[3, 3], train_seconds=0.5, startup_seconds=2.0004
  )
  assert "test" not in got["members"][0]
  # No member has a selected state: nothing to average.
  assert not {"val", "val_std", "test", "test_std"} & set(got)
  assert [m["seed"] for m in got["members"]] == [config.seed, config.seed + 1]
  assert "optim.lr" not in got["members"][0]  # only the values that differ between members
  assert got["startup_seconds"] == 2.0


# ----------------------------------------------------------------------------------------------
# Process age
# ----------------------------------------------------------------------------------------------


def uptime():
  with open("/proc/uptime") as f:
    return float(f.read().split()[0])


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_process_age_is_plausible():
  age = runlog.process_age()
  assert isinstance(age, float)
  assert 0 < age < uptime()
  if shutil.which("ps"):
    # ps counts whole seconds.
    out = subprocess.run(
      ["ps", "-o", "etimes=", "-p", str(os.getpid())], capture_output=True, text=True, check=True
    )
    assert abs(age - int(out.stdout)) < 2.5, (age, out.stdout)
  # It grows with the wall clock.
  time.sleep(0.05)
  assert runlog.process_age() > age


def test_process_age_without_proc(monkeypatch):
  def no_proc(*args, **kwargs):
    raise OSError("no /proc here")

  real = runlog.process_age()
  monkeypatch.setattr(runlog, "open", no_proc, raising=False)
  age = runlog.process_age()
  # Then measured from the import of mscross, later than the process started.
  assert isinstance(age, float)
  assert 0 < age < real + 0.5
  assert runlog.process_age() > age


def test_a_last_line_cut_off_before_its_newline_is_dropped_on_resume(tmp_path):
  # The cut-off line parses as JSON; kept, the next record would be glued onto it.
  path = tmp_path / "history.jsonl"
  path.write_text('{"step": 10}\n{"step": 20, "loss": 2.0}')
  with runlog.RunLog(str(tmp_path), 20) as log:
    log.write([{"step": 30, "member": 0, "loss": 3.0}], 1)
  lines = path.read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [10, 30]
