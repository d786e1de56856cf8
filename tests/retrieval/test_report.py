"""Evaluation reports of labelled (two and three modalities) and unlabelled splits: the files
written, report.json's numbers against the metrics functions and per-query loops, and the HTML
page's structure, escaping and hit marks."""

import html
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from helpers import ap_reference, cosine64

from mscross import metrics
from mscross.data.splits import Split
from mscross.errors import ConfigError, DataError
from mscross.retrieval import report, report_data, report_pages

NUM_QUERIES = 3
LABELLED_FILES = [
  "index.html",
  "index.md",
  "per_class_ap.md",
  "pr_curve.png",
  "precision_at_k.png",
  "report.json",
]
UNLABELLED_FILES = ["index.html", "index.md", "report.json"]


def make_split(seed, n, modalities, *, num_classes=4, multi_label=False, labelled=True):
  """A split of n items whose embeddings cluster by class (labelled) or by pair (unlabelled);
  ids and class names hold characters that HTML and Markdown must escape."""
  rng = np.random.default_rng(seed)
  if multi_label:
    label = (rng.random((n, num_classes)) < 0.35).astype(np.float32)
  else:
    label = np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, n)]
  centers = 1.5 * rng.standard_normal((num_classes, 8))
  shared = rng.standard_normal((n, 8))
  embeddings = {
    m: (label @ centers + shared + rng.standard_normal((n, 8))).astype(np.float32)
    for m in modalities
  }
  class_names = ("cat", "b&c", "<dog>", "d|e", "emu")[:num_classes]
  split = Split(
    features={m: rng.standard_normal((n, 3)).astype(np.float32) for m in modalities},
    label=label if labelled else None,
    ids=np.array([f"<id&{i}>" for i in range(n)]),
    class_names=class_names if labelled else (),
  )
  return split, embeddings


CASES = {
  "two": dict(seed=0, n=90, modalities=("image", "text")),
  "three": dict(
    seed=1, n=70, modalities=("image", "text", "audio"), num_classes=5, multi_label=True
  ),
  "unlabelled": dict(seed=2, n=50, modalities=("a", "b", "c"), labelled=False),
}


LABELLED_CASES = ["two", "three"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  """case name -> (case, split, embeddings, summary, report folder, loaded report.json), each
  report written once per module."""
  cache = {}

  def get(case):
    if case not in cache:
      split, embeddings = make_split(**CASES[case])
      summary = metrics.retrieval_metrics(embeddings, split.label)
      out = report.write_report(
        str(tmp_path_factory.mktemp(case)),
        title="toy <b>set</b> & co",
        split=split,
        embeddings=embeddings,
        summary=summary,
        num_queries=NUM_QUERIES,
      )
      with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
        loaded = json.load(f)
      cache[case] = (case, split, embeddings, summary, Path(out), loaded)
    return cache[case]

  return get


def as_array(values):
  """A report.json list as float64, its nulls (non-finite numbers) as NaN."""
  return np.array([np.nan if v is None else v for v in values], np.float64)


class StructureChecker(HTMLParser):
  """Records tags that close out of order or never close."""

  VOID = {"meta", "img", "br", "hr", "link", "input"}

  def __init__(self):
    super().__init__()
    self.stack, self.errors = [], []

  def handle_starttag(self, tag, attrs):
    if tag not in self.VOID:
      self.stack.append(tag)

  def handle_endtag(self, tag):
    if not self.stack or self.stack.pop() != tag:
      self.errors.append(tag)


@pytest.mark.parametrize("case", list(CASES))
def test_files_and_plots(written, case):
  case, split, _, _, out, loaded = written(case)
  labelled = case != "unlabelled"
  assert sorted(os.listdir(out)) == (LABELLED_FILES if labelled else UNLABELLED_FILES)
  directions = metrics.direction_names(split.modalities)
  assert [(d["key"], d["query"], d["gallery"]) for d in loaded["directions"]] == directions
  assert [d["name"] for d in loaded["directions"]] == [f"{q} \u2192 {g}" for _, q, g in directions]
  assert loaded["labelled"] is labelled and loaded["num_items"] == len(split.ids)
  md = (out / "index.md").read_text()
  assert md.count("| rank |") == len(directions) * NUM_QUERIES
  if not labelled:
    assert not {"pr_curve", "per_class_ap", "precision_at_k"} & set(loaded)
    return
  for name in ("pr_curve.png", "precision_at_k.png"):
    raw = (out / name).read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 10_000, name
    pixels = matplotlib.image.imread(out / name)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 400, pixels.shape
    assert pixels.std() > 0.05  # not a blank canvas
  assert "![precision-recall](pr_curve.png)" in md
  assert len(loaded["pr_11_point"]["recall"]) == 11 and len(loaded["pr_curve"]["recall"]) == 101
  k = loaded["precision_at_k"]["k"]
  assert k[0] == 1 and k[-1] == len(split.ids) and k == sorted(set(k))


@pytest.mark.parametrize("case", list(CASES))
def test_report_json_numbers_are_the_metrics_functions(written, case):
  case, split, emb, summary, _, loaded = written(case)
  assert loaded["metrics"] == pytest.approx(summary, nan_ok=True)
  assert list(loaded["metrics"]) == list(summary)
  if case == "unlabelled":
    return
  label = split.label
  for key, q, g in metrics.direction_names(split.modalities):
    curves = metrics.ranking_curves(emb[q], emb[g], label, label, block_size=None)
    np.testing.assert_allclose(as_array(loaded["pr_curve"][key]), curves["precision"], atol=1e-12)
    np.testing.assert_allclose(
      as_array(loaded["pr_11_point"][key]), curves["precision"][::10], atol=1e-12
    )
    np.testing.assert_allclose(
      as_array(loaded["precision_at_k"][key]), curves["precision_at_k"], atol=1e-12
    )
    aps, counts = metrics.per_class_ap(emb[q], emb[g], label, label, block_size=None)
    rows = loaded["per_class_ap"]
    assert [r["class"] for r in rows] == list(split.class_names)
    np.testing.assert_allclose(as_array([r[f"{key}_map"] for r in rows]), aps, atol=1e-12)
    assert [r[f"{key}_queries"] for r in rows] == counts.tolist()
    assert loaded["overall"][f"{key}_map"] == summary[f"{key}_map"]
  assert loaded["overall"]["avg_map"] == summary["avg_map"]
  keys = [d["key"] for d in loaded["directions"]]
  for r in loaded["per_class_ap"]:
    assert r["avg_map"] == pytest.approx(np.mean([r[f"{k}_map"] for k in keys]), abs=1e-12)


@pytest.mark.parametrize("case", LABELLED_CASES)
def test_per_class_ap_matches_a_per_query_loop(written, case):
  case, split, emb, summary, _, loaded = written(case)
  labels = split.label > 0
  for key, q, g in metrics.direction_names(split.modalities):
    sims = cosine64(emb[q], emb[g])
    rel = (labels.astype(int) @ labels.T.astype(int)) > 0
    ap = np.array(
      [ap_reference(sims[i], rel[i]) if rel[i].any() else np.nan for i in range(len(sims))]
    )
    for c, row in enumerate(loaded["per_class_ap"]):
      members = labels[:, c] & rel.any(axis=1)
      assert row[f"{key}_queries"] == members.sum()
      # float64 reference scores against float32 ones: at most a rare swap of near-equal items.
      assert row[f"{key}_map"] == pytest.approx(ap[members].mean(), abs=1e-5), (key, c)
    assert summary[f"{key}_map"] == pytest.approx(np.nanmean(ap), abs=1e-5)


def _sections(page: str) -> list[str]:
  return re.findall(r'<section class="query".*?</section>', page, flags=re.S)


@pytest.mark.parametrize("case", list(CASES))
def test_html_parses_and_marks_hits(written, case):
  case, split, emb, summary, out, _ = written(case)
  page = (out / "index.html").read_text()
  assert page.startswith("<!DOCTYPE html>") and "<script" not in page
  checker = StructureChecker()
  checker.feed(page)
  checker.close()
  assert checker.errors == [] and checker.stack == []
  labelled = case != "unlabelled"
  assert ('src="pr_curve.png"' in page) is labelled
  directions = metrics.direction_names(split.modalities)
  sections = _sections(page)
  assert len(sections) == len(directions) * NUM_QUERIES
  row_of = {str(i): n for n, i in enumerate(split.ids)}
  for (key, q, g), chunk in zip(
    [d for d in directions for _ in range(NUM_QUERIES)], sections, strict=True
  ):
    assert f'id="{key}-' in chunk and html.escape(f"{q} \u2192 {g}") in chunk
    query = row_of[html.unescape(re.search(r"<h3>.*?<code>(.*?)</code>", chunk).group(1))]
    rows = re.findall(r'<tr class="(hit|miss)">(.*?)</tr>', chunk, flags=re.S)
    assert len(rows) == report_data.TOP_RESULTS
    # The shown results are the top 10 of a stable argsort of the similarities.
    expected = np.argsort(-cosine64(emb[q][query : query + 1], emb[g])[0], kind="stable")[:10]
    shown = [row_of[html.unescape(re.search(r"<code>(.*?)</code>", c).group(1))] for _, c in rows]
    assert shown == expected.tolist()
    for (cls, cells), item in zip(rows, shown, strict=True):
      if labelled:
        hit = bool((split.label[query] * split.label[item]).sum() > 0)
      else:
        hit = item == query
      assert (cls == "hit") == hit
      assert (report_pages.HIT_MARK if hit else report_pages.MISS_MARK) in cells
      assert ("(its pair)" in cells) == (item == query)
  ranks = [int(r) for r in re.findall(r'<tr class="(?:hit|miss)"><td class="num">(\d+)', page)]
  assert ranks == list(range(1, 11)) * len(sections)
  # The metrics table: one row per direction and the average, values as in the summary.
  table = re.search(r"<h2>Metrics</h2>.*?</table>", page, flags=re.S).group(0)
  names = [k[4:] for k in summary if k.startswith("avg_")]
  for key, q, g in directions:
    row = re.search(rf"<tr><td>{re.escape(html.escape(f'{q} → {g}'))}</td>(.*?)</tr>", table)
    cells = re.findall(r">([^<]*)</td>", row.group(1))
    assert cells[0] == str(int(summary[f"{key}_num_queries"]))
    for name, cell in zip(names, cells[1:], strict=True):
      value = summary[f"{key}_{name}"]
      assert cell == (f"{value:.1f}" if name.endswith("_rank") else f"{value:.4f}"), name


@pytest.mark.parametrize("case", list(CASES))
def test_titles_ids_and_classes_are_escaped(written, case):
  case, _, _, _, out, _ = written(case)
  page = (out / "index.html").read_text()
  assert "toy &lt;b&gt;set&lt;/b&gt; &amp; co" in page and "<b>set" not in page
  assert "&lt;id&amp;0&gt;" in page and "<id&" not in page
  if case != "unlabelled":
    assert "&lt;dog&gt;" in page and "b&amp;c" in page and "<dog>" not in page
    assert "d\\|e" in (out / "per_class_ap.md").read_text()


def test_unlabelled_report_shows_recall_and_ranks(written):
  _, _, _, summary, out, loaded = written("unlabelled")
  md = (out / "index.md").read_text()
  assert "| direction | queries | r@1 | r@5 | r@10 | median_rank | mean_rank | mrr | map |" in md
  assert f"| a \u2192 b | 50 | {summary['a2b_r@1']:.4f} |" in md
  assert f"{summary['avg_median_rank']:.1f}" in md
  assert "classes" not in loaded["examples"][0] and "classes" not in md
  hits = [r["hit"] for ex in loaded["examples"] for r in ex["results"]]
  assert hits == [r["is_pair"] for ex in loaded["examples"] for r in ex["results"]] and any(hits)


def test_five_modalities_give_twenty_directions(tmp_path):
  split, emb = make_split(3, 40, ("m1", "m2", "m3", "m4", "m5"))
  summary = metrics.retrieval_metrics(emb, split.label, ks=(1, 5), block_size=64)
  out = report.write_report(
    str(tmp_path), title="five", split=split, embeddings=emb, summary=summary, num_queries=1
  )
  loaded = json.loads((tmp_path / "report.json").read_text())
  assert len(loaded["directions"]) == 20 == len(loaded["pr_curve"]) - 2
  assert sorted(os.listdir(out)) == LABELLED_FILES
  # The crowded legend goes beside the axes: a wider figure.
  assert matplotlib.image.imread(tmp_path / "pr_curve.png").shape[1] > 1000


def test_an_unlabelled_report_replaces_a_labelled_one(tmp_path):
  for labelled in (True, False):
    split, emb = make_split(4, 30, ("image", "text"), labelled=labelled)
    summary = metrics.retrieval_metrics(emb, split.label)
    report.write_report(str(tmp_path), title="t", split=split, embeddings=emb, summary=summary)
  assert sorted(os.listdir(tmp_path)) == UNLABELLED_FILES


def test_bad_arguments_are_rejected(tmp_path):
  split, emb = make_split(5, 20, ("image", "text"))
  summary = metrics.retrieval_metrics(emb, split.label)
  kw = {"title": "t", "split": split, "embeddings": emb, "summary": summary}
  with pytest.raises(ConfigError, match="num_queries"):
    report.write_report(str(tmp_path), **{**kw, "num_queries": -1})
  with pytest.raises(ConfigError, match="block_size"):
    report.write_report(str(tmp_path), **{**kw, "block_size": 0})
  with pytest.raises(DataError, match="modalities"):
    report.write_report(str(tmp_path), **{**kw, "embeddings": {"image": emb["image"]}})
  with pytest.raises(DataError, match="N = 20"):
    report.write_report(str(tmp_path), **{**kw, "embeddings": {**emb, "text": emb["text"][:5]}})
  other = metrics.retrieval_metrics({"x": emb["image"], "y": emb["text"], "z": emb["text"]})
  with pytest.raises(DataError, match="no results for the directions"):
    report.write_report(str(tmp_path), **{**kw, "summary": other})
  assert os.listdir(tmp_path) == []


def test_the_game_is_shown_only_when_given(tmp_path):
  split, emb = make_split(5, 20, ("image", "text"))
  summary = metrics.retrieval_metrics(emb, split.label)
  kw = {"title": "t", "split": split, "embeddings": emb, "summary": summary}
  game = {
    "last": {"step": 900, "val_disc_acc": 0.8125, "lambda": 0.25, "loss_adv": 0.6},
    "best": {"step": 400, "val_disc_acc": 0.53125, "lambda": 0.1, "loss_adv": 0.7},
  }
  out = Path(report.write_report(str(tmp_path / "game"), **kw, game=game))
  saved = json.loads((out / "report.json").read_text())["game"]
  assert saved == {"chance": 0.5, **game}
  md = (out / "index.md").read_text()
  assert "## Adversarial game" in md and "0.531 at step 400" in md and "0.812 at step 900" in md
  assert "Adversarial game</h2>" in (out / "index.html").read_text()
  out = Path(report.write_report(str(tmp_path / "none"), **kw))
  assert json.loads((out / "report.json").read_text())["game"] is None
  assert "Adversarial game" not in (out / "index.md").read_text()
