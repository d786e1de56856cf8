"""Training on a dataset of raw images and texts: the extractors run once (cached), skipped pairs
are listed in the workdir, and the run's config records the extractors."""

import json

import numpy as np
import pytest
from helpers import trainer_config, write_archive, write_image
from toy_extractors import TINY_EXTRACTORS

import mscross
from mscross import data
from mscross.errors import DataError
from mscross.runs import layout
from mscross.training import trainer


def test_training_on_raw_pairs_lists_skipped_ones(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path / "cache"))
  folder = write_archive(tmp_path / "arch", per_class=24, test_per_class=6)
  (folder / "images" / "dogs" / "img40.jpg").unlink()
  c = trainer_config("mnsgan", steps=20)
  c.data.name, c.data.data_dir = "archive", str(folder)
  c.data.extractors = TINY_EXTRACTORS
  c.train.batch_size = 16
  run = tmp_path / "run"
  result = trainer.train_and_evaluate(c, str(run))
  assert result["test"]["avg_map"] > 0
  rows = (run / layout.PROBLEMS).read_text().splitlines()
  assert len(rows) == 2 and rows[1].startswith("train\ttxt40/img40\timage\t")
  assert "img40.jpg: no such image file" in rows[1]
  assert "1 pair(s) skipped" in caplog.text
  assert json.loads((run / layout.CONFIG).read_text())["data"]["extractors"] == TINY_EXTRACTORS
  # The trained model encodes new raw items as training saw them.
  model = mscross.load(str(run))
  test = data.load_split("archive", "test", folder, data.Options(extractors=TINY_EXTRACTORS))
  names = [pair_id.split("/") for pair_id in test.ids[:5]]
  images = [
    folder / "images" / ("cats", "dogs")[int(np.argmax(row))] / f"{i}.jpg"
    for (_, i), row in zip(names, test.label[:5], strict=True)
  ]
  texts = [folder / "texts" / f"{t}.txt" for t, _ in names]
  np.testing.assert_allclose(model.features_of("image", images), test.features["image"][:5], 1e-6)
  np.testing.assert_allclose(model.features_of("text", texts), test.features["text"][:5], 1e-6)
  np.testing.assert_allclose(
    model.encode_items("text", texts), model.encode("text", test.features["text"][:5]), 1e-6
  )
  with pytest.raises(DataError, match="nope.jpg: no such image file"):
    model.features_of("image", [folder / "nope.jpg"])

  with pytest.raises(Exception, match="bad_input"):
    c.data.bad_input = "stop"
    trainer.train_and_evaluate(c, str(tmp_path / "stop"))


def test_texts_the_extractor_cannot_read_are_said_and_noted_in_the_workdir(
  tmp_path, monkeypatch, caplog
):
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path / "cache"))
  folder = tmp_path / "photos"
  rows = ["image,text,label"]
  for n in range(40):
    write_image(folder / f"{n}.png", seed=n)
    rows.append(f"{n}.png,贵州龙里河大桥 {n},{('bridge', 'river')[n % 2]}")
  (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
  c = trainer_config("mnsgan", steps=10)
  c.data.name, c.data.data_dir, c.data.extractors = "manifest", str(folder), TINY_EXTRACTORS
  c.train.batch_size = 8
  run = tmp_path / "run"
  trainer.train_and_evaluate(c, str(run))
  rows = (run / layout.PROBLEMS).read_text().splitlines()
  assert len(rows) == 2 and rows[1].startswith("-\t-\ttext\t-\t") and rows[1].endswith("\twarned")
  assert "unknown to tiny_text's vocabulary" in rows[1] and "data.extractors.text=" in rows[1]
  said = [r for r in caplog.records if "unknown to tiny_text's vocabulary" in r.getMessage()]
  assert len(said) == 1 and str(run / layout.PROBLEMS) in said[0].getMessage()
