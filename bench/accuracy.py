"""Accuracy benchmark: every method x dataset x seed, model chosen on validation, test mAP@all.

    python bench/accuracy.py                      # the full table (5 seeds) and the ablations
    python bench/accuracy.py --seeds 1 --datasets digits --no-ablations   # a quick look

Each run is an ordinary training workdir under --root; a run that already finished is read back
instead of retrained, so an interrupted benchmark continues where it stopped. Writes
`bench/results/accuracy.md` and `accuracy.json` (every run, and mean +- std over seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import time

from mscross import evaluate, input_pipeline, presets, trainer

DATASETS = {"wikipedia": "wikipedia", "mfeat": "uci_mfeat/fou_pix", "digits": "digits_halves"}
METHODS = ("acmr", "mnsgan", "ms2gan", "dscmr")


@dataclasses.dataclass(frozen=True)
class Variant:
  """A named change to a method's preset config."""

  name: str
  method: str
  overrides: dict
  note: str


ABLATIONS = (
  Variant(
    "mnsgan/1-negative",
    "mnsgan",
    {"loss.multi_negative.negatives": "hardest", "loss.multi_negative.k": 1},
    "one (hardest) negative per anchor instead of all",
  ),
  Variant(
    "mnsgan/no-intra",
    "mnsgan",
    {"loss.multi_negative.intra_weight": 0.0},
    "inter-modal negatives only",
  ),
  Variant(
    "ms2gan/orthogonality",
    "ms2gan",
    {"loss.ms2gan_difference.kind": "orthogonality"},
    "orthogonality instead of large-margin difference loss",
  ),
  Variant("acmr/no-disc", "acmr", {"adv.enabled": False}, "discriminator switched off"),
  Variant("mnsgan/no-disc", "mnsgan", {"adv.enabled": False}, "discriminator switched off"),
  Variant("ms2gan/no-disc", "ms2gan", {"adv.enabled": False}, "discriminator switched off"),
)


def run_one(
  variant: Variant, dataset: str, seed: int, root: str, data_dir: str | None, *, train: bool
) -> dict | None:
  """The run's figures; trains it unless it finished before (None if absent and not train)."""
  config = presets.build(variant.method, dataset)
  presets.apply_overrides(config, variant.overrides)
  config.seed = seed
  if data_dir:
    config.data.data_dir = data_dir
  workdir = os.path.join(root, variant.name.replace("/", "_"), dataset, f"seed{seed}")
  metrics_path = os.path.join(workdir, "metrics.json")
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      result = json.load(f)
  elif train:
    result = trainer.train_and_evaluate(config, workdir)
  else:
    return None
  row = {
    "variant": variant.name,
    "dataset": dataset,
    "seed": seed,
    "best_step": result["best_step"],
    "train_seconds": result["train_seconds"],
    "val_avg_map": result["val"]["avg_map"],
    **{f"test_{k}": result["test"][k] for k in ("i2t_map", "t2i_map", "avg_map")},
  }
  if variant.name == "ms2gan":
    row.update(shared_only(workdir))
  return row


def shared_only(workdir: str) -> dict:
  """Test mAP of the same (joint-selected) MS2GAN checkpoint ranked on shared features alone."""
  # The network does not depend on the retrieval kind; only the embedding function does.
  config, net, _, gen_params = evaluate.restore_for_eval(workdir)
  config.model.retrieval = "common"
  test = input_pipeline.load_splits(config, splits=("train", "test"))["test"]
  m = evaluate.split_metrics(config, evaluate.make_embed_fn(config, net), gen_params, test)
  return {f"shared_only_test_{k}": m[k] for k in ("i2t_map", "t2i_map", "avg_map")}


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.machine()


def summarise(rows: list[dict]) -> list[dict]:
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r["variant"], r["dataset"]), []).append(r)
  out = []
  for (variant, dataset), rs in groups.items():
    entry = {"variant": variant, "dataset": dataset, "seeds": len(rs)}
    keys = [k for k in rs[0] if k.startswith(("test_", "shared_only_", "val_"))]
    for k in keys + ["train_seconds"]:
      vals = [r[k] for r in rs]
      entry[k] = statistics.fmean(vals)
      entry[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    out.append(entry)
  return out


def fmt(entry: dict, key: str) -> str:
  return f"{entry[key]:.4f} ± {entry[key + '_std']:.4f}"


def markdown(summary: list[dict], header: str) -> str:
  lines = [
    header,
    "",
    "| method | dataset | seeds | image→text | text→image | average | val average | s/run |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for e in summary:
    lines.append(
      f"| {e['variant']} | {e['dataset']} | {e['seeds']} | {fmt(e, 'test_i2t_map')} | "
      f"{fmt(e, 'test_t2i_map')} | {fmt(e, 'test_avg_map')} | {fmt(e, 'val_avg_map')} | "
      f"{e['train_seconds']:.1f} |"
    )
  shared = [e for e in summary if "shared_only_test_avg_map" in e]
  if shared:
    lines += [
      "",
      "MS2GAN retrieval ablation (same checkpoints): joint [specific; shared] vs shared only",
      "",
      "| dataset | joint average | shared-only image→text | shared-only text→image | "
      "shared-only average |",
      "| --- | --- | --- | --- | --- |",
    ]
    for e in shared:
      lines.append(
        f"| {e['dataset']} | {fmt(e, 'test_avg_map')} | {fmt(e, 'shared_only_test_i2t_map')} | "
        f"{fmt(e, 'shared_only_test_t2i_map')} | {fmt(e, 'shared_only_test_avg_map')} |"
      )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
  p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
  p.add_argument("--seeds", type=int, default=5)
  p.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--ablation-datasets", nargs="+", default=["wikipedia"], choices=list(DATASETS))
  p.add_argument("--root", default="runs/bench_accuracy", help="where the run workdirs go")
  p.add_argument("--data-dir", default=None, help="data directory (else MSCROSS_DATA_DIR)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  p.add_argument(
    "--train",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="--no-train tabulates the runs that already finished under --root and trains nothing",
  )
  args = p.parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)

  plan = [(Variant(m, m, {}, ""), d) for d in args.datasets for m in args.methods]
  if args.ablations:
    plan += [(v, d) for d in args.ablation_datasets for v in ABLATIONS if v.method in args.methods]
  rows, started = [], time.perf_counter()
  total = len(plan) * args.seeds
  # Seeds outermost: a benchmark cut short still covers every cell, with fewer seeds.
  for seed in range(args.seeds):
    for variant, dataset in plan:
      row = run_one(variant, dataset, seed, args.root, args.data_dir, train=args.train)
      if row is None:
        continue
      rows.append(row)
      print(
        f"[{len(rows)}/{total} {time.perf_counter() - started:.0f}s] {variant.name} {dataset} "
        f"seed {seed}: test avg mAP {row['test_avg_map']:.4f} "
        f"(i2t {row['test_i2t_map']:.4f}, t2i {row['test_t2i_map']:.4f}), "
        f"best step {row['best_step']}, {row['train_seconds']:.0f}s",
        flush=True,
      )

  summary = summarise(rows)
  machine = cpu_name()
  command = " ".join(sys.argv[1:] if argv is None else argv)
  header = (
    f"mAP@all on the test split (cosine ranking over the whole test set), model chosen on the "
    f"validation split, mean ± std over the seeds listed. Machine: {machine}, "
    f"{os.cpu_count()} cores, Python {sys.version.split()[0]}. "
    f"Command: `python bench/accuracy.py {command}`"
  )
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "accuracy.json"), "w") as f:
    json.dump(
      {"runs": rows, "summary": summary, "ablations": [dataclasses.asdict(v) for v in ABLATIONS]},
      f,
      indent=2,
    )
  table = markdown(summary, header)
  with open(os.path.join(args.out, "accuracy.md"), "w") as f:
    f.write(table)
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
