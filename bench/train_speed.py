"""Training speed of mscross: against a plain PyTorch reference, against this CPU's roofline, with
populations, and end to end (start-up included) through train.py.

Run as `python bench/train_speed.py [--quick] [--out DIR]`. Writes `DIR/train_speed.{md,json}`
(default DIR: bench/results).

1. The DSCMR-sized model of docs/methods.md (image 128 -> 2048, text 10 -> 2048, shared
   2048 -> 1024, classifier 1024 -> 10, loss J1 + 1e-3 J2 + 1e-1 J3, Adam 1e-4 (0.5, 0.999),
   batch 100) on random data of the Wikipedia shapes: the loss of mscross and of an eager PyTorch
   implementation on the same weights and batch, steps/s of the training program's device loop
   (a population of one) and of the PyTorch reference, the analytic FLOPs of one step and the
   roofline that the measured matmul rate implies.
2. Populations: every method's Wikipedia preset at population sizes 1, 5 (and 8), members of
   different seeds, in one device loop: model-steps/s (members x steps / s) and the speed-up
   over one member.
3. Time to a finished model: the whole `train.py` process (start-up, compilation, training,
   validation, final scoring) for a fixed step count, one seed against five
   (`--config.population.size=5`), and the PyTorch DSCMR reference training as many steps, one
   run and five runs one after the other.
4. Start-up: `train.py` run twice on the same preset with the same persistent compilation cache
   (empty, then filled by the first run), and once with `--nocompilation_cache`: the
   `startup_seconds` (process start to the first trained step) of metrics.json, and the wall
   time of the process.

The machine is shared with other work, so every rate of sections 1 and 2 is the median of several
repeats, given with its spread and with how busy the CPU was while it was measured. The repeats
of the workloads that are compared with each other are interleaved, so that a change in the
background load hits all of them rather than whichever happened to run at the time. The
processes of sections 3 and 4 are too long to repeat; each comes with the load it ran under.

This file parses the arguments, runs the sections and writes the report; the rest lives beside
it: speed_timing.py (the machine, its load, timed repeats), speed_workloads.py (the random data
and the training program that train.py builds, from `mscross.training.program`), speed_dscmr.py
(section 1 and the PyTorch reference), speed_populations.py (section 2) and speed_processes.py
(sections 3 and 4).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import speed_dscmr as dscmr
import speed_populations as populations
import speed_processes as processes
from speed_timing import CpuMeter, Runner, machine_info
from speed_workloads import WIKI_CLASSES, WIKI_D_IMG, WIKI_D_TXT, random_problem

from mscross import methods

# What --quick runs: one adversarial method and the one with a PyTorch reference.
QUICK_METHODS = ("mnsgan", "dscmr")
NUM_PAIRS = 2000
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _status(met: bool | None) -> str:
  return "not measured" if met is None else ("MET" if met else "NOT MET")


def target_lines(targets: list[dict]) -> list[str]:
  lines = ["## Targets", "", "| target | status | figure |", "| --- | --- | --- |"]
  for t in targets:
    lines.append(f"| {t['target']} | **{_status(t['met'])}** | {t['figure']} |")
  return [*lines, ""]


def header_lines(info: dict, args) -> list[str]:
  load = " ".join(f"{x:.2f}" for x in info["loadavg_at_start"])
  torch_line = (
    "- torch: not installed (reference rows skipped)"
    if info["torch"] is None
    else f"- torch {info['torch']}, torch.get_num_threads() = {info['torch_threads']} (default)"
  )
  return [
    "# mscross training speed (bench/train_speed.py)",
    "",
    f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; mode: {'quick' if args.quick else 'full'}",
    f"- CPU: {info['cpu_model']}, {info['logical_cores']} logical cores ({info['usable_cores']} "
    f"usable); SIMD: {' '.join(info['cpu_flags']) or 'n/a'}",
    f"- load average at start (1, 5, 15 min): {load}",
    f"- Python {info['python']}; jax {info['jax']} (backend {info['jax_backend']}, devices "
    f"{', '.join(info['jax_devices'])}); flax {info['flax']}; optax {info['optax']}",
    torch_line,
    "",
  ]


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="smoke run: few, short repeats and runs")
  p.add_argument(
    "--out", "--out-dir", dest="out", type=Path, default=RESULTS_DIR, help="report folder"
  )
  p.add_argument(
    "--sections", default="1,2,3,4", help="comma-separated sections to run (default: all)"
  )
  p.add_argument(
    "--methods",
    default=None,
    help="comma-separated methods for sections 2 and 3 (default: all; --quick: mnsgan,dscmr)",
  )
  p.add_argument("--sizes", default=None, help="population sizes of section 2 (default 1,5,8)")
  p.add_argument("--seeds", type=int, default=5, help="population size of section 3")
  p.add_argument(
    "--gan-steps", type=int, default=None, help="section 3 steps of a GAN preset (1500; quick 100)"
  )
  p.add_argument(
    "--dscmr-steps", type=int, default=None, help="section 3 steps of DSCMR (200; quick 10)"
  )
  p.add_argument("--startup-method", default="mnsgan", choices=methods.names())
  p.add_argument("--startup-steps", type=int, default=5, help="section 4 steps")
  p.add_argument("--keep-tmp", action="store_true", help="keep the train.py workdirs and logs")
  args = p.parse_args(argv)
  args.sections = set(_ints(args.sections))
  if not args.sections <= {1, 2, 3, 4}:
    p.error(f"unknown sections {sorted(args.sections - {1, 2, 3, 4})}; choose from 1, 2, 3, 4")
  default_methods = QUICK_METHODS if args.quick else tuple(methods.names())
  args.methods = (
    default_methods if args.methods is None else tuple(m for m in args.methods.split(",") if m)
  )
  unknown = set(args.methods) - set(methods.names())
  if unknown:
    p.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(methods.names())}")
  args.sizes = _ints(args.sizes) if args.sizes else ((1, 5) if args.quick else (1, 5, 8))
  if args.quick:
    args.repeats, args.method_repeats, args.seconds, args.matmul_size = 3, 2, 0.3, 1024
    gan_steps, dscmr_steps = 100, 10
  else:
    args.repeats, args.method_repeats, args.seconds, args.matmul_size = 7, 5, 1.5, 2048
    # A GAN preset's whole run (its 1500 steps); DSCMR's steps cost 10x more, and its PyTorch
    # reference trains them again five times, so it gets a shorter run that the report projects.
    gan_steps, dscmr_steps = 1500, 200
  args.gan_steps = args.gan_steps or gan_steps
  args.dscmr_steps = args.dscmr_steps or dscmr_steps
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  info = machine_info(dscmr.torch)
  out: dict = {
    "machine": info,
    "settings": {
      "quick": args.quick,
      "sections": sorted(args.sections),
      "repeats": args.repeats,
      "method_repeats": args.method_repeats,
      "seconds_per_repeat": args.seconds,
      "matmul_size": args.matmul_size,
      "pairs": NUM_PAIRS,
      "methods": list(args.methods),
      "population_sizes": list(args.sizes),
      "seeds": args.seeds,
      "gan_steps": args.gan_steps,
      "dscmr_steps": args.dscmr_steps,
      "startup_method": args.startup_method,
      "startup_steps": args.startup_steps,
    },
  }
  lines = header_lines(info, args)
  print("\n".join(lines), flush=True)
  problem = random_problem(NUM_PAIRS, WIKI_D_IMG, WIKI_D_TXT, WIKI_CLASSES)
  targets: list[dict] = []
  tmp = Path(tempfile.mkdtemp(prefix="train_speed_"))

  def emit(part: list[str]) -> None:
    print("\n".join(part), flush=True)
    lines.extend(part)

  try:
    with CpuMeter("both") as whole:
      reuse: dict[tuple[str, int], Runner] = {}
      if 1 in args.sections:
        part, loop = dscmr.section_dscmr(args, problem, out)
        reuse[("dscmr", 1)] = loop
        emit(part)
      if 2 in args.sections:
        emit(populations.section_populations(args, problem, out, reuse))
      reuse.clear()  # the compiled loops and their states are not needed any more
      if 3 in args.sections or 4 in args.sections:
        data = processes.run_data(tmp)
        # Built here once, so no timed process pays for preparing the dataset cache.
        processes.prepared_train_split(processes.run_config(args.startup_method, data))
      if 3 in args.sections:
        part, found = processes.section_time_to_model(args, out, data, tmp)
        targets += found
        emit(part)
      if 4 in args.sections:
        part, found = processes.section_startup(args, out, data, tmp)
        targets += found
        emit(part)
  finally:
    if args.keep_tmp:
      print(f"train.py workdirs and logs kept in {tmp}", file=sys.stderr)
    else:
      shutil.rmtree(tmp, ignore_errors=True)
  out["targets"] = targets
  out["cpu_whole_run"] = whole.result
  emit([*target_lines(targets), f"Whole run: {whole.describe()}."])
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "train_speed.md").write_text("\n".join(lines) + "\n")
  (args.out / "train_speed.json").write_text(json.dumps(out, indent=2, default=_json) + "\n")
  print(f"\nwrote {args.out / 'train_speed.md'} and train_speed.json", file=sys.stderr)
  return out


def _json(x):
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(f"{type(x).__name__} is not JSON serialisable")


if __name__ == "__main__":
  main()
