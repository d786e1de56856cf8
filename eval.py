"""Evaluates the best (validation-selected) checkpoint of a training workdir.

    python eval.py --workdir runs/acmr_wiki [--split test] [--export runs/acmr_wiki/emb]

Prints the metrics as one JSON line. Kept short on purpose: the logic lives in `mscross.evaluate`.
"""

import sys

from absl import app, flags

from mscross import cli, evaluate, report

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by train.py.", required=True)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to score.")
_EXPORT = flags.DEFINE_string("export", None, "Write the split's embeddings as .npy files here.")
_REPORT = flags.DEFINE_bool(
  "report",
  False,
  "Also write PR and precision@K curves, a per-class AP table and an HTML page of top-10 results "
  "into the workdir.",
)


def main(argv):
  del argv

  def go():
    result = evaluate.evaluate_workdir(_WORKDIR.value, split=_SPLIT.value, export_dir=_EXPORT.value)
    print(evaluate.dump_json(result))
    if _REPORT.value:
      path = report.write_report(_WORKDIR.value, split=_SPLIT.value)
      print(f"report: {path}", file=sys.stderr)

  sys.exit(cli.run(go))


if __name__ == "__main__":
  app.run(main)
