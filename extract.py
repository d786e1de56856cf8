"""Extracts a dataset's features into plain arrays (one .npy per modality and split, labels, ids),
the layout the `features` dataset reads back; raw images and texts go through the pretrained
extractors of `data.extractors`, and the extraction is cached like every dataset preparation.

    python extract.py --config configs/default.py:dataset=web_news --out features/web_news
    python extract.py --config configs/default.py:dataset=wikipedia \
        --config.data.extractors.text=minilm --out features/wikipedia_minilm
    python extract.py --config configs/default.py:dataset=manifest \
        --config.data.data_dir=my_photos --out features/my_photos

Prints a JSON line: rows per split, feature widths, pairs skipped. Kept short on purpose: the
logic lives in `mscross.data` (`export.write_features`) and `mscross.runs.inputs`.
"""

import json
import os
import sys

from absl import app, flags

from mscross import cli

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = cli.define_config_flag(os.path.join(_HERE, "configs", "default.py"))
_OUT = flags.DEFINE_string("out", None, "Folder to write the arrays into.", required=True)


def main(argv):
  del argv

  def go():
    from mscross.data import export
    from mscross.runs import inputs

    config = _CONFIG.value
    splits, problems = inputs.DataSource.of(config).load()
    summary = export.write_features(splits, problems, _OUT.value)
    print(json.dumps({"dataset": config.data.name, "out": _OUT.value, **summary}))

  sys.exit(cli.run(go))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
