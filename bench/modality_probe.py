"""Does the adversary change what the embeddings say about their modality? A fresh probe.

    python bench/modality_probe.py --root runs/bench                 # the benchmark's own runs
    python bench/modality_probe.py --datasets web_news --methods mnsgan --seeds 2 --root runs/probe

The benchmark's "no-disc" ablation asks whether the adversary changes retrieval; the
discriminator's own validation accuracy says whether IT can still tell the modalities apart. A
discriminator that sits at chance may have been beaten, or may never have been shown anything
separable. This script asks an outside judge: per (method, dataset), the tuned preset is trained
with the adversary on and off (`--config.adv.enabled=False`), the same seeds; then a linear
probe (standardised inputs, logistic regression, scikit-learn) learns the modality from each
member's common embeddings of the VALIDATION split (what the discriminator sees), scored by
5-fold cross-validation in which both sides of a pair fall in the same fold. Chance is 1/K.

The runs use `bench/accuracy.py`'s layout and configs (`<root>/final/<method>[_no-disc]/
<dataset>`), so with the benchmark's `--root` and its 5 seeds the probe reads the benchmark's
own checkpoints and trains only what is missing. Writes bench/results/modality_probe.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from accuracy import final_config, final_workdir, game, mean_std
from provenance import ROOT, header, provenance, write_results
from scipy import stats

from mscross import cli
from mscross.retrieval import trained
from mscross.runs import layout  # noqa: E402
from mscross.training import trainer

FOLDS = 5


def probe_accuracy(embeddings: dict[str, np.ndarray], *, folds: int = FOLDS, seed: int = 0):
  """Cross-validated accuracy of a linear probe that predicts the modality of an embedding.

  Args:
    embeddings: {modality: [N, d]}, row i of every modality from the same pair.
    folds: cross-validation folds; a pair's rows are always in the same fold.

  Returns:
    The mean held-out accuracy (chance is 1 / number of modalities).
  """
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import GroupKFold, cross_val_score
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  names = sorted(embeddings)
  n = len(embeddings[names[0]])
  x = np.concatenate([np.asarray(embeddings[m], np.float64) for m in names])
  y = np.repeat(np.arange(len(names)), n)
  pairs = np.tile(np.arange(n), len(names))
  probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
  scores = cross_val_score(probe, x, y, groups=pairs, cv=GroupKFold(n_splits=folds))
  return float(np.mean(scores))


def run(method: str, spec: str, adversary: bool, args, log) -> dict:
  name = method if adversary else f"{method}/no-disc"
  workdir = final_workdir(args.root, name, spec)
  metrics_path = layout.path(workdir, layout.METRICS)
  if not os.path.exists(metrics_path):
    log(f"  {name}/{spec}: training {args.seeds} seed(s) from {args.seed}")
    overrides = {} if adversary else {"adv.enabled": False}
    c = final_config(method, spec, args, overrides, seeds=args.seeds, seed=args.seed)
    trainer.train_and_evaluate(c, workdir, program_cache=args.program_cache)
  with open(metrics_path) as f:
    members = json.load(f)["members"]
  if len(members) != args.seeds:
    raise SystemExit(f"{workdir} holds {len(members)} members, not --seeds {args.seeds}")
  wd = trained.Workdir(workdir, retrieval="common")
  validation = wd.split("validation")
  probes = [probe_accuracy(wd.member(m).embed(validation)) for m in range(wd.size)]
  played = game(workdir, members)
  discs = [state["last"]["val_disc_acc"] for state in played["members"]] if played else []
  return {
    "workdir": workdir,
    "modalities": len(wd.spec.modalities),
    "probe": probes,
    "disc_val_acc_last": discs,
    "test_avg_map": [m["test"]["avg_map"] for m in members],
  }


def _fmt(values) -> str:
  if not values:
    return "–"
  mean, std = mean_std(values)
  return f"{mean:.3f} ± {std:.3f}"


def markdown(results: dict, prov: dict) -> str:
  lines = [
    "# Modality probe: what the adversary changes in the embeddings",
    "",
    header(prov),
    "Per member, a linear probe's 5-fold accuracy at telling the modality from the common "
    "embedding of a validation item (chance 1/K; both sides of a pair in the same fold), beside "
    "the trained discriminator's own validation accuracy at its last evaluation. Mean ± std over "
    "the seeds; p: Welch's t-test of the probe accuracies, adversary on against off.",
    "",
    "| method | dataset | seeds | probe, adversary on | probe, adversary off | p | "
    "discriminator (last) | test avg mAP on | test avg mAP off |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for key, r in results.items():
    method, spec = key.split(" ", 1)
    on, off = r["on"], r["off"]
    p = r.get("p")
    lines.append(
      f"| {method} | {spec} | {len(on['probe'])} | {_fmt(on['probe'])} | {_fmt(off['probe'])} | "
      f"{'–' if p is None else f'{p:.2g}'} | {_fmt(on['disc_val_acc_last'])} | "
      f"{np.mean(on['test_avg_map']):.4f} | {np.mean(off['test_avg_map']):.4f} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--methods", nargs="+", default=["mnsgan", "ms2gan"])
  parser.add_argument("--datasets", nargs="+", default=["web_news", "uci_mfeat/fou_pix"])
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--seed", type=int, default=1000, help="the first seed (the benchmark's)")
  parser.add_argument("--root", required=True, help="where the runs are (the benchmark's root)")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
  args = parser.parse_args(argv)
  prov = provenance("bench/modality_probe.py", sys.argv[1:] if argv is None else argv)
  args.program_cache = cli.enable_compilation_cache(True)
  started = time.perf_counter()
  log = lambda line: print(f"[{time.perf_counter() - started:7.0f}s] {line}", flush=True)
  results = {}
  for spec in args.datasets:
    for method in args.methods:
      on = run(method, spec, True, args, log)
      off = run(method, spec, False, args, log)
      p = None
      if len(on["probe"]) > 1:
        p = float(stats.ttest_ind(on["probe"], off["probe"], equal_var=False).pvalue)
      results[f"{method} {spec}"] = {"on": on, "off": off, "p": p}
      log(
        f"{method}/{spec}: probe on {mean_std(on['probe'])}, off {mean_std(off['probe'])}, "
        f"discriminator {mean_std(on['disc_val_acc_last'])}"
      )
  report = {"provenance": prov, "protocol": {"folds": FOLDS, "seeds": args.seeds}, **results}
  write_results(os.path.join(args.out, "modality_probe"), report, markdown(results, prov))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
