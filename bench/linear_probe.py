"""How much each feature set says about the class: a linear probe per feature set.

    python bench/linear_probe.py                      # every feature set below
    python bench/linear_probe.py --sets wikipedia/text/lda web_news/image/efficientnet_lite0

Per feature set: features z-scored with training statistics, multinomial logistic regression
(scikit-learn, L2) with C chosen on the VALIDATION split from a grid, then test accuracy once.
The features are the datasets' own (Wikipedia's SIFT and LDA) or a pretrained extractor's,
extracted and cached by `mscross.data` like any training run's. Writes
bench/results/linear_probe.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from provenance import ROOT, header, provenance, write_results

from mscross import data

# "<dataset>/<modality>/<features>": "own" is the dataset's own features, else an extractor.
SETS = (
  "wikipedia/image/own",
  "wikipedia/text/own",
  "wikipedia/text/minilm",
  "wikipedia/text/wordllama",
  "web_news/image/efficientnet_lite0",
  "web_news/text/minilm",
  "web_news/text/wordllama",
)
NAMES = {("wikipedia", "image", "own"): "SIFT BoVW", ("wikipedia", "text", "own"): "LDA topics"}
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def probe(train, validation, test, seed: int = 0) -> dict:
  """Validation-chosen C, then test accuracy, of logistic regression on (x, class) triples."""
  from sklearn.linear_model import LogisticRegression

  mean, std = train[0].mean(axis=0), train[0].std(axis=0)
  std = np.where(std > 1e-8, std, 1.0)
  scale = lambda x: (x - mean) / std
  scores = {}
  for c in C_GRID:
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    model.fit(scale(train[0]), train[1])
    scores[c] = model.score(scale(validation[0]), validation[1])
  best = max(scores, key=lambda c: (scores[c], -c))
  model = LogisticRegression(C=best, max_iter=2000, random_state=seed)
  model.fit(scale(train[0]), train[1])
  return {
    "C": best,
    "validation_accuracy": scores[best],
    "test_accuracy": float(model.score(scale(test[0]), test[1])),
  }


def run_set(name: str, data_dir: str | None) -> dict:
  dataset, modality, features = name.split("/")
  options = data.Options(extractors={} if features == "own" else {modality: features})
  started = time.perf_counter()
  splits = {s: data.load_split(dataset, s, data_dir, options) for s in data.SPLITS}
  load_seconds = time.perf_counter() - started
  arrays = {
    s: (split.features[modality], np.argmax(split.label, axis=1)) for s, split in splits.items()
  }
  result = probe(arrays["train"], arrays["validation"], arrays["test"])
  result.update(
    set=name,
    features=NAMES.get((dataset, modality, features), features),
    dim=int(arrays["train"][0].shape[1]),
    sizes=[len(splits[s]) for s in data.SPLITS],
    load_seconds=round(load_seconds, 1),
  )
  return result


def markdown(results: dict) -> str:
  lines = [
    "# Linear probe per feature set",
    "",
    header(results["provenance"]),
    "Logistic regression on z-scored features, C chosen on validation from "
    f"{list(C_GRID)}; test accuracy once. Sizes are train/validation/test pairs (pairs with "
    "an unreadable item skipped).",
    "",
    "| dataset | modality | features | dim | C | validation acc. | test acc. | sizes |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in results["sets"]:
    dataset, modality, _ = r["set"].split("/")
    lines.append(
      f"| {dataset} | {modality} | {r['features']} | {r['dim']} | {r['C']:g} | "
      f"{r['validation_accuracy']:.3f} | **{r['test_accuracy']:.3f}** | "
      f"{'/'.join(map(str, r['sizes']))} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sets", nargs="+", default=list(SETS))
  parser.add_argument("--data-dir", default=None, help="default: $MSCROSS_DATA_DIR")
  parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "linear_probe"))
  args = parser.parse_args(argv)
  results = {"provenance": provenance("bench/linear_probe.py", argv), "sets": []}
  for name in args.sets:
    r = run_set(name, data.resolve_data_dir(args.data_dir))
    print(json.dumps(r), flush=True)
    results["sets"].append(r)
  write_results(args.out, results, markdown(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
