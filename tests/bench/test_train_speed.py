"""bench/train_speed.py runs: its quick mode's JAX sections on tiny models, one tiny train.py
process, and the report of the process sections on canned figures. With PyTorch installed, the
reference computes the same loss as mscross. The sections are modules beside it in bench/ (a
script's own folder is on its import path); the test puts bench/ there to load them.

Only that the code works is checked here; speed is the benchmark's business, not a test's.
"""

import json
import sys

import pytest
from helpers import bench_module

from mscross import presets


@pytest.fixture(scope="module")
def bench():
  """bench/train_speed.py as a module; its sections as `bench.dscmr`, `bench.populations`,
  `bench.processes`, and `bench.workloads`, `bench.timing`."""
  with bench_module("train_speed") as module:
    module.timing = sys.modules["speed_timing"]
    module.workloads = sys.modules["speed_workloads"]
    yield module


def tiny_config(method: str):
  """`method`'s Wikipedia preset with layers small enough to compile in a second or two."""
  c = presets.build(method, "wikipedia")
  if method == "dscmr":
    c.model.encoder_width = 16
    c.model.shared_layers = (8,)
  else:
    c.model.encoder_layers = (8,)
    c.model.encoder_width = 8
    if c.model.shared_layers:
      c.model.shared_layers = (8, 8)
    c.disc.layers = (4,)
  c.train.batch_size = 4
  return c


def tiny_problem(bench):
  return bench.workloads.random_problem(num_pairs=12, d_img=6, d_txt=5, num_classes=3)


def test_dscmr_preset_check_and_flops(bench):
  assert bench.dscmr.check_dscmr_preset(presets.build("dscmr", "wikipedia")) == []
  assert bench.dscmr.check_dscmr_preset(tiny_config("dscmr"))  # the tiny layers are departures
  flops = bench.dscmr.dscmr_step_flops(100, 128, 10, 2048, 1024, 10)
  assert flops["total"] == pytest.approx(2.83e9, rel=0.01)


def test_timing_helpers(bench):
  stats = bench.timing.summarise(2, [(0.5, 1.0), (1.0, 1.0), (2.0, 1.0)])
  assert stats["median"] == pytest.approx(2.0)
  assert stats["per_cpu_s"] == pytest.approx(2.0)
  calls = []
  timing = bench.timing
  runners = [timing.Runner(name, lambda n, name=name: calls.append((name, n))) for name in "ab"]
  times = timing.interleaved_repeats(runners, [3, 4], repeats=2, warmup=False)
  assert [len(t) for t in times] == [2, 2]
  # Round 1 starts with the second workload.
  assert calls == [("a", 3), ("b", 4), ("b", 4), ("a", 3)]
  with timing.CpuMeter("both") as meter:
    sum(range(10_000))
  assert meter.result["wall_s"] > 0 and "loadavg_after" in meter.result


def test_quick_jax_sections_write_the_report(bench, tmp_path, monkeypatch):
  monkeypatch.setattr(bench.workloads, "preset", tiny_config)
  monkeypatch.setattr(bench.dscmr, "check_dscmr_preset", lambda config: [])
  monkeypatch.setattr(bench, "NUM_PAIRS", 40)
  args = ["--quick", "--sections", "1,2", "--methods", "dscmr", "--sizes", "1,2"]
  out = bench.main([*args, "--out", str(tmp_path)])
  rows = out["populations"]["rows"]
  assert set(rows) == {"dscmr/P=1", "dscmr/P=2"}
  assert rows["dscmr/P=1"]["speedup_over_p1"] == pytest.approx(1.0)
  assert rows["dscmr/P=2"]["model_steps_per_s"]["median"] > 0
  # Both members of the population trained, as many steps each.
  steps = rows["dscmr/P=2"]["member_steps"]
  assert len(steps) == 2 and steps[0] == steps[1] > 0
  report = (tmp_path / "train_speed.md").read_text()
  assert "## 1. DSCMR-sized model" in report and "## 2. Populations" in report
  assert json.loads((tmp_path / "train_speed.json").read_text())["settings"]["quick"]


@pytest.mark.slow
def test_train_py_process_on_synthetic_features(bench, tmp_path, monkeypatch):
  monkeypatch.delenv("MSCROSS_DATA_DIR", raising=False)
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path / "cache"))
  processes = bench.processes
  data = processes.run_data(tmp_path)
  assert data.name == "features"
  train = processes.prepared_train_split(processes.run_config("dscmr", data))
  assert train.features["image"].shape[1] == bench.workloads.WIKI_D_IMG
  run = processes.train_py(
    "dscmr",
    data,
    steps=2,
    population_size=2,
    workdir=tmp_path / "run",
    jax_cache=tmp_path / "jax",
    extra_flags=("--config.model.encoder_width=16",),
  )
  assert run["steps"] == 2 and run["population"] == 2
  assert 0 < run["startup_s"] <= run["wall_s"]
  assert any((tmp_path / "jax").iterdir())  # the compilation cache was written


def _fake_run(method, data, *, steps, population_size, workdir, jax_cache, **kw):
  wall = 10.0 + population_size
  return {
    "method": method,
    "population": population_size,
    "steps": steps,
    "compilation_cache": kw.get("compilation_cache", True),
    "wall_s": wall,
    "cpu_s": wall,
    "startup_s": 2.5 if "warm" in workdir.name else 8.0,
    "train_s": 1.0,
    "test_avg_map": 0.5,
    "cpu": {"wall_s": wall, "loadavg_after": [1.0, 1.0, 1.0], "own_cores": 1.0},
  }


def test_process_sections_report_targets(bench, tmp_path, monkeypatch):
  processes = bench.processes
  monkeypatch.setattr(processes, "train_py", _fake_run)
  monkeypatch.setattr(
    processes, "python_c", lambda code: {"code": code, "wall_s": 1.0, "cpu_s": 1.0}
  )
  problem = tiny_problem(bench)
  monkeypatch.setattr(processes, "prepared_train_split", lambda config: problem.split())
  monkeypatch.setattr(processes, "run_config", lambda method, data: tiny_config(method))
  args = bench.parse_args(["--quick", "--methods", "mnsgan,dscmr", "--dscmr-steps", "3"])
  data = processes.RunData("wikipedia", (), "test data")
  out = {}
  lines, targets = processes.section_time_to_model(args, out, data, tmp_path)
  more, startup = processes.section_startup(args, out, data, tmp_path)
  names = [t["target"] for t in targets + startup]
  assert any(processes.TARGET_GAN_SEEDS in n for n in names)
  assert any(processes.TARGET_STARTUP in n for n in names)
  gan = next(t for t in targets if processes.TARGET_GAN_SEEDS in t["target"])
  assert gan["met"]  # 15 s against 11 s
  assert startup[0]["met"]  # 2.5 s
  has_torch = bench.dscmr.torch is not None
  assert any(processes.TARGET_DSCMR_FIVE in n for n in names) == has_torch
  report = "\n".join(lines + more + bench.target_lines(targets + startup))
  assert "| mnsgan | 5 | 100 |" in report and "**MET**" in report
  json.dumps(out, default=bench._json)


def test_loss_agreement_with_pytorch(bench):
  pytest.importorskip("torch")
  problem = tiny_problem(bench)
  config = tiny_config("dscmr")
  agreement = bench.dscmr.loss_agreement(config, problem)
  assert agreement["abs_diff"] < 1e-4 * max(1.0, abs(agreement["torch"]))
  bench.dscmr.torch_step(config, problem, threads=1).run(2)
  ref = bench.dscmr.torch_reference_runs(config, problem.split(), steps=4, seeds=[0, 1])
  assert len(ref["walls_s"]) == 2
