"""Evaluation reports: curves against NumPy references, per-class AP against a per-query loop and
metrics' mAP, the HTML page's structure, and `eval.py --report`."""

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from mscross import config as config_lib
from mscross import evaluate, metrics, report, trainer
from mscross.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NUM_QUERIES = 3


def tiny_config():
  c = config_lib.base_config()
  c.data.name = "digits_halves"
  c.model.img_layers = (32, 16)
  c.model.txt_layers = (32, 16)
  c.disc.layers = (8, 4)
  c.optim.lr = 1e-3
  c.train.batch_size = 32
  c.train.steps = 20
  c.train.eval_every = 10
  c.train.checkpoint_every = 10
  return c


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds_cache"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("MSCROSS_CACHE_DIR", path)
    yield path


@pytest.fixture(scope="module")
def run(cache_dir, tmp_path_factory):
  """A trained workdir, its report (in-process) and the test split's embeddings."""
  workdir = str(tmp_path_factory.mktemp("run"))
  trainer.train_and_evaluate(tiny_config(), workdir)
  out = report.write_report(workdir, num_queries=NUM_QUERIES, out_dir=os.path.join(workdir, "rep"))
  emb = tmp_path_factory.mktemp("emb")
  evaluate.evaluate_workdir(workdir, split="test", export_dir=str(emb))
  arrays = {name: np.load(emb / f"{name}.npy") for name in ("img_emb", "txt_emb", "labels", "ids")}
  with open(os.path.join(out, "report.json")) as f:
    loaded = json.load(f)
  return workdir, Path(out), loaded, arrays


def _ap_reference(scores: np.ndarray, rel: np.ndarray) -> float:
  """AP with tied scores sharing the precision at the end of their tie group (scikit-learn's)."""
  order = np.argsort(-scores, kind="stable")
  s, r = scores[order], rel[order]
  ap, hits, i = 0.0, 0, 0
  while i < len(s):
    j = i
    while j + 1 < len(s) and s[j + 1] == s[i]:
      j += 1
    group_hits = int(r[i : j + 1].sum())
    hits += group_hits
    ap += group_hits * hits / (j + 1)
    i = j + 1
  return ap / hits


def _cosine64(q, g):
  q = q / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
  g = g / np.linalg.norm(g.astype(np.float64), axis=1, keepdims=True)
  return q @ g.T


def _curves_reference(q, g, ql, gl, steps, ks):
  """Per-query loops over the definition: interpolated precision and P@K, mean over R >= 1."""
  sims = _cosine64(q, g)
  interp, p_at_k = [], []
  for i in range(len(q)):
    rel = (gl @ ql[i]) > 0
    if not rel.any():
      continue
    hits = np.cumsum(rel[np.argsort(-sims[i], kind="stable")])
    num_rel, prec = hits[-1], hits / np.arange(1, len(g) + 1)
    # recall(k) >= j / steps, compared exactly in integers.
    interp.append([prec[hits * steps >= j * num_rel].max() for j in range(steps + 1)])
    p_at_k.append([hits[k - 1] / k for k in ks])
  return np.mean(interp, axis=0), np.mean(p_at_k, axis=0), len(interp)


def test_write_report_creates_all_files(run):
  _, out, loaded, _ = run
  assert sorted(os.listdir(out)) == [
    "index.html",
    "index.md",
    "per_class_ap.md",
    "pr_curve.png",
    "precision_at_k.png",
    "report.json",
  ]
  for name in ("pr_curve.png", "precision_at_k.png"):
    raw = (out / name).read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 10_000, name
    pixels = matplotlib.image.imread(out / name)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 400, pixels.shape
    assert pixels.std() > 0.05  # not a blank canvas
  assert loaded["method"] == "acmr" and loaded["dataset"] == "digits_halves"
  assert len(loaded["pr_11_point"]["recall"]) == 11 and len(loaded["pr_curve"]["recall"]) == 101
  k = loaded["precision_at_k"]["k"]
  assert k[0] == 1 and k[-1] == 360 and k == sorted(set(k))
  md = (out / "index.md").read_text()
  assert "![precision-recall](pr_curve.png)" in md and md.count("| rank |") == 2 * NUM_QUERIES


def test_per_class_ap_matches_a_per_query_loop(run):
  _, _, loaded, arr = run
  labels = arr["labels"] > 0
  for d, (q, g) in {
    "i2t": (arr["img_emb"], arr["txt_emb"]),
    "t2i": (arr["txt_emb"], arr["img_emb"]),
  }.items():
    sims = _cosine64(q, g)
    ap = np.array([_ap_reference(sims[i], (labels @ labels[i]) > 0) for i in range(len(q))])
    for c, row in enumerate(loaded["per_class_ap"]):
      members = labels[:, c]
      assert row[f"{d}_queries"] == members.sum()
      # float64 reference scores against float32 ones: at most a rare swap of near-equal items.
      assert row[f"{d}_map"] == pytest.approx(ap[members].mean(), abs=1e-5), (d, c)
    assert loaded["overall"][f"{d}_map"] == pytest.approx(ap.mean(), abs=1e-5)


def test_overall_map_is_metrics_map(run):
  _, out, loaded, arr = run
  img, txt, labels = arr["img_emb"], arr["txt_emb"], arr["labels"]
  i2t = metrics.ranking_metrics(img, txt, labels, labels)["map"]
  t2i = metrics.ranking_metrics(txt, img, labels, labels)["map"]
  assert loaded["overall"]["i2t_map"] == pytest.approx(i2t, rel=1e-9)
  assert loaded["overall"]["t2i_map"] == pytest.approx(t2i, rel=1e-9)
  table = (out / "per_class_ap.md").read_text()
  assert f"image \u2192 text {i2t:.4f}, text \u2192 image {t2i:.4f}" in table
  # Single-label data: the per-class means, weighted by class size, are the overall mean.
  rows = loaded["per_class_ap"]
  weighted = sum(r["i2t_map"] * r["i2t_queries"] for r in rows) / len(labels)
  assert weighted == pytest.approx(i2t, abs=1e-6)


def test_curves_of_a_known_ranking():
  # The gallery lies at 0, 10, ..., 40 degrees; both labelled queries rank it in that order.
  angles = np.deg2rad([0, 10, 20, 30, 40])
  gallery = np.stack([np.cos(angles), np.sin(angles)], 1)
  g_labels = np.eye(3)[[0, 1, 0, 2, 1]]
  queries = np.array([[1.0, 0.0], [np.cos(-0.1), np.sin(-0.1)], [0.0, 1.0]])
  q_labels = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])  # hits 10100, 01001, none
  out = report.ranking_curves(
    queries, gallery, q_labels, g_labels, ks=[1, 2, 3, 4, 5, 9], recall_steps=10, block_size=2
  )
  assert out["num_queries"] == 2  # the query without labels has nothing to find
  # Query 1: P = 1, 1/2, 2/3, 1/2, 2/5 -> 1 up to recall 1/2, then 2/3.
  # Query 2: P = 0, 1/2, 1/3, 1/4, 2/5 -> 1/2 up to recall 1/2, then 2/5.
  expected = [0.75] * 6 + [(2 / 3 + 2 / 5) / 2] * 5
  np.testing.assert_allclose(out["precision"], expected, rtol=1e-6)
  np.testing.assert_allclose(out["recall"], np.linspace(0, 1, 11))
  np.testing.assert_allclose(out["precision_at_k"], [0.5, 0.5, 0.5, 0.375, 0.4, 0.4], rtol=1e-6)
  assert list(out["k"]) == [1, 2, 3, 4, 5, 5]  # K = 9 is clipped to the gallery size


def test_curves_match_numpy_reference_and_metrics():
  rng = np.random.default_rng(0)
  q, g = rng.normal(size=(37, 6)), rng.normal(size=(53, 6))
  ql = (rng.random((37, 4)) < 0.3).astype(np.float32)
  gl = (rng.random((53, 4)) < 0.3).astype(np.float32)
  ks = [1, 3, 5, 10, 20, 53]
  out = report.ranking_curves(q, g, ql, gl, ks=ks, block_size=8)
  interp, p_at_k, count = _curves_reference(q, g, ql, gl, report.RECALL_STEPS, ks)
  assert out["num_queries"] == count < 37
  np.testing.assert_allclose(out["precision"], interp, atol=1e-6)
  np.testing.assert_allclose(out["precision_at_k"], p_at_k, atol=1e-6)
  # Interpolated precision never increases with recall.
  assert (np.diff(out["precision"]) <= 1e-12).all()
  m = metrics.ranking_metrics(q, g, ql, gl, ks=ks)
  np.testing.assert_allclose(out["precision_at_k"], [m[f"p@{k}"] for k in ks], atol=1e-6)


def _sections(page: str) -> list[str]:
  return re.findall(r'<section class="query".*?</section>', page, flags=re.S)


def test_html_shows_top10_with_correct_hit_marks(run):
  _, out, _, arr = run
  page = (out / "index.html").read_text()
  assert page.startswith("<!DOCTYPE html>") and "<script" not in page
  assert 'src="pr_curve.png"' in page and 'src="precision_at_k.png"' in page
  sections = _sections(page)
  assert len(sections) == 2 * NUM_QUERIES
  row_of = {str(i): n for n, i in enumerate(arr["ids"])}
  labels = arr["labels"] > 0
  for section in sections:
    query_id = html.unescape(re.search(r"<h3>.*?<code>(.*?)</code>", section).group(1))
    rows = re.findall(r'<tr class="(hit|miss)">(.*?)</tr>', section, flags=re.S)
    assert len(rows) == report.TOP_RESULTS
    for cls, cells in rows:
      gallery_id = html.unescape(re.search(r"<code>(.*?)</code>", cells).group(1))
      shares = bool((labels[row_of[query_id]] & labels[row_of[gallery_id]]).any())
      assert (cls == "hit") == shares
      assert (report.HIT_MARK if shares else report.MISS_MARK) in cells
  ranks = [int(r) for r in re.findall(r'<tr class="(?:hit|miss)"><td class="num">(\d+)', page)]
  assert ranks == list(range(1, 11)) * (2 * NUM_QUERIES)


def test_bad_num_queries_is_rejected(tmp_path):
  with pytest.raises(ConfigError, match="num_queries"):
    report.write_report(str(tmp_path), num_queries=-1)


@pytest.mark.slow
def test_eval_cli_writes_the_report(run, cache_dir):
  workdir = run[0]
  proc = subprocess.run(
    [sys.executable, "eval.py", "--workdir", workdir, "--report"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "MSCROSS_CACHE_DIR": cache_dir},
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  index = Path(workdir) / "report_test" / "index.html"
  assert index.exists() and f"report: {index.parent}" in proc.stderr
  assert len(_sections(index.read_text())) == 2 * 5
  printed = json.loads(proc.stdout.strip().splitlines()[-1])
  assert "i2t_map" in printed
