"""Where a trained model loses to semantic matching, query by query, and which part of the
validation split predicts the test split: a diagnosis of a validation -> test gap.

  python bench/generalisation.py --workdir runs/mnsgan_web --out bench/results/generalisation
  python bench/generalisation.py --workdir runs/a --workdir runs/b --ensemble --out ...

The model (one member, or with --ensemble every member of the workdirs as one) and semantic
matching, SM (one logistic regression per modality, fitted here on the model's transformed train
split, its C chosen on validation, as the accuracy benchmark fits it) are scored query by query
(AP over the whole gallery; every direction's queries pooled) on validation and test:
- per direction: both mean APs, and the share of queries each wins;
- by novelty: a query's highest cosine similarity to a train item of its modality, on the
  extracted features before any transform; >= 0.99 counts as a near-duplicate of a train item;
- by position: the quarter of its split's list a query comes from (splits keep list order);
- per class, and the test queries SM wins by most, with their ids;
- parts of the validation split that stand for other ways of drawing it (all of it, its latest
  half, its items without a near-duplicate in train), each scored with the same trained model:
  which one's score lies nearest the test score. What retraining on each such split drawn
  anew (or k-fold over the train list) would show is beyond this script.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from provenance import header, provenance, write_results

from mscross import baselines
from mscross.data import splits
from mscross.metrics import directions, ranking
from mscross.retrieval import evaluate

SPLITS = ("validation", "test")
NEAR_DUPLICATE = splits.NEAR_DUPLICATE_COSINE
NOVELTY_BINS = (
  (NEAR_DUPLICATE, np.inf, f">= {NEAR_DUPLICATE}"),
  (0.95, 0.99, "0.95-0.99"),
  (0.9, 0.95, "0.90-0.95"),
  (-np.inf, 0.9, "< 0.90"),
)


def per_query_ap(embeddings: dict, labels: np.ndarray, modalities) -> dict[str, np.ndarray]:
  """{direction: AP@all [N]} of every query of a split against the whole split; NaN where a
  query has no relevant item."""
  out = {}
  for key, q, g in directions.direction_names(modalities):
    _, _, values = ranking.per_query_ranking(
      embeddings[q], embeddings[g], labels, labels, ks=(1,), map_ks=(1,), block_size=None
    )
    out[key] = np.where(values["num_rel"] > 0, values["map"], np.nan)
  return out


def pooled(ap: dict[str, np.ndarray], masks: dict[str, np.ndarray] | None = None) -> np.ndarray:
  """Every direction's APs of the queries in `masks` (per direction), NaNs dropped."""
  values = np.concatenate([a if masks is None else a[masks[k]] for k, a in ap.items()])
  return values[~np.isnan(values)]


def group_rows(model_ap, sm_ap, groups: dict[str, dict[str, np.ndarray]]) -> list[dict]:
  """Per group of queries (a boolean mask per direction): the query count and both mean APs."""
  rows = []
  for name, masks in groups.items():
    m, s = pooled(model_ap, masks), pooled(sm_ap, masks)
    mean_m, mean_s = (float(x.mean()) if len(x) else None for x in (m, s))
    diff = None if mean_m is None else mean_s - mean_m
    rows.append(
      {"group": name, "queries": len(m), "model": mean_m, "sm": mean_s, "sm_minus_model": diff}
    )
  return rows


class SplitScores:
  """Per-query APs of the model and SM on one split, and the groups of its queries."""

  def __init__(self, split, model_emb, sm_emb, raw, raw_train):
    self.split, self.modalities = split, split.modalities
    self.dirs = directions.direction_names(self.modalities)
    self.model = per_query_ap(model_emb, split.label, self.modalities)
    self.sm = per_query_ap(sm_emb, split.label, self.modalities)
    self.near = {
      m: splits.nearest_cosine(raw.features[m], raw_train.features[m]) for m in self.modalities
    }
    self.position = np.arange(len(split)) / len(split)
    self.classes = split.label.argmax(axis=1)

  def by_query(self, mask_of_modality) -> dict[str, np.ndarray]:
    """A mask per direction from a mask over the query modality's rows."""
    return {k: mask_of_modality(q) for k, q, _ in self.dirs}

  def by_row(self, mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: mask for k, _, _ in self.dirs}

  def groups(self) -> dict[str, list[dict]]:
    novelty_groups = {
      label: self.by_query(lambda q, lo=lo, hi=hi: (self.near[q] >= lo) & (self.near[q] < hi))
      for lo, hi, label in NOVELTY_BINS
    }
    quarters = {
      f"quarter {i + 1}": self.by_row((self.position >= i / 4) & (self.position < (i + 1) / 4))
      for i in range(4)
    }
    classes = {
      name: self.by_row(self.classes == c) for c, name in enumerate(self.split.class_names)
    }
    return {
      "by_novelty": group_rows(self.model, self.sm, novelty_groups),
      "by_position": group_rows(self.model, self.sm, quarters),
      "by_class": group_rows(self.model, self.sm, classes),
    }

  def directions_table(self) -> list[dict]:
    rows = []
    for k, _, _ in self.dirs:
      ok = ~np.isnan(self.model[k])
      m, s = self.model[k][ok], self.sm[k][ok]
      rows.append(
        {
          "direction": k,
          "model": float(m.mean()),
          "sm": float(s.mean()),
          "sm_wins": float(np.mean(s > m + 1e-9)),
          "model_wins": float(np.mean(m > s + 1e-9)),
        }
      )
    return rows

  def hardest(self, n: int) -> list[dict]:
    with np.errstate(invalid="ignore"):
      gap = np.nanmean(np.stack([self.sm[k] - self.model[k] for k, _, _ in self.dirs]), axis=0)
    order = np.argsort(-np.nan_to_num(gap, nan=-np.inf), kind="stable")[:n]
    return [
      {
        "id": str(self.split.ids[i]),
        "class": self.split.class_names[self.classes[i]],
        "model": float(np.nanmean([self.model[k][i] for k, _, _ in self.dirs])),
        "sm": float(np.nanmean([self.sm[k][i] for k, _, _ in self.dirs])),
        "novelty": {m: float(self.near[m][i]) for m in self.modalities},
      }
      for i in order
    ]


def diagnose(workdirs: list[str], *, ensemble: bool = False, member: int = 0, hardest=10) -> dict:
  """The diagnosis (module docstring) of the model of `workdirs` as a JSON-ready dict."""
  model = evaluate.load(workdirs if ensemble else workdirs[0], "ensemble" if ensemble else member)
  first = model.members[0].workdir if ensemble else model.workdir
  transformed = {name: first.split(name) for name in ("train", *SPLITS)}
  raw = first.source.load(("train", *SPLITS))[0]
  sm = baselines.semantic_matching_baseline(
    transformed, select_metric=first.config.eval.select_metric, keep_embeddings=True
  )
  scores, out = {}, {"sm_C": sm["chosen"]["C"], "splits": {}}
  for name in SPLITS:
    split, emb = model.split_embeddings(name)
    s = scores[name] = SplitScores(split, emb, sm["embeddings"][name], raw[name], raw["train"])
    out["splits"][name] = {
      "queries": len(split),
      "directions": s.directions_table(),
      "near_duplicates": {m: float(np.mean(s.near[m] >= NEAR_DUPLICATE)) for m in s.modalities},
      **s.groups(),
      "hardest": s.hardest(hardest),
    }
  test = scores["test"]
  test_model, test_sm = float(pooled(test.model).mean()), float(pooled(test.sm).mean())
  val = scores["validation"]
  parts = {
    "all (random)": val.by_row(np.ones(len(val.split), bool)),
    "latest half": val.by_row(val.position >= 0.5),
    "no near-duplicate": val.by_query(lambda q: val.near[q] < NEAR_DUPLICATE),
  }
  out["test"] = {"model": test_model, "sm": test_sm}
  out["validation_parts"] = [
    {**row, "model_gap": row["model"] - test_model, "sm_gap": row["sm"] - test_sm}
    for row in group_rows(val.model, val.sm, parts)
  ]
  return out


def _f(x) -> str:
  return "-" if x is None else f"{x:.4f}"


def markdown(result: dict, prov: dict) -> str:
  lines = ["# Where the model loses to semantic matching", "", header(prov)]
  lines += [
    f"Model: {result['model']}. SM's C (chosen on validation): {result['sm_C']}. Test, every "
    f"direction's queries pooled: model {_f(result['test']['model'])}, SM "
    f"{_f(result['test']['sm'])}.",
    "",
    "## Parts of the validation split as validation protocols (same trained model)",
    "",
    "| part | queries | model | SM | model val - test | SM val - test |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in result["validation_parts"]:
    lines.append(
      f"| {r['group']} | {r['queries']} | {_f(r['model'])} | {_f(r['sm'])} | "
      f"{r['model_gap']:+.4f} | {r['sm_gap']:+.4f} |"
    )
  for name, s in result["splits"].items():
    near = ", ".join(f"{m} {v:.1%}" for m, v in s["near_duplicates"].items())
    lines += ["", f"## {name} ({s['queries']} items; near-duplicates of a train item: {near})", ""]
    lines += [
      "| direction | model | SM | SM wins | model wins |",
      "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in s["directions"]:
      lines.append(
        f"| {r['direction']} | {_f(r['model'])} | {_f(r['sm'])} | {r['sm_wins']:.1%} | "
        f"{r['model_wins']:.1%} |"
      )
    groups = {"by_novelty": "novelty of the query", "by_position": "position in the list"}
    for key, title in {**groups, "by_class": "class"}.items():
      lines += [
        "",
        f"By {title}:",
        "",
        "| group | queries | model | SM | SM - model |",
        "| --- | ---: | ---: | ---: | ---: |",
      ]
      for r in s[key]:
        lines.append(
          f"| {r['group']} | {r['queries']} | {_f(r['model'])} | {_f(r['sm'])} | "
          f"{_f(r['sm_minus_model'])} |"
        )
  lines += [
    "",
    "## Test queries SM wins by most",
    "",
    "| id | class | model | SM | novelty |",
    "| --- | --- | ---: | ---: | --- |",
  ]
  for r in result["splits"]["test"]["hardest"]:
    near = ", ".join(f"{m} {v:.3f}" for m, v in r["novelty"].items())
    lines.append(f"| {r['id']} | {r['class']} | {r['model']:.4f} | {r['sm']:.4f} | {near} |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workdir", action="append", required=True, help="a trained workdir")
  p.add_argument("--ensemble", action="store_true", help="every member of the workdirs as one")
  p.add_argument("--member", type=int, default=0, help="the member to diagnose (no --ensemble)")
  p.add_argument("--hardest", type=int, default=10, help="how many test queries to list")
  p.add_argument("--out", required=True, help="results file stem: <out>.json and <out>.md")
  args = p.parse_args(argv)
  if len(args.workdir) > 1 and not args.ensemble:
    p.error("several workdirs are diagnosed as one model: add --ensemble")
  prov = provenance("bench/generalisation.py", argv)
  result = diagnose(args.workdir, ensemble=args.ensemble, member=args.member, hardest=args.hardest)
  what = "the ensemble of every member" if args.ensemble else f"member {args.member}"
  result["model"] = f"{what} of {', '.join(args.workdir)}"
  write_results(args.out, {"provenance": prov, **result}, markdown(result, prov))
  return 0


if __name__ == "__main__":
  sys.exit(main())
