"""MNS-GAN on deep features against the shallow-feature Wikipedia row: one run each, seed 0,
preset settings (`configs/default.py:method=mnsgan,dataset=...`), test mAP@all per direction.

    python bench/deep_features.py
    python bench/deep_features.py --rows wikipedia wikipedia/text=minilm web_news

A row is a dataset name, optionally with extractor choices "<modality>=<extractor>" after a slash
(separated by "+"). Each run is a workdir under --root; a finished one is read back, not redone.
Writes bench/results/deep_features.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from provenance import ROOT, header, provenance, write_results

from mscross import presets
from mscross.training import trainer

ROWS = ("wikipedia", "wikipedia/text=minilm", "wikipedia/text=wordllama", "web_news")
METHOD = "mnsgan"


def config_of(row: str):
  dataset, _, choices = row.partition("/")
  c = presets.build(METHOD, dataset)
  for choice in filter(None, choices.split("+")):
    modality, extractor = choice.split("=")
    c.data.extractors[modality] = extractor
  return c


def run_row(row: str, root: str) -> dict:
  c = config_of(row)
  workdir = os.path.join(root, row.replace("/", "_").replace("=", "-").replace("+", "_"))
  metrics_file = os.path.join(workdir, "metrics.json")
  if os.path.exists(metrics_file):
    with open(metrics_file) as f:
      result = json.load(f)
  else:
    result = trainer.train_and_evaluate(c, workdir)
  test = result["test"]
  member = result["members"][0]
  return {
    "row": row,
    "extractors": dict(c.data.extractors),
    "workdir": os.path.relpath(workdir, ROOT),
    "best_step": member["best_step"],
    "i2t_map": test["i2t_map"],
    "t2i_map": test["t2i_map"],
    "avg_map": test["avg_map"],
    "command": (
      f"python train.py --config configs/default.py:method={METHOD},dataset={c.data.name}"
      + "".join(f" --config.data.extractors.{m}={e}" for m, e in c.data.extractors.items() if e)
    ),
  }


def markdown(results: dict) -> str:
  lines = [
    "# MNS-GAN on deep features",
    "",
    header(results["provenance"]),
    "One run per row, seed 0, the preset's settings; test mAP@all, the state chosen on "
    "validation. Wikipedia's image features are SIFT in every row (its images are not "
    "available); its rows differ in the text features.",
    "",
    "| dataset | image features | text features | i2t mAP | t2i mAP | avg mAP | best step |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in results["rows"]:
    dataset = r["row"].split("/")[0]
    image = r["extractors"].get("image") or "SIFT BoVW"
    text = r["extractors"].get("text") or "LDA topics"
    lines.append(
      f"| {dataset} | {image} | {text} | {r['i2t_map']:.3f} | {r['t2i_map']:.3f} | "
      f"**{r['avg_map']:.3f}** | {r['best_step']} |"
    )
  lines += ["", "Commands:", ""] + [f"    {r['command']}" for r in results["rows"]]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", nargs="+", default=list(ROWS))
  parser.add_argument("--root", default=os.path.join(ROOT, "runs", "bench_deep_features"))
  parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "deep_features"))
  args = parser.parse_args(argv)
  results = {"provenance": provenance("bench/deep_features.py", argv), "rows": []}
  for row in args.rows:
    r = run_row(row, args.root)
    print(json.dumps(r), flush=True)
    results["rows"].append(r)
  write_results(args.out, results, markdown(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
