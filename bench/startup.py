"""Start-up of a warm train.py, compared between checkouts in one run.

    python bench/startup.py                                   # this checkout alone
    python bench/startup.py --checkouts . ../other-checkout   # this one against another

For every checkout: one cold train.py (an empty persistent compilation cache of its own, which
it fills), then `--repeats` warm runs of the same command in fresh workdirs, the checkouts'
warm runs interleaved so that a change in the background load hits them alike. Each run is
the Wikipedia preset of `--method`, `--steps` steps, population 1. Figures: metrics.json's
`startup_seconds` (process start to the first trained step) and the process's wall time, with
the 1-minute load average before each run. Writes `--out`/startup.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def commit(checkout: Path) -> str:
  def git(*args):
    return subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True).stdout

  clean = not git("status", "--porcelain", "--untracked-files=no").strip()
  return git("rev-parse", "--short", "HEAD").strip() + ("" if clean else " (modified)")


def run(checkout: Path, args, cache: Path, workdir: Path) -> dict:
  cmd = [
    sys.executable,
    "train.py",
    f"--config=configs/default.py:method={args.method},dataset={args.dataset}",
    f"--workdir={workdir}",
    f"--config.train.steps={args.steps}",
    f"--config.train.eval_every={args.steps}",
    f"--config.train.checkpoint_every={args.steps}",
  ]
  env = dict(os.environ, MSCROSS_JAX_CACHE_DIR=str(cache))
  load = os.getloadavg()[0]
  started = time.perf_counter()
  proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - started
  if proc.returncode:
    raise SystemExit(f"{checkout}: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
  # Read by name, not through mscross: another checkout may hold another version of it.
  metrics = json.loads((workdir / "metrics.json").read_text())
  return {"startup_s": metrics["startup_seconds"], "wall_s": wall, "load_before": load}


def _spread(runs: list[dict], key: str) -> str:
  values = [r[key] for r in runs]
  return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkouts", nargs="+", type=Path, default=[REPO])
  p.add_argument("--method", default="mnsgan")
  p.add_argument("--dataset", default="wikipedia")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
  args = p.parse_args(argv)
  checkouts = [c.resolve() for c in args.checkouts]
  tmp = Path(tempfile.mkdtemp(prefix="mscross-startup-"))
  try:
    rows = {str(c): {"commit": commit(c), "cold": None, "warm": []} for c in checkouts}
    for i, c in enumerate(checkouts):
      rows[str(c)]["cold"] = run(c, args, tmp / f"cache{i}", tmp / f"cold{i}")
    for r in range(args.repeats):
      for i, c in enumerate(checkouts):
        rows[str(c)]["warm"].append(run(c, args, tmp / f"cache{i}", tmp / f"warm{i}_{r}"))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  lines = [
    f"# Start-up: train.py {args.method} on {args.dataset}, {args.steps} steps, population 1",
    "",
    f"Command: `python bench/startup.py --checkouts {' '.join(map(str, args.checkouts))}`. "
    f"Warm runs: {args.repeats} per checkout, interleaved; figures are medians (min-max).",
    "",
    "| checkout | commit | cold start-up s | warm start-up s | warm wall s | load before |",
    "| --- | --- | ---: | ---: | ---: | ---: |",
  ]
  for path, row in rows.items():
    warm = row["warm"]
    row["warm_startup_median_s"] = statistics.median(w["startup_s"] for w in warm)
    load = f"{min(w['load_before'] for w in warm):.2f}-{max(w['load_before'] for w in warm):.2f}"
    lines.append(
      f"| {path} | {row['commit']} | {row['cold']['startup_s']:.2f} | "
      f"{_spread(warm, 'startup_s')} | {_spread(warm, 'wall_s')} | {load} |"
    )
  text = "\n".join(lines) + "\n"
  print(text)
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "startup.md").write_text(text)
  (args.out / "startup.json").write_text(json.dumps(rows, indent=2))
  return rows


if __name__ == "__main__":
  main()
