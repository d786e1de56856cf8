"""More than two modalities, unlabelled pairs, and the two-modality rows against the previous
results: what the dict-of-modalities design changes, measured.

    python bench/modalities.py                       # all three sections
    python bench/modalities.py --sections views      # one of: views instance regression

Sections:
* views: MNS-GAN and MS2GAN trained on three views at once (`uci_mfeat/fou_kar_pix`) against
  the same method trained on each pair of those views, every direction scored on test: does
  training on more views help each pair?
* instance: instance-level retrieval on Wikipedia's pairs (labels dropped): Recall@1/5/10,
  median rank and MRR of MNS-GAN, with CCA on the same inputs as a reference.
* regression: the two-modality presets (fixed step budgets, as the previous benchmark ran them)
  against the rows of the previous results file, read from git at --previous.

Every run is a population of --seeds members under the dataset's preset; runs are workdirs
under --root and are read back when they finished. Writes bench/results/modalities.{md,json}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

import numpy as np

from mscross import baselines, presets
from mscross.runs import inputs, layout  # noqa: E402
from mscross.training import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIEWS = ("fou", "kar", "pix")
REGRESSION = (
  ("acmr", "wikipedia", "wikipedia"),
  ("mnsgan", "wikipedia", "wikipedia"),
  ("dscmr", "wikipedia", "wikipedia"),
  ("mnsgan", "mfeat", "uci_mfeat/fou_pix"),
  ("acmr", "digits", "digits_halves"),
  ("mnsgan", "digits", "digits_halves"),
)


def train(method, dataset, args, *, labels=True, name=None) -> dict:
  workdir = os.path.join(args.root, name or method, dataset.replace("/", "_"))
  path = layout.path(workdir, layout.METRICS)
  if not os.path.exists(path):
    c = presets.build(method, dataset, labels=labels)
    c.population.size = args.seeds
    if args.data_dir:
      c.data.data_dir = args.data_dir
    print(f"  training {name or method} on {dataset} ({args.seeds} seeds)", flush=True)
    trainer.train_and_evaluate(c, workdir, program_cache=args.program_cache)
  with open(path) as f:
    return json.load(f)


def per_direction(result: dict, directions: dict[str, tuple[str, str]]) -> dict:
  """{"q→g": [test mAP of each member]} for the result's directions, named by modality."""
  out = {}
  for key, (q, g) in directions.items():
    out[f"{q}→{g}"] = [m["test"][f"{key}_map"] for m in result["members"]]
  return out


def views(args) -> dict:
  from mscross import metrics

  table = {}
  for method in ("mnsgan", "ms2gan"):
    three = train(method, "uci_mfeat/" + "_".join(VIEWS), args)
    dirs = {k: (q, g) for k, q, g in metrics.direction_names(VIEWS)}
    rows = {d: {"three": v} for d, v in per_direction(three, dirs).items()}
    for a, b in itertools.combinations(VIEWS, 2):
      pair = train(method, f"uci_mfeat/{a}_{b}", args)
      names = {k: (q, g) for k, q, g in metrics.direction_names((a, b))}
      for d, v in per_direction(pair, names).items():
        rows[d]["pair"] = v
    table[method] = rows
  return table


def instance(args) -> dict:
  result = train("mnsgan", "wikipedia", args, labels=False, name="mnsgan_instance")
  keys = ("r@1", "r@5", "r@10", "median_rank", "mrr")
  out = {"mnsgan": {k: [m["test"][f"avg_{k}"] for m in result["members"]] for k in keys}}
  c = presets.build("mnsgan", "wikipedia", labels=False)
  if args.data_dir:
    c.data.data_dir = args.data_dir
  source = inputs.DataSource.of(c)
  raw, _ = source.load()
  norm = source.fit(raw["train"])
  cca = baselines.cca_baseline({k: norm(v, k) for k, v in raw.items()}, select_metric="avg_mrr")
  out["cca"] = {k: [cca["test"][f"avg_{k}"]] for k in keys}
  out["cca_dim"] = cca["chosen"]["dim"]
  return out


def regression(args) -> dict:
  text = subprocess.run(
    ["git", "show", f"{args.previous}:bench/results/accuracy.json"],
    capture_output=True,
    text=True,
    cwd=ROOT,
    check=True,
  ).stdout
  previous = {(e["variant"], e["dataset"]): e for e in json.loads(text)["summary"]}
  rows = []
  for method, old_name, dataset in REGRESSION:
    result = train(method, dataset, args, name=f"{method}_preset")
    now = [m["test"]["avg_map"] for m in result["members"]]
    old = previous[(method, old_name)]
    rows.append(
      {
        "method": method,
        "dataset": dataset,
        "now": now,
        "previous": [old["test_avg_map"], old["test_avg_map_std"]],
        "within_one_std": bool(
          abs(np.mean(now) - old["test_avg_map"])
          <= max(np.std(now, ddof=1), old["test_avg_map_std"])
        ),
      }
    )
  return {"previous_commit": args.previous, "rows": rows}


def _pm(values) -> str:
  values = np.asarray(values, np.float64)
  if len(values) == 1:
    return f"{values[0]:.4f}"
  return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def markdown(results: dict, header: str) -> str:
  lines = ["# Modalities benchmark", "", header, ""]
  if "views" in results:
    lines += [
      "## Three views at once vs each pair (uci_mfeat, test mAP@all)",
      "",
      "| method | direction | trained on fou+kar+pix | trained on the pair | difference |",
      "| --- | --- | --- | --- | --- |",
    ]
    for method, rows in results["views"].items():
      for d, r in rows.items():
        diff = np.mean(r["three"]) - np.mean(r["pair"])
        lines.append(f"| {method} | {d} | {_pm(r['three'])} | {_pm(r['pair'])} | {diff:+.4f} |")
    lines.append("")
  if "instance" in results:
    r = results["instance"]
    lines += [
      "## Instance-level retrieval on Wikipedia pairs (labels dropped; test, mean over both"
      " directions)",
      "",
      "| model | R@1 | R@5 | R@10 | median rank | MRR |",
      "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("mnsgan", "cca"):
      label = name if name == "mnsgan" else f"CCA (dim {r['cca_dim']}, chosen on validation)"
      cells = " | ".join(_pm(r[name][k]) for k in ("r@1", "r@5", "r@10", "median_rank", "mrr"))
      lines.append(f"| {label} | {cells} |")
    lines.append("")
  if "regression" in results:
    r = results["regression"]
    lines += [
      f"## Two-modality presets now vs the results of commit {r['previous_commit']}",
      "",
      "| method | dataset | now (test avg mAP) | previous | within one seed std |",
      "| --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
      prev = f"{row['previous'][0]:.4f} ± {row['previous'][1]:.4f}"
      ok = "yes" if row["within_one_std"] else "NO"
      lines.append(f"| {row['method']} | {row['dataset']} | {_pm(row['now'])} | {prev} | {ok} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument(
    "--sections",
    nargs="+",
    default=["views", "instance", "regression"],
    choices=["views", "instance", "regression"],
  )
  p.add_argument("--seeds", type=int, default=5)
  p.add_argument("--root", default="runs/bench_modalities")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--previous", default="6e79517", help="commit of the previous results")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  argv = sys.argv[1:] if argv is None else argv
  args = p.parse_args(argv)
  from mscross import cli

  args.program_cache = cli.enable_compilation_cache(True)
  started = time.perf_counter()
  sections = {"views": views, "instance": instance, "regression": regression}
  path = os.path.join(args.out, "modalities.json")
  # Sections run in another sitting stay in the file.
  results = {}
  if os.path.exists(path):
    with open(path) as f:
      results = {k: v for k, v in json.load(f).items() if k in sections}
  results.update({name: sections[name](args) for name in args.sections})
  commit = subprocess.run(
    ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT
  ).stdout.strip()
  clean = not subprocess.run(
    ["git", "status", "--porcelain", "--untracked-files=no"],
    capture_output=True,
    text=True,
    cwd=ROOT,
  ).stdout.strip()
  header = (
    f"Commit `{commit[:12]}` ({'clean tree' if clean else 'UNCOMMITTED changes'}); "
    f"{args.seeds} seeds per run, mean ± std; each member's state chosen on validation. "
    f"Command: `python bench/modalities.py {' '.join(argv)}` "
    f"({time.perf_counter() - started:.0f} s in this sitting)."
  )
  results["header"] = header
  os.makedirs(args.out, exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  text = markdown(results, header)
  with open(os.path.join(args.out, "modalities.md"), "w") as f:
    f.write(text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
