"""Evaluates the best (validation-selected) checkpoint of a training workdir.

    python eval.py --workdir runs/acmr_wiki [--split test] [--member 0] [--export DIR]
    python eval.py --workdir runs/acmr_wiki --report --topk 10
    python eval.py --workdir runs/mnsgan_web --ensemble            # every member as one model
    python eval.py --workdir runs/a --workdir runs/b --ensemble    # runs given together

Prints the metrics as one JSON line. Kept short on purpose: the logic lives in
`mscross.retrieval.evaluate`.
"""

import json
import sys

from absl import app, flags

from mscross import cli

_WORKDIR = flags.DEFINE_multi_string(
  "workdir", None, "A workdir written by train.py (several, with --ensemble).", required=True
)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to score.")
_MEMBER = flags.DEFINE_integer(
  "member", None, "Population member to evaluate (default: every member).", lower_bound=0
)
_ENSEMBLE = flags.DEFINE_bool(
  "ensemble",
  False,
  "Score every member of the workdir(s) as one model: the mean of the members' cosine "
  "similarities (outputs are written into the first workdir, named *_ensemble).",
)
_EXPORT = flags.DEFINE_string(
  "export", None, "Write the split's embeddings (emb_<modality>.npy, ids, labels) here."
)
_REPORT = flags.DEFINE_bool(
  "report",
  False,
  "Also write PR and precision@K curves, a per-class AP table and an HTML page of top-10 results "
  "into the workdir.",
)
_TOPK = flags.DEFINE_integer(
  "topk",
  None,
  "Also write the top-K neighbours of every query, every direction, to <workdir>/topk_<split>/.",
  lower_bound=1,
)


def main(argv):
  del argv

  def go():
    from mscross.retrieval import evaluate

    cli.enable_compilation_cache(cli.COMPILATION_CACHE.value)
    result, notes = evaluate.evaluate_workdir(
      _WORKDIR.value,
      split=_SPLIT.value,
      member=_MEMBER.value,
      ensemble=_ENSEMBLE.value,
      export_dir=_EXPORT.value,
      report=_REPORT.value,
      topk=_TOPK.value,
    )
    print(json.dumps(result, sort_keys=True))
    for note in notes:
      print(note, file=sys.stderr)

  sys.exit(cli.run(go))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
