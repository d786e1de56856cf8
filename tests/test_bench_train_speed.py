"""bench/train_speed.py runs: its workloads on a tiny DSCMR-shaped model, a couple of steps each.

Only that the code works is checked here; speed is the benchmark's business, not a test's.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from mscross import presets  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_speed.py"


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench_train_speed", BENCH)
  module = importlib.util.module_from_spec(spec)
  # dataclasses look their module up in sys.modules while the class body is processed.
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  yield module
  sys.modules.pop(spec.name, None)


def tiny_config():
  c = presets.build("dscmr", "wikipedia")
  c.model.img_layers = (16,)
  c.model.txt_layers = (16,)
  c.model.shared_layers = (8,)
  c.train.batch_size = 4
  return c


def test_tiny_workloads_run_and_agree(bench):
  problem = bench.random_problem(num_pairs=12, d_img=6, d_txt=5, num_classes=3)
  config = tiny_config()
  assert bench.check_dscmr_preset(presets.build("dscmr", "wikipedia")) == []
  assert bench.check_dscmr_preset(config)  # the tiny layers are reported as departures

  single = bench.mscross_single_step(config, problem)
  single.run(2)
  assert int(single.info["box"]["state"].step) == 2
  torch_ref = bench.torch_step(config, problem, threads=1)
  torch_ref.run(2)

  agreement = bench.loss_agreement(config, problem)
  assert agreement["abs_diff"] < 1e-4 * max(1.0, abs(agreement["torch"]))

  stats = bench.summarise(2, [(0.5, 1.0), (1.0, 1.0), (2.0, 1.0)])
  assert stats["median"] == pytest.approx(2.0)
  assert stats["per_cpu_s"] == pytest.approx(2.0)


def test_flop_count_matches_methods_md_model(bench):
  flops = bench.dscmr_step_flops(100, 128, 10, 2048, 1024, 10)
  assert flops["total"] == pytest.approx(2.83e9, rel=0.01)
