"""Evaluates the best (validation-selected) checkpoint of a training workdir.

    python eval.py --workdir runs/acmr_wiki [--split test] [--export runs/acmr_wiki/emb]

Prints the metrics as one JSON line. Kept short on purpose: the logic lives in `mscross.evaluate`.
"""

import sys

from absl import app, flags

from mscross import cli, evaluate, report, retrieval

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by train.py.", required=True)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to score.")
_EXPORT = flags.DEFINE_string("export", None, "Write the split's embeddings as .npy files here.")
_REPORT = flags.DEFINE_bool(
  "report",
  False,
  "Also write PR and precision@K curves, a per-class AP table and an HTML page of top-10 results "
  "into the workdir.",
)
_TOPK = flags.DEFINE_integer(
  "topk",
  None,
  "Also write the top-K neighbours of every query, both directions, to <workdir>/topk_<split>/.",
  lower_bound=1,
)


def main(argv):
  del argv

  def go():
    result = evaluate.evaluate_workdir(_WORKDIR.value, split=_SPLIT.value, export_dir=_EXPORT.value)
    print(evaluate.dump_json(result))
    if _REPORT.value:
      path = report.write_report(_WORKDIR.value, split=_SPLIT.value)
      print(f"report: {path}", file=sys.stderr)
    if _TOPK.value:
      path = retrieval.write_topk(_WORKDIR.value, split=_SPLIT.value, k=_TOPK.value)
      print(f"top-{_TOPK.value} neighbours: {path}", file=sys.stderr)

  sys.exit(cli.run(go))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
