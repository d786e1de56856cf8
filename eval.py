"""Evaluates the best (validation-selected) checkpoint of a training workdir.

    python eval.py --workdir runs/acmr_wiki [--split test] [--export runs/acmr_wiki/emb]

Prints the metrics as one JSON line. Kept short on purpose: the logic lives in `mscross.evaluate`.
"""

import sys

from absl import app, flags

from mscross import cli, evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by train.py.", required=True)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to score.")
_EXPORT = flags.DEFINE_string("export", None, "Write the split's embeddings as .npy files here.")


def main(argv):
  del argv

  def go():
    result = evaluate.evaluate_workdir(_WORKDIR.value, split=_SPLIT.value, export_dir=_EXPORT.value)
    print(evaluate.dump_json(result))

  sys.exit(cli.run(go))


if __name__ == "__main__":
  app.run(main)
