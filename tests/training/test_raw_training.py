"""Training on a dataset of raw images and texts: the encoders run once (cached), skipped pairs
are listed in the workdir, and the run's config records the encoders."""

import json

import pytest
from conftest import TINY_ENCODERS, trainer_config, write_archive

from mscross.training import trainer, workdir


def test_training_on_raw_pairs_lists_skipped_ones(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path / "cache"))
  folder = write_archive(tmp_path / "arch", per_class=24, test_per_class=6)
  (folder / "images" / "dogs" / "img40.jpg").unlink()
  c = trainer_config("mnsgan", steps=20)
  c.data.name, c.data.data_dir = "archive", str(folder)
  c.data.encoders = TINY_ENCODERS
  c.train.batch_size = 16
  run = tmp_path / "run"
  result = trainer.train_and_evaluate(c, str(run))
  assert result["test"]["avg_map"] > 0
  rows = (run / workdir.PROBLEMS).read_text().splitlines()
  assert len(rows) == 2 and rows[1].startswith("train\ttxt40/img40\timage\t")
  assert "img40.jpg: no such image file" in rows[1]
  assert "1 pair(s) skipped" in caplog.text
  assert json.loads((run / workdir.CONFIG).read_text())["data"]["encoders"] == TINY_ENCODERS
  with pytest.raises(Exception, match="bad_input"):
    c.data.bad_input = "stop"
    trainer.train_and_evaluate(c, str(tmp_path / "stop"))
