"""The fair accuracy benchmark: every method gets the same tuning budget, trains to convergence,
and is scored on test with 5 seeds; the claims are put to a significance test.

    python bench/accuracy.py                                   # the whole benchmark
    python bench/accuracy.py --datasets wikipedia:text=wordllama web_news --trials 24
    python bench/accuracy.py --no-train                        # tabulate what has finished
    python bench/accuracy.py --no-train --readme               # and rewrite README's section

A dataset is a name, with `:<modality>=<extractor>,...` for extractors other than its defaults
(`wikipedia:text=wordllama`: Wikipedia's SIFT images with WordLlama text features).

Protocol, per (method, dataset):
1. Tuning: an Optuna study (`mscross.tuning`) of `--trials` trials over the method's search space
   (`mscross/methods/registry.py`: the adversary's weight and ramp among them), maximising
   VALIDATION avg mAP@all; trials run `--population` at a time in one program, are pruned by the
   median rule and stop by patience under a step cap. The best trial's values become the
   shipped preset, `mscross/presets/tuned/<dataset variant>/<method>.json`, with the protocol's
   training settings and this command.
2. Final runs: the preset, exactly as `configs/default.py:method=...,dataset=...` builds it,
   trained with `--seeds` new seeds (one population), each member stopping by patience under
   the same cap; the test split is scored once per member, with its best-on-validation state.
   The game's state is read from each member's history: the discriminator's modality accuracy
   on validation embeddings at the last evaluation.
3. Ablations of the tuned configs, with the same seeds: the discriminator off (the adversarial
   methods), the extractors' non-saturating confusion objective in place of the minimax one (the
   adversarial methods, at the tuned weight), MNS-GAN with one (hardest) negative, MS2GAN ranked
   on shared features alone (same checkpoints).
4. The preset as a user first runs it: `python train.py --config configs/default.py:...`, seed 0,
   scored against its row's mean and spread.
5. Non-deep references on the same input transform and metric code: CCA (dimension chosen on
   validation) and semantic matching (per-modality logistic regression, C chosen on validation).
6. Welch's t-tests over the seeds (`bench/accuracy_report.py`).

Every finished cell is written into `--out`/accuracy.json at once, with the commit it ran at;
a later sitting (on this machine or, from the committed file and presets, on another) reads
those cells back and trains only what is missing. Studies and runs are workdirs under --root.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import accuracy_report  # noqa: E402
import provenance as provenance_lib  # noqa: E402

from mscross import baselines, dotted, methods, metrics, presets, tuning  # noqa: E402
from mscross.presets import store  # noqa: E402
from mscross.retrieval import trained  # noqa: E402
from mscross.runs import inputs, layout  # noqa: E402
from mscross.training import trainer  # noqa: E402

# Wikipedia twice: its shallow features, and its texts through the text extractor that did best
# there in bench/linear_probe.py and bench/deep_features.py (WordLlama).
DATASETS = (
  "wikipedia",
  "wikipedia:text=wordllama",
  "web_news",
  "digits_halves",
  "uci_mfeat/fou_pix",
)
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
  # The tuned adversary with the non-saturating generator objective: where the discriminator
  # has won the minimax game, its gradient is gone; this one's is not.
  "confusion": (
    {"adv.generator_loss": "confusion"},
    tuple(m for m in methods.names() if methods.get(m).adversarial),
  ),
}
# What must match for a cell of an earlier sitting to be reused.
PROTOCOL_KEYS = ("trials", "population", "seeds", "eval_every", "patience", "max_steps")
# Raised when the protocol changes in a way its arguments do not show; 2: the adversary's ramp
# is its own searched setting, presets are the tuned values, the game's state is recorded.
PROTOCOL_VERSION = 2


def parse_dataset(spec: str) -> tuple[str, dict[str, str]]:
  """`wikipedia:text=wordllama` -> ("wikipedia", {"text": "wordllama"})."""
  name, _, rest = spec.partition(":")
  extractors = {}
  for item in filter(None, rest.split(",")):
    modality, sep, extractor = item.partition("=")
    if not sep:
      raise SystemExit(f"--datasets: {spec!r}: expected name[:modality=extractor,...]")
    extractors[modality] = extractor
  return name, extractors


def default_args(method: str, spec: str) -> str:
  """The `configs/default.py:` argument that builds this row's preset."""
  dataset, extractors = parse_dataset(spec)
  return ",".join(
    [f"method={method}", f"dataset={dataset}"] + [f"{k}={v}" for k, v in extractors.items()]
  )


def settings(args) -> dict:
  """The training protocol every row shares; stored with each preset."""
  return {
    "train.eval_every": args.eval_every,
    "train.checkpoint_every": args.eval_every * 5,
    "train.patience": args.patience,
    "train.steps": args.max_steps,
  }


def _data_dir(c, args):
  if args.data_dir:
    c.data.data_dir = args.data_dir
  return c


def protocol_config(method: str, spec: str, args, *, use_tuned: bool):
  dataset, extractors = parse_dataset(spec)
  c = presets.build(method, dataset, extractors=extractors, use_tuned=use_tuned)
  if not use_tuned:
    for key, value in settings(args).items():
      dotted.set_(c, key, value)
  return _data_dir(c, args)


def slug(spec: str) -> str:
  dataset, extractors = parse_dataset(spec)
  return store.variant(dataset, extractors)


def tune_command(method: str, spec: str, args) -> str:
  return (
    f"python bench/accuracy.py --datasets {spec} --methods {method} --trials {args.trials} "
    f"--population {args.population} --eval-every {args.eval_every} --patience "
    f"{args.patience} --max-steps {args.max_steps} --no-ablations"
  )


def tune_cell(method, spec, args, prov, log) -> dict:
  workdir = os.path.join(args.root, "tune", method, slug(spec))
  config = protocol_config(method, spec, args, use_tuned=False)
  started = time.perf_counter()
  study = tuning.tune(
    config,
    workdir,
    trials=args.trials,
    population=args.population,
    seed=0,
    progress=lambda line: log(f"  {method}/{spec} {line}"),
    program_cache=args.program_cache,
  )
  done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
  counts = {s: sum(t.state.name == s for t in done) for s in ("COMPLETE", "PRUNED", "FAIL")}
  if not counts["COMPLETE"]:
    raise RuntimeError(f"{method}/{spec}: no trial of the study completed ({counts})")
  dataset, extractors = parse_dataset(spec)
  cell = {
    "trials": counts,
    "best_validation": study.best_value,
    "command": tune_command(method, spec, args),
    "seconds": round(time.perf_counter() - started, 1),
    "commit": prov["commit"],
    "tree_clean": prov["tree_clean"],
  }
  tuned = store.Tuned(
    method=method,
    dataset=dataset,
    extractors=presets.variant_extractors(dataset, extractors),
    params=dict(study.best_trial.params),
    settings=settings(args),
    tuning=cell,
  )
  log(f"  {method}/{spec}: preset written to {store.write(tuned)}")
  return {**cell, "params": tuned.params}


def final_config(method, spec, args, overrides: dict, *, seeds: int, seed: int):
  c = protocol_config(method, spec, args, use_tuned=True)
  c.seed = seed
  c.population.size = seeds
  for key, value in overrides.items():
    dotted.set_(c, key, value)
  return c


def train_command(method, spec, overrides: dict, *, seeds: int, seed: int, workdir) -> str:
  sets = "".join(f" --config.{k}={v}" for k, v in overrides.items())
  population = f" --config.population.size={seeds}" if seeds > 1 else ""
  seed_arg = f" --config.seed={seed}" if seed else ""
  return (
    f"python train.py --config configs/default.py:{default_args(method, spec)}{seed_arg}"
    f"{population}{sets} --workdir {workdir}"
  )


def game(workdir: str, members: list[dict]) -> dict | None:
  """Each member's game at its last evaluation and at its selected step."""
  states = [layout.game_state(workdir, m["member"], m["best_step"]) for m in members]
  states = [s for s in states if s]
  if not states:
    return None
  last = [s["last"]["val_disc_acc"] for s in states]
  best = [s["best"]["val_disc_acc"] for s in states if "best" in s]
  lam = [s["last"]["lambda"] for s in states]
  return {
    "val_disc_acc_last": mean_std(last),
    "val_disc_acc_best": mean_std(best),
    "lambda_last": float(np.mean(lam)),
    "members": states,
  }


def final_workdir(root: str, name: str, spec: str) -> str:
  """Where the final run or ablation `name` ("mnsgan", "mnsgan/no-disc") of `spec` trains."""
  return os.path.join(root, "final", name.replace("/", "_"), slug(spec))


def run_cell(name, method, spec, args, overrides, *, prov, log, seeds, seed) -> dict:
  workdir = final_workdir(args.root, name, spec)
  if seed == 0:
    workdir = os.path.join(args.root, "preset_seed0", method, slug(spec))
  path = layout.path(workdir, layout.METRICS)
  started = time.perf_counter()
  if not os.path.exists(path):
    log(f"  {name}/{spec}: {seeds} seed(s) from {seed}")
    c = final_config(method, spec, args, overrides, seeds=seeds, seed=seed)
    trainer.train_and_evaluate(c, workdir, program_cache=args.program_cache)
  with open(path) as f:
    result = json.load(f)
  cell = {
    **summarise_members(result["members"]),
    "train_seconds": result["train_seconds"],
    "seconds": round(time.perf_counter() - started, 1),
    "game": game(workdir, result["members"]),
    "command": train_command(method, spec, overrides, seeds=seeds, seed=seed, workdir=workdir),
    "commit": prov["commit"],
    "tree_clean": prov["tree_clean"],
  }
  if method == "ms2gan" and not overrides and seed:
    cell["shared_only"] = shared_only(workdir)
  return cell


def shared_only(workdir: str) -> list[float]:
  """Test avg mAP of MS2GAN's final checkpoints ranked on shared features alone."""
  wd = trained.Workdir(workdir, retrieval="common")
  test = wd.split("test")
  return [wd.member(m).metrics(test)["avg_map"] for m in range(wd.size)]


def baseline_cell(spec, args, prov) -> dict:
  started = time.perf_counter()
  config = protocol_config("acmr", spec, args, use_tuned=False)
  source = inputs.DataSource.of(config)
  raw, _ = source.load()
  norm = source.fit(raw["train"])
  splits = {k: norm(v, k) for k, v in raw.items()}
  out = {}
  for name, fn in (("cca", baselines.cca_baseline), ("sm", baselines.semantic_matching_baseline)):
    r = fn(splits)
    out[name] = {"chosen": r["chosen"], "val": r["val"]["avg_map"], "test": r["test"]["avg_map"]}
    out[name].update({k: r["test"][k] for k in ("i2t_map", "t2i_map")})
  out["seconds"] = round(time.perf_counter() - started, 1)
  out["commit"], out["tree_clean"] = prov["commit"], prov["tree_clean"]
  return out


def mean_std(values) -> list[float]:
  """[mean, sample std] as the trainer reports members (`metrics.mean_and_std`: std 0 for
  one value); NaNs for none."""
  mean, std = metrics.mean_and_std([{"x": v} for v in values])
  return [mean.get("x", float("nan")), std.get("x", float("nan"))]


def summarise_members(members) -> dict:
  test = [m["test"]["avg_map"] for m in members]
  out = {"seeds": len(members), "test": test}
  mean, std = metrics.mean_and_std([m["test"] for m in members])
  for key in ("avg_map", "i2t_map", "t2i_map"):
    out[f"test_{key}"] = [mean[key], std[key]]
  out["val_avg_map"] = mean_std([m["val"]["avg_map"] for m in members])
  out["patience_stops"] = sum(m["stopped"] == "patience" for m in members)
  out["best_steps"] = [m["best_step"] for m in members]
  return out


class Results:
  """accuracy.json, read at the start and rewritten after every finished cell."""

  def __init__(self, path: str, args, prov):
    self.path, self.args = path, args
    protocol = {"version": PROTOCOL_VERSION, **{k: getattr(args, k) for k in PROTOCOL_KEYS}}
    self.data = {"protocol": protocol, "datasets": {}}
    if os.path.exists(path):
      with open(path) as f:
        old = json.load(f)
      if old.get("protocol") == protocol:
        self.data = old
    self.data["provenance"] = prov

  def get(self, spec, part, name):
    return self.data["datasets"].get(spec, {}).get(part, {}).get(name)

  def put(self, spec, part, name, cell) -> None:
    d = self.data["datasets"].setdefault(spec, {})
    d.setdefault(part, {})[name] = cell
    self.save()

  def save(self) -> None:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.data, f, indent=1)
    os.replace(tmp, self.path)


def run(args, results: Results, prov, log) -> None:
  def cell(spec, part, name, make, *a, **kw):
    if results.get(spec, part, name) is None and args.train:
      results.put(spec, part, name, make(*a, **kw))
    return results.get(spec, part, name)

  for spec in args.datasets:
    log(spec)
    dataset, extractors = parse_dataset(spec)
    for method in args.methods:
      if cell(spec, "tuning", method, tune_cell, method, spec, args, prov, log) is None:
        continue
      if presets.tuned(method, dataset, extractors) is None:
        raise SystemExit(
          f"{method}/{spec} was tuned (accuracy.json) but its preset file is missing: "
          f"{store.path(method, dataset, presets.variant_extractors(dataset, extractors))}"
        )
      final = dict(prov=prov, log=log, seeds=args.seeds, seed=FINAL_SEED)
      cell(spec, "final", method, run_cell, method, method, spec, args, {}, **final)
      if args.ablations:
        for name, (overrides, which) in ABLATIONS.items():
          if method in which:
            full = f"{method}/{name}"
            cell(spec, "ablations", full, run_cell, full, method, spec, args, overrides, **final)
      if args.preset_check:
        first = dict(prov=prov, log=log, seeds=1, seed=0)
        cell(spec, "preset_seed0", method, run_cell, method, method, spec, args, {}, **first)
    cell(spec, "baselines", "references", baseline_cell, spec, args, prov)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--methods", nargs="+", default=methods.names(), choices=methods.names())
  p.add_argument("--datasets", nargs="+", default=list(DATASETS), help="name[:modality=extractor]")
  p.add_argument("--trials", type=int, default=24)
  p.add_argument("--population", type=int, default=4, help="trials per program")
  p.add_argument("--seeds", type=int, default=5)
  p.add_argument("--eval-every", type=int, default=100)
  p.add_argument("--patience", type=int, default=10, help="evaluations without improvement")
  p.add_argument("--max-steps", type=int, default=10000, help="the step cap")
  p.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--preset-check", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--root", default="runs/bench_accuracy", help="where the workdirs go")
  p.add_argument("--data-dir", default=None, help="data directory (else MSCROSS_DATA_DIR)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  p.add_argument(
    "--train",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="--no-train tabulates the cells already in --out/accuracy.json and trains nothing",
  )
  p.add_argument("--readme", action="store_true", help="rewrite README's accuracy section")
  argv = sys.argv[1:] if argv is None else argv
  args = p.parse_args(argv)
  for spec in args.datasets:
    parse_dataset(spec)
  logging.getLogger("absl").setLevel(logging.ERROR)
  from mscross import cli

  args.program_cache = cli.enable_compilation_cache(True)
  stamp = time.perf_counter()

  def log(line):
    print(f"[{time.perf_counter() - stamp:7.0f}s] {line}", flush=True)

  prov = provenance_lib.provenance("bench/accuracy.py", argv)
  results = Results(os.path.join(args.out, "accuracy.json"), args, prov)
  try:
    run(args, results, prov, log)
  except KeyboardInterrupt:
    # Each cell is saved as it finishes and each study keeps its trials: the rerun resumes.
    print("interrupted: rerun the same command to resume", file=sys.stderr)
    return 130
  results.save()
  text = accuracy_report.markdown(results.data, args.datasets)
  with open(os.path.join(args.out, "accuracy.md"), "w") as f:
    f.write(text)
  print(text)
  if args.readme:
    readme = os.path.join(provenance_lib.ROOT, "README.md")
    accuracy_report.update_readme(readme, results.data, args.datasets)
  return 0


if __name__ == "__main__":
  sys.exit(main())
