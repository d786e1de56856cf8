"""Seed 0 of every shipped preset, trained as a user first runs it, and the test metrics it gives:
the check that a change of code (a refactoring) leaves what the presets train unchanged.

  python bench/preset_seed0.py --root runs/preset_seed0 --out /tmp/before.json
  ... change the code ...
  python bench/preset_seed0.py --root runs/preset_seed0_after --out /tmp/after.json \
      --compare /tmp/before.json

Each (method, dataset variant) is `python train.py --config configs/default.py:method=M,
dataset=D[,<modality>=<extractor>]` in a workdir of its own (seed 0, one model). The table lists
its test avg mAP@all; with --compare, the largest difference over every test metric against
another run of this script, and whether it is within --tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from accuracy import DATASETS
from provenance import ROOT, header, provenance

METHODS = ("acmr", "mnsgan", "ms2gan", "dscmr")


def config_arg(method: str, dataset: str) -> str:
  name, _, extractors = dataset.partition(":")
  extra = f",{extractors}" if extractors else ""
  return f"configs/default.py:method={method},dataset={name}{extra}"


def train(method: str, dataset: str, root: str) -> dict:
  workdir = os.path.join(root, method, dataset.replace("/", "-").replace(":", "."))
  metrics = os.path.join(workdir, "metrics.json")
  if not os.path.exists(metrics):
    cmd = [sys.executable, "train.py", f"--config={config_arg(method, dataset)}"]
    proc = subprocess.run([*cmd, f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f"{method}/{dataset} failed: {proc.stderr.strip().splitlines()[-1:]}")
  with open(metrics) as f:
    return json.load(f)["test"]


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--root", default="runs/preset_seed0", help="where the workdirs go")
  p.add_argument("--out", required=True, help="the JSON file of every run's test metrics")
  p.add_argument("--compare", help="another run's JSON file: print the largest differences")
  p.add_argument("--tolerance", type=float, default=1e-6)
  p.add_argument("--methods", nargs="+", default=list(METHODS))
  p.add_argument("--datasets", nargs="+", default=list(DATASETS))
  args = p.parse_args(argv)
  prov = provenance("bench/preset_seed0.py", sys.argv[1:] if argv is None else argv)
  other = None
  if args.compare:
    with open(args.compare) as f:
      other = json.load(f)["runs"]
  runs, rows = {}, []
  for dataset in args.datasets:
    for method in args.methods:
      start = time.perf_counter()
      test = train(method, dataset, args.root)
      key = f"{method}/{dataset}"
      runs[key] = test
      row = f"| {dataset} | {method} | {test['avg_map']:.6f} |"
      if other is not None:
        before = other[key]
        diff = max(abs(test[k] - before[k]) for k in before if isinstance(before[k], float))
        row += (
          f" {before['avg_map']:.6f} | {diff:.2e} | {'yes' if diff <= args.tolerance else 'NO'} |"
        )
      rows.append(row)
      print(f"{key}: test avg mAP {test['avg_map']:.6f} ({time.perf_counter() - start:.0f} s)")
  columns = "| dataset | method | test avg mAP |"
  rule = "| --- | --- | ---: |"
  if other is not None:
    columns += f" compared with | largest difference, any test metric | within {args.tolerance:g} |"
    rule += " ---: | ---: | --- |"
  table = "\n".join([columns, rule, *rows])
  print(f"\n{header(prov)}\n{table}")
  with open(args.out, "w") as f:
    json.dump({"provenance": prov, "runs": runs}, f, indent=1)
  if other is not None:
    return int(any(r.endswith("NO |") for r in rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
