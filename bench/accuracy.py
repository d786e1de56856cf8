"""The fair accuracy benchmark: every method gets the same tuning budget, trains to convergence,
and is scored on test with 5 seeds; the claims are put to a significance test.

    python bench/accuracy.py                                   # the whole benchmark
    python bench/accuracy.py --datasets wikipedia uci_mfeat/kar_pix --trials 24
    python bench/accuracy.py --no-train                        # tabulate what has finished

Protocol, per (method, dataset):
1. Tuning: an Optuna study (`mscross.tuning`) of `--trials` trials over the method's search space
   (`mscross/methods/registry.py`), maximising VALIDATION avg mAP@all; trials run `--population`
   at a time in one program, are pruned by the median rule and stop by patience under a step cap.
2. Final runs: the best trial's config trained with `--seeds` new seeds (one population), each
   member stopping by patience under the same cap; the test split is scored once per member,
   with its best-on-validation state.
3. Ablations of the tuned configs, with the same seeds: the discriminator off (the adversarial
   methods), MNS-GAN with one (hardest) negative, MS2GAN ranked on shared features alone (same
   checkpoints).
4. Non-deep references on the same input transform and metric code: CCA (dimension chosen on
   validation) and semantic matching (per-modality logistic regression, C chosen on validation).
5. Welch's t-tests over the seeds: MNS-GAN and MS2GAN against ACMR and DSCMR, each method
   against its discriminator-off ablation, and one-sample tests against CCA and semantic matching.

Everything is a workdir under --root; finished studies and runs are read back, not redone, so the
benchmark can be completed over several sittings. Writes bench/results/accuracy.{md,json} with
the commit (and whether the tree was clean), package versions, the CPU and, per row, the commands
that reproduce it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from importlib import metadata

import numpy as np

from mscross import baselines, methods, presets, tuning
from mscross import config as config_lib
from mscross.retrieval import trained
from mscross.training import input_pipeline, trainer
from mscross.training import workdir as workdir_lib

DATASETS = ("wikipedia", "digits_halves", "uci_mfeat/fou_pix")
# The comparisons the significance tests make: which methods are the claims and which the
# published references is the benchmark's question, not something the method registry records.
SEED_METHODS = ("mnsgan", "ms2gan")
REFERENCE_METHODS = ("acmr", "dscmr")
FINAL_SEED = 1000  # final runs use seeds FINAL_SEED.. (tuning trained with seed 0)
ABLATIONS = {
  "no-disc": (
    {"adv.enabled": False},
    tuple(m for m in methods.names() if methods.get(m).adversarial),
  ),
  "1-negative": (
    {"loss.multi_negative.negatives": "hardest", "loss.multi_negative.k": 1},
    ("mnsgan",),
  ),
}


def protocol_config(method: str, dataset: str, args) -> object:
  """The preset with the benchmark's shared training protocol: evaluation cadence, patience and
  step cap are the same for every method."""
  c = presets.build(method, dataset)
  c.train.eval_every = args.eval_every
  c.train.checkpoint_every = args.eval_every * 5
  c.train.patience = args.patience
  c.train.steps = args.max_steps
  if args.data_dir:
    c.data.data_dir = args.data_dir
  return c


def slug(dataset: str) -> str:
  return dataset.replace("/", "_")


def tune_cell(method, dataset, args, log) -> dict:
  workdir = os.path.join(args.root, "tune", method, slug(dataset))
  config = protocol_config(method, dataset, args)
  started = time.perf_counter()
  study = None
  if args.train:
    study = tuning.tune(
      config,
      workdir,
      trials=args.trials,
      population=args.population,
      seed=0,
      progress=lambda line: log(f"  {method}/{dataset} {line}"),
    )
  elif os.path.exists(os.path.join(workdir, tuning.STUDY_DB)):
    study = tuning.load_study(workdir)
  if study is None:
    return {}
  done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
  counts = {s: sum(t.state.name == s for t in done) for s in ("COMPLETE", "PRUNED", "FAIL")}
  return {
    "workdir": workdir,
    "trials": counts,
    "finished": counts["COMPLETE"] + counts["PRUNED"],
    "best_value": study.best_value if counts["COMPLETE"] else None,
    "best_params": study.best_trial.params if counts["COMPLETE"] else None,
    "seconds_this_sitting": round(time.perf_counter() - started, 1),
    "command": (
      f"python tune.py --config configs/default.py:method={method},dataset={dataset} "
      f"--trials {args.trials} --population {args.population} --workdir {workdir} "
      f"--config.train.eval_every={args.eval_every} --config.train.patience={args.patience} "
      f"--config.train.steps={args.max_steps} --config.train.checkpoint_every="
      f"{args.eval_every * 5}"
    ),
  }


def final_config(tune_dir: str, args, overrides: dict):
  c = config_lib.load_config_file(os.path.join(tune_dir, tuning.BEST_CONFIG))
  c.seed = FINAL_SEED
  c.population.size = args.seeds
  c.population.vary_seed = True
  c.population.hparams = ""
  for key, value in overrides.items():
    config_lib.set_dotted(c, key, value)
  return c


def final_cell(name, tune_dir, dataset, args, overrides, log) -> dict:
  workdir = os.path.join(args.root, "final", name.replace("/", "_"), slug(dataset))
  path = workdir_lib.path(workdir, workdir_lib.METRICS)
  if not os.path.exists(path):
    if not args.train or not os.path.exists(os.path.join(tune_dir, tuning.BEST_CONFIG)):
      return {}
    log(f"  {name}/{dataset}: {args.seeds} seeds")
    trainer.train_and_evaluate(final_config(tune_dir, args, overrides), workdir)
  with open(path) as f:
    result = json.load(f)
  sets = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
  return {
    "workdir": workdir,
    "members": result["members"],
    "train_seconds": result["train_seconds"],
    "command": (
      f"python train.py --config {tune_dir}/best_config.json --config.seed={FINAL_SEED} "
      f"--config.population.size={args.seeds} {sets} --workdir {workdir}".replace("  ", " ")
    ),
  }


def shared_only(cell: dict) -> list[float]:
  """Test avg mAP of MS2GAN's final checkpoints ranked on shared features alone."""
  wd = trained.Workdir(cell["workdir"], retrieval="common")
  test = wd.split("test")
  return [wd.member(m).metrics(test)["avg_map"] for m in range(wd.size)]


def baseline_cells(dataset, args) -> dict:
  config = protocol_config("acmr", dataset, args)
  raw = input_pipeline.load_raw(config)
  norm = input_pipeline.fit_normalizer(config, raw["train"])
  splits = {k: norm(v, k) for k, v in raw.items()}
  out = {}
  for name, fn in (("cca", baselines.cca_baseline), ("sm", baselines.semantic_matching_baseline)):
    r = fn(splits)
    out[name] = {"chosen": r["chosen"], "val": r["val"]["avg_map"], "test": r["test"]["avg_map"]}
    out[name].update({k: r["test"][k] for k in ("i2t_map", "t2i_map")})
  return out


def welch(a, b) -> dict:
  from scipy import stats

  t, p = stats.ttest_ind(a, b, equal_var=False)
  return {"diff": float(np.mean(a) - np.mean(b)), "t": float(t), "p": float(p)}


def paired(a, b) -> dict:
  from scipy import stats

  t, p = stats.ttest_rel(a, b)
  return {"diff": float(np.mean(a) - np.mean(b)), "t": float(t), "p": float(p)}


def one_sample(a, value) -> dict:
  from scipy import stats

  t, p = stats.ttest_1samp(a, value)
  return {"diff": float(np.mean(a) - value), "t": float(t), "p": float(p)}


def summarise_members(members) -> dict:
  test = [m["test"]["avg_map"] for m in members]
  out = {"seeds": len(members), "test": test}
  for key in ("avg_map", "i2t_map", "t2i_map"):
    values = [m["test"][key] for m in members]
    out[f"test_{key}"] = [float(np.mean(values)), float(np.std(values, ddof=1))]
  val = [m["val"]["avg_map"] for m in members]
  out["val_avg_map"] = [float(np.mean(val)), float(np.std(val, ddof=1))]
  out["patience_stops"] = sum(m["stopped"] == "patience" for m in members)
  out["best_steps"] = [m["best_step"] for m in members]
  return out


def provenance(argv) -> dict:
  def git(*a):
    return subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.strip()

  versions = {}
  for pkg in ("jax", "jaxlib", "flax", "optax", "optuna", "numpy", "scikit-learn", "scipy"):
    try:
      versions[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      pass
  cpu = platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {
    "commit": git("rev-parse", "HEAD"),
    "tree_clean": git("status", "--porcelain", "--untracked-files=no") == "",
    "versions": versions,
    "python": sys.version.split()[0],
    "cpu": cpu,
    "cores": os.cpu_count(),
    "command": "python bench/accuracy.py " + " ".join(argv),
  }


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, argv, log) -> dict:
  results = {"provenance": provenance(argv), "protocol": vars(args), "datasets": {}}
  started = time.perf_counter()
  for dataset in args.datasets:
    log(f"{dataset}")
    cells = {"tuning": {}, "final": {}, "ablations": {}}
    for method in args.methods:
      cells["tuning"][method] = tune = tune_cell(method, dataset, args, log)
      if not tune:
        continue
      final = final_cell(method, tune["workdir"], dataset, args, {}, log)
      if final:
        cells["final"][method] = {**final, **summarise_members(final["members"])}
      for name, (overrides, which) in ABLATIONS.items():
        if method in which and args.ablations:
          cell = final_cell(f"{method}/{name}", tune["workdir"], dataset, args, overrides, log)
          if cell:
            cells["ablations"][f"{method}/{name}"] = {**cell, **summarise_members(cell["members"])}
      if method == "ms2gan" and final and args.ablations:
        values = shared_only(final)
        cells["ablations"]["ms2gan/shared-only"] = {
          "test": values,
          "test_avg_map": [float(np.mean(values)), float(np.std(values, ddof=1))],
          "command": (
            "mscross.retrieval.trained.Workdir(<ms2gan final workdir>, retrieval='common')"
          ),
        }
    cells["baselines"] = baseline_cells(dataset, args)
    cells["tests"] = significance(cells)
    results["datasets"][dataset] = cells
  results["seconds_this_sitting"] = round(time.perf_counter() - started, 1)
  return results


def significance(cells) -> dict:
  final, out = cells["final"], {}
  for a in SEED_METHODS:
    for b in REFERENCE_METHODS:
      if a in final and b in final:
        out[f"{a} vs {b}"] = welch(final[a]["test"], final[b]["test"])
    for base in ("cca", "sm"):
      if a in final:
        out[f"{a} vs {base}"] = one_sample(final[a]["test"], cells["baselines"][base]["test"])
  for name, cell in cells["ablations"].items():
    method = name.split("/")[0]
    if method not in final:
      continue
    if "members" in cell:
      out[f"{method} vs {name}"] = welch(final[method]["test"], cell["test"])
    else:  # the same checkpoints ranked another way: a paired test
      out[f"{method} vs {name} (paired)"] = paired(final[method]["test"], cell["test"])
  return out


def _pm(pair) -> str:
  return f"{pair[0]:.4f} ± {pair[1]:.4f}"


def markdown(results: dict) -> str:
  p = results["provenance"]
  lines = [
    "# Accuracy benchmark",
    "",
    f"Commit `{p['commit'][:12]}` ({'clean tree' if p['tree_clean'] else 'UNCOMMITTED changes'}),"
    f" {p['cpu']}, {p['cores']} cores, Python {p['python']}, "
    + ", ".join(f"{k} {v}" for k, v in p["versions"].items())
    + f". Command: `{p['command']}`.",
    "",
    "Test mAP@all (cosine ranking of the whole test split, mean ± std over the seeds), each "
    "member's state chosen on validation. Every method had the same number of tuning trials; "
    "'patience' counts the final runs that stopped by patience rather than by the step cap.",
  ]
  for dataset, cells in results["datasets"].items():
    lines += ["", f"## {dataset}", ""]
    lines += [
      "| method | trials | image→text | text→image | average | val average | patience "
      "| best steps |",
      "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, cell in cells["final"].items():
      t = cells["tuning"][method]["trials"]
      lines.append(
        f"| {method} | {t['COMPLETE']}+{t['PRUNED']} pruned | {_pm(cell['test_i2t_map'])} | "
        f"{_pm(cell['test_t2i_map'])} | **{_pm(cell['test_avg_map'])}** | "
        f"{_pm(cell['val_avg_map'])} | {cell['patience_stops']}/{cell['seeds']} | "
        f"{', '.join(map(str, cell['best_steps']))} |"
      )
    for name, cell in cells["ablations"].items():
      row = f"| {name} | (tuned) | "
      if "test_i2t_map" in cell:
        row += f"{_pm(cell['test_i2t_map'])} | {_pm(cell['test_t2i_map'])} | "
        row += f"{_pm(cell['test_avg_map'])} | {_pm(cell['val_avg_map'])} | "
        row += f"{cell['patience_stops']}/{cell['seeds']} | "
        row += f"{', '.join(map(str, cell['best_steps']))} |"
      else:
        row += f"– | – | {_pm(cell['test_avg_map'])} | – | – | – |"
      lines.append(row)
    for name, b in cells["baselines"].items():
      chosen = ", ".join(f"{k} {v}" for k, v in b["chosen"].items())
      lines.append(
        f"| {name.upper()} ({chosen}) | grid on val | {b['i2t_map']:.4f} | {b['t2i_map']:.4f} | "
        f"{b['test']:.4f} | {b['val']:.4f} | – | – |"
      )
    lines += ["", "| comparison (test avg mAP) | difference | t | p |", "| --- | --- | --- | --- |"]
    for name, s in cells["tests"].items():
      lines.append(f"| {name} | {s['diff']:+.4f} | {s['t']:.2f} | {s['p']:.2g} |")
    lines += ["", "Commands:", ""]
    for method, cell in cells["final"].items():
      lines.append(f"- {method}: `{cells['tuning'][method]['command']}`; then `{cell['command']}`")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--methods", nargs="+", default=methods.names(), choices=methods.names())
  p.add_argument("--datasets", nargs="+", default=list(DATASETS), help="any dataset names")
  p.add_argument("--trials", type=int, default=24)
  p.add_argument("--population", type=int, default=4, help="trials per program")
  p.add_argument("--seeds", type=int, default=5)
  p.add_argument("--eval-every", type=int, default=100)
  p.add_argument("--patience", type=int, default=10, help="evaluations without improvement")
  p.add_argument("--max-steps", type=int, default=10000, help="the step cap")
  p.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--root", default="runs/bench_accuracy", help="where the workdirs go")
  p.add_argument("--data-dir", default=None, help="data directory (else MSCROSS_DATA_DIR)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  p.add_argument(
    "--train",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="--no-train tabulates what already finished under --root and trains nothing",
  )
  argv = sys.argv[1:] if argv is None else argv
  args = p.parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)
  from mscross import cli

  cli.enable_compilation_cache(True)
  stamp = time.perf_counter()

  def log(line):
    print(f"[{time.perf_counter() - stamp:7.0f}s] {line}", flush=True)

  results = run(args, argv, log)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "accuracy.json"), "w") as f:
    json.dump(results, f, indent=1)
  text = markdown(results)
  with open(os.path.join(args.out, "accuracy.md"), "w") as f:
    f.write(text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
