"""Raw items on a report's pages: image thumbnails (written once, referenced relatively), the
opening words of texts (escaped), placeholders for unreadable items; the report of a model
trained on raw pairs through `evaluate_workdir`; and, where Chromium is installed, a screenshot
of the page."""

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import bench_module, trainer_config, write_archive, write_image
from toy_extractors import TINY_EXTRACTORS

from mscross import metrics
from mscross.data.splits import Split
from mscross.retrieval import report, report_items

N = 12
MISSING = 3  # the item whose image file does not exist
LONG_TEXT = "<b>bold</b> & co | " + " ".join(f"w{i}" for i in range(40))


def raw_split(tmp_path: Path):
  """A labelled image-text split of N pairs, ids that HTML must escape, each pair's raw items:
  generated images (one missing), text files and an inline text."""
  rng = np.random.default_rng(0)
  label = np.eye(3, dtype=np.float32)[np.arange(N) % 3]
  ids = np.array([f"<p&{i}>" for i in range(N)])
  split = Split(
    features={m: rng.standard_normal((N, 3)).astype(np.float32) for m in ("image", "text")},
    label=label,
    ids=ids,
    class_names=("a", "b", "c"),
  )
  centers = 2.0 * rng.standard_normal((3, 6))
  embeddings = {
    m: (label @ centers + rng.standard_normal((N, 6))).astype(np.float32) for m in ("image", "text")
  }
  items = {}
  for i, pair_id in enumerate(ids):
    image = tmp_path / "src" / f"img{i}.png"
    if i != MISSING:
      write_image(image, size=(200 + 10 * i, 120), seed=i)
    text = tmp_path / "src" / f"t{i}.txt"
    text.write_text(LONG_TEXT if i == 0 else f"pair {i} says hello", encoding="utf-8")
    items[str(pair_id)] = {"image": image, "text": "inline words" if i == 1 else text}
  return split, embeddings, items


def write(out: Path, split, embeddings, items=None) -> Path:
  return Path(
    report.write_report(
      str(out),
      title="raw",
      split=split,
      embeddings=embeddings,
      summary=metrics.retrieval_metrics(embeddings, split.label),
      num_queries=N,  # every item is a query: every image and text is shown
      raw_items=items,
    )
  )


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("items")
  split, embeddings, items = raw_split(tmp)
  return write(tmp / "report", split, embeddings, items), split, embeddings, items


def thumb_sources(page: str) -> list[str]:
  return [s for s in re.findall(r'<img src="([^"]+)"', page) if s.startswith("thumbs/")]


def test_images_show_as_relative_thumbnails_written_once(written, tmp_path):
  from PIL import Image

  out, *_ = written
  page = (out / "index.html").read_text(encoding="utf-8")
  sources = thumb_sources(page)
  # Every readable image, as a query (image -> text) and among the results (text -> image).
  assert len(set(sources)) == N - 1 and len(sources) > N
  files = sorted((out / "thumbs").iterdir())
  assert [f"thumbs/{f.name}" for f in files] == sorted(set(sources))
  for f in files:
    with Image.open(f) as im:
      assert im.format == "JPEG" and max(im.size) == report_items.THUMB_PX
  # Relative references: a moved copy of the folder still finds them.
  moved = shutil.copytree(out, tmp_path / "moved")
  assert all((moved / s).is_file() for s in sources)
  assert not re.search(r'src="(/|file:)', page)


def test_texts_show_their_opening_words_escaped(written):
  out, *_ = written
  page = (out / "index.html").read_text(encoding="utf-8")
  words = " ".join(LONG_TEXT.split()[: report_items.SNIPPET_WORDS])
  assert f'<div class="snippet">{html.escape(words)}\u2026</div>' in page
  assert "<b>bold</b>" not in page and "w30" not in page
  assert "pair 5 says hello" in page and "inline words" in page
  md = (out / "index.md").read_text(encoding="utf-8")
  assert "&lt;b&gt;bold&lt;/b&gt; &amp; co \\| w0" in md and "![image](thumbs/" in md


def test_an_unreadable_image_gets_a_placeholder(written):
  out, split, *_ = written
  page = (out / "index.html").read_text(encoding="utf-8")
  assert page.count("image unavailable") >= 2  # as a query and as a result
  assert "no such image file" in page  # the reason, in the tooltip
  assert "*image unavailable*" in (out / "index.md").read_text(encoding="utf-8")
  loaded = json.loads((out / "report.json").read_text(encoding="utf-8"))
  query = next(q for q in loaded["examples"] if q["direction"] == "i2t" and q["index"] == MISSING)
  assert query["item"]["kind"] == "image" and "no such image file" in query["item"]["unavailable"]
  assert all(r["item"]["kind"] == "text" for r in query["results"])


def test_without_raw_items_the_report_shows_ids_and_drops_old_thumbnails(written, tmp_path):
  out, split, embeddings, items = written
  again = shutil.copytree(out, tmp_path / "again")
  write(again, split, embeddings)
  assert not (again / "thumbs").exists()
  assert 'class="item"' not in (again / "index.html").read_text(encoding="utf-8")
  # Modalities without raw items (Wikipedia's images) stay bare.
  texts_only = {k: {"text": v["text"]} for k, v in items.items()}
  write(again, split, embeddings, texts_only)
  page = (again / "index.html").read_text(encoding="utf-8")
  assert not (again / "thumbs").exists() and "thumbs/" not in page and "pair 5 says" in page


def test_snippets_of_texts_without_spaces_are_cut_by_width():
  chinese = "\u8fd9\u662f\u4e2d\u6587" * 100
  short = report_items.snippet(chinese)
  assert short.endswith("\u2026") and len(short) == report_items.SNIPPET_WIDTH // 2 + 1
  assert report_items.snippet("a b c") == "a b c"
  assert report_items.snippet(" ".join(["word"] * 60)).count("word") == report_items.SNIPPET_WORDS


def test_eval_report_of_a_raw_dataset_shows_its_items(tmp_path, monkeypatch):
  from mscross.retrieval import evaluate
  from mscross.training import trainer

  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path / "cache"))
  folder = write_archive(tmp_path / "arch", per_class=12, test_per_class=4)
  # Two steps of the method without a discriminator: the least to compile for a checkpoint.
  c = trainer_config("dscmr", steps=2)
  c.train.eval_every = c.train.checkpoint_every = 2
  c.data.name, c.data.data_dir = "archive", str(folder)
  c.data.extractors = TINY_EXTRACTORS
  c.train.batch_size = 8
  run = tmp_path / "run"
  trainer.train_and_evaluate(c, str(run))
  _, notes = evaluate.evaluate_workdir(str(run), report=True)
  out = run / "report_test"
  page = (out / "index.html").read_text(encoding="utf-8")
  assert thumb_sources(page) and all((out / s).is_file() for s in thumb_sources(page))
  assert re.search(r'<div class="snippet">(meow|bark) ', page)
  assert "unreadable" not in " ".join(notes)
  # A source folder gone since training: the report shows ids only, and says why.
  shutil.rmtree(folder)
  notes = []
  assert evaluate._raw_items(c, notes) == {}
  assert len(notes) == 1 and notes[0].startswith("report: shows ids only")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed")
def test_screenshot_of_the_page(written, tmp_path):
  from PIL import Image

  with bench_module("report_screenshot") as shot:
    out, *_ = written
    png = tmp_path / "page.png"
    args = ["--out", str(png), "--width", "900", "--height", "1400"]
    assert shot.main([str(out), *args]) == 0
    with Image.open(png) as im:
      assert im.size == (900, 1400)
      top = im.convert("RGB").getcolors(maxcolors=1 << 20)
    # The top of the page: text, tables and plots, far from a blank page.
    assert top is None or len(top) > 100
    assert shot.main([str(out), *args, "--at", "results"]) == 0
    with Image.open(png) as im:
      results = im.convert("RGB")
    # The top-10 lists: the thumbnails of random pixels bring thousands of colours.
    colours = results.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 5000
    assert shot.main([str(tmp_path / "nowhere")]) == 1
