"""Evaluation report of a trained workdir: precision-recall and precision@K curves, per-class AP
and a browsable page of top-10 results.

`write_report` restores the best checkpoint (as `eval.py` does), embeds one split and writes into
one folder:

  pr_curve.png        interpolated precision-recall curves, image->text and text->image
  precision_at_k.png  precision@K against K (log scale) for both directions
  per_class_ap.md     mean AP of the queries holding each class, and the overall mAP
  report.json         every number above, plus the metrics summary and the shown results
  index.html/.md      summary, both plots, the per-class table and top-10 results of a few queries

Definitions follow `mscross.metrics`: cosine similarity ranks the whole gallery, an item is
relevant when it shares at least one label with the query, and queries without any relevant item
are left out of every mean.

- Interpolated precision at recall r (the PR curves): p_interp(r) = max_{k : recall(k) >= r} P(k),
  with P(k) and recall(k) = hits(k) / R at cut-off rank k. It is computed per query on 101 recall
  levels r = 0, 0.01, ..., 1 and averaged over queries; the standard 11-point curve of the
  cross-modal retrieval literature (r = 0, 0.1, ..., 1) is the subset at every tenth level and is
  also stored on its own. Cut-offs need a total order, so ties are broken by lower gallery index,
  as for metrics' P@k.
- Precision@K: hits(K) / K in that same order, on a log-spaced grid of K from 1 to the gallery
  size G. P@G is R / G, the expected precision of a random ranking, drawn as the chance line.
- Per-class AP: for class c, the mean AP@all of the queries whose label includes c. It is
  computed by `metrics.ranking_metrics` on that subset of queries against the full gallery, so it
  has exactly metrics' AP and tie rule (tied items share the precision at the end of their tie
  group, as in scikit-learn); a multi-label query counts towards each of its classes.
"""

from __future__ import annotations

import functools
import html
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mscross import data, evaluate, input_pipeline, metrics
from mscross.errors import ConfigError, DataError

RECALL_STEPS = 100  # 101 recall levels; every tenth one is the 11-point curve
ELEVEN_POINT_STRIDE = RECALL_STEPS // 10
TOP_RESULTS = 10
HIT_MARK, MISS_MARK = "\u2713", "\u2717"
_DIRECTIONS = (("i2t", "image \u2192 text"), ("t2i", "text \u2192 image"))
_DIRECTION_HEADERS = tuple(name for _, name in _DIRECTIONS)


def precision_at_k_grid(num_gallery: int, num: int = 40) -> np.ndarray:
  """Roughly log-spaced ranks 1 <= K <= num_gallery, always including 1, 5, 10 and num_gallery."""
  grid = np.geomspace(1, num_gallery, num=max(2, num)).round().astype(np.int64)
  fixed = [k for k in (1, 5, 10) if k <= num_gallery] + [num_gallery]
  return np.unique(np.concatenate([grid, fixed]))


@functools.partial(jax.jit, static_argnames="recall_steps")
def _curve_block(q, q_labels, g, g_labels, ks, *, recall_steps):
  """Per-query R [B], interpolated precision [B, recall_steps + 1] and P@K [B, len(ks)]."""
  s = metrics.cosine_similarity(q, g)
  # -0.0 and 0.0 must tie, as in metrics.
  s = jnp.where(s == 0, jnp.zeros_like(s), s)
  rel = (q_labels @ g_labels.T) > 0
  order = jnp.argsort(-s, axis=1, stable=True)
  hits = jnp.cumsum(jnp.take_along_axis(rel, order, axis=1), axis=1, dtype=jnp.int32)
  num_rel = hits[:, -1]
  rank = jnp.arange(1, g.shape[0] + 1, dtype=jnp.float32)
  # The best precision at this rank or any later one: recall only grows with the rank, so the
  # ranks that reach a recall level form a suffix of the ranking.
  best_from = lax.cummax(hits.astype(jnp.float32) / rank, axis=1, reverse=True)
  # Hits needed for recall i / steps, ceil(i * R / steps), in integers: with float levels,
  # rounding gives e.g. ceil((3 * 0.1) * 10) = 4, one hit too many.
  steps = jnp.arange(recall_steps + 1, dtype=jnp.int32)
  need = (steps[None, :] * num_rel[:, None] + recall_steps - 1) // recall_steps
  first = jax.vmap(functools.partial(jnp.searchsorted, side="left"))(hits, need)
  interp = jnp.take_along_axis(best_from, jnp.minimum(first, g.shape[0] - 1), axis=1)
  p_at_k = jnp.take(hits, ks - 1, axis=1).astype(jnp.float32) / ks.astype(jnp.float32)
  return num_rel, interp, p_at_k


def ranking_curves(
  query_emb,
  gallery_emb,
  query_labels,
  gallery_labels,
  *,
  ks=None,
  recall_steps: int = RECALL_STEPS,
  block_size: int = 1024,
) -> dict:
  """Mean interpolated precision-recall curve and precision@K of queries ranking a gallery.

  Queries are scored in blocks of `block_size`, so memory grows with block_size x G; only
  per-query curve values (a few dozen numbers each) are kept.

  Args:
    query_emb: [Q, d] query embeddings.
    gallery_emb: [G, d] gallery embeddings.
    query_labels: [Q, C] multi-hot labels of the queries.
    gallery_labels: [G, C] multi-hot labels of the gallery.
    ks: ranks K of precision@K (clipped to G); default `precision_at_k_grid(G)`.
    recall_steps: the curve is sampled at recall i / recall_steps, i = 0..recall_steps.
    block_size: queries scored at once.

  Returns:
    {"recall": [recall_steps + 1] levels, "precision": mean interpolated precision at each level,
    "k": the ranks, "precision_at_k": mean P@K at each, "num_queries": queries with R >= 1}, as
    numpy arrays (float64 means) and an int. Means are NaN when no query has a relevant item.
  """
  q = np.asarray(query_emb, np.float32)
  g = np.asarray(gallery_emb, np.float32)
  ql = (np.asarray(query_labels) > 0).astype(np.float32)
  gl = (np.asarray(gallery_labels) > 0).astype(np.float32)
  if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1] or len(q) == 0 or len(g) == 0:
    raise DataError(f"bad embedding shapes: queries {q.shape}, gallery {g.shape}")
  labels_ok = ql.ndim == gl.ndim == 2 and ql.shape[1] == gl.shape[1]
  if not labels_ok or (len(ql), len(gl)) != (len(q), len(g)):
    raise DataError(f"labels {ql.shape} / {gl.shape} do not match embeddings {q.shape} / {g.shape}")
  if not (np.isfinite(q).all() and np.isfinite(g).all()):
    raise DataError("embeddings contain NaN or infinite values")
  if recall_steps < 1 or block_size < 1:
    raise ConfigError("recall_steps and block_size must be positive")
  num_g = len(g)
  ks = precision_at_k_grid(num_g) if ks is None else np.asarray(ks, np.int64)
  if ks.ndim != 1 or len(ks) == 0 or (ks < 1).any():
    raise ConfigError(f"ks must be positive ranks, got {ks!r}")
  ks = np.minimum(ks, num_g)

  block = min(block_size, len(q))
  num_blocks = math.ceil(len(q) / block)
  # Every block has the same shape (one compilation); padded queries have no label, so R = 0 and
  # they are dropped with the other queries that have nothing to find.
  pad = num_blocks * block - len(q)
  q = np.pad(q, ((0, pad), (0, 0)))
  ql = np.pad(ql, ((0, pad), (0, 0)))
  g_dev, gl_dev, ks_dev = jnp.asarray(g), jnp.asarray(gl), jnp.asarray(ks, jnp.int32)
  outs = [
    _curve_block(
      q[b * block : (b + 1) * block],
      ql[b * block : (b + 1) * block],
      g_dev,
      gl_dev,
      ks_dev,
      recall_steps=int(recall_steps),
    )
    for b in range(num_blocks)
  ]
  num_rel, interp, p_at_k = (np.concatenate([np.asarray(o[i]) for o in outs]) for i in range(3))
  valid = num_rel > 0
  count = int(valid.sum())

  def mean(x):
    if not count:
      return np.full(x.shape[1], np.nan)
    return np.mean(x[valid], axis=0, dtype=np.float64)

  return {
    "recall": np.arange(recall_steps + 1) / recall_steps,
    "precision": mean(interp),
    "k": ks,
    "precision_at_k": mean(p_at_k),
    "num_queries": count,
  }


def per_class_ap(
  query_emb, gallery_emb, query_labels, gallery_labels, *, block_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
  """Per-class mAP@all: for each class, the mean AP of the queries whose label includes it.

  Returns:
    ([C] mean AP, NaN for a class without a query that has a relevant item; [C] int number of
    queries averaged).
  """
  ql = np.asarray(query_labels) > 0
  aps = np.full(ql.shape[1], np.nan)
  counts = np.zeros(ql.shape[1], np.int64)
  for c in range(ql.shape[1]):
    rows = np.flatnonzero(ql[:, c])
    if len(rows) == 0:
      continue
    # The subset's mean, taken by metrics itself, keeps one definition of AP and its tie rule.
    m = metrics.ranking_metrics(
      np.asarray(query_emb)[rows],
      gallery_emb,
      np.asarray(query_labels)[rows],
      gallery_labels,
      ks=(1,),
      map_ks=(1,),
      block_size=block_size,
    )
    aps[c], counts[c] = m["map"], int(m["num_queries"])
  return aps, counts


def _example_queries(num_items: int, num_queries: int) -> np.ndarray:
  """Evenly spaced query indices, the first and the last included: deterministic, and spread over
  the split (whose order usually follows the source, often grouped by class)."""
  n = min(num_queries, num_items)
  if n <= 0:
    return np.zeros(0, np.int64)
  return np.unique(np.linspace(0, num_items - 1, n).round().astype(np.int64))


def _top_results(query_emb, gallery_emb, indices, top: int) -> tuple[np.ndarray, np.ndarray]:
  """Top-`top` gallery indices and similarities of the queries `indices`, ties by lower index."""
  s = np.asarray(metrics.cosine_similarity(query_emb[indices], gallery_emb))
  s = np.where(s == 0, 0.0, s).astype(np.float32)
  order = np.argsort(-s, axis=1, kind="stable")[:, :top]
  return order, np.take_along_axis(s, order, axis=1)


def _class_list(label_row: np.ndarray, class_names) -> list[str]:
  return [str(class_names[c]) for c in np.flatnonzero(label_row > 0)]


def _examples(direction, query_emb, gallery_emb, split: data.Split, num_queries: int) -> list:
  indices = _example_queries(len(query_emb), num_queries)
  order, sims = _top_results(query_emb, gallery_emb, indices, TOP_RESULTS)
  query_has = split.label > 0
  out = []
  for row, qi in enumerate(indices):
    results = []
    for rank, (gi, sim) in enumerate(zip(order[row], sims[row], strict=True), start=1):
      results.append(
        {
          "rank": rank,
          "index": int(gi),
          "id": str(split.ids[gi]),
          "classes": _class_list(split.label[gi], split.class_names),
          "similarity": float(sim),
          "hit": bool((query_has[qi] & query_has[gi]).any()),
          # Paired data: item i of one modality is the partner of item i of the other.
          "is_pair": bool(gi == qi),
        }
      )
    out.append(
      {
        "direction": direction,
        "index": int(qi),
        "id": str(split.ids[qi]),
        "classes": _class_list(split.label[qi], split.class_names),
        "results": results,
      }
    )
  return out


def _plot_curves(path, curves: dict, title: str, kind: str) -> None:
  # The object-oriented Agg canvas is headless and, unlike pyplot with matplotlib.use("Agg"), does
  # not change the backend of a caller that already uses pyplot interactively.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import FormatStrFormatter

  fig = Figure(figsize=(7.0, 5.0), dpi=120, layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  styles = {"i2t": ("tab:blue", "o"), "t2i": ("tab:orange", "s")}
  chance = np.nanmean([curves[d]["precision_at_k"][-1] for d, _ in _DIRECTIONS])
  for d, name in _DIRECTIONS:
    c = curves[d]
    color, marker = styles[d]
    if kind == "pr":
      label = f"{name} (mAP {c['map']:.3f}, 11-pt {np.mean(c['eleven_point']):.3f})"
      ax.plot(c["recall"], c["precision"], color=color, lw=1.8, label=label)
      ax.plot(
        c["recall"][::ELEVEN_POINT_STRIDE],
        c["eleven_point"],
        ls="none",
        marker=marker,
        color=color,
        ms=5,
      )
    else:
      label = f"{name} (P@1 {c['precision_at_k'][0]:.3f})"
      ax.plot(c["k"], c["precision_at_k"], color=color, lw=1.8, marker=marker, ms=3, label=label)
  ax.axhline(chance, color="gray", ls="--", lw=1, label=f"random ranking ({chance:.3f})")
  if kind == "pr":
    # A small margin keeps the markers at recall 0 and 1 whole.
    ax.set_xlim(-0.015, 1.015)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Interpolated precision")
    subtitle = "Interpolated precision-recall, mean over queries (line: 101 levels, marks: 11-pt)"
  else:
    num_g = int(curves["i2t"]["k"][-1])
    ax.set_xscale("log")
    ax.set_xlim(0.9, max(num_g, 2) * 1.1)
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel(f"K, number of retrieved items (log scale; gallery size {num_g})")
    ax.set_ylabel("Precision@K")
    subtitle = "Precision@K, mean over queries"
  ax.set_ylim(0, 1.02)
  ax.grid(True, which="major", alpha=0.3)
  ax.set_title(f"{title}\n{subtitle}", fontsize=10)
  ax.legend(loc="best", fontsize=9, framealpha=0.9)
  fig.savefig(path)


def _fmt(x) -> str:
  return "\u2013" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _md_cell(text: str) -> str:
  return str(text).replace("|", "\\|")


def _summary_rows(summary: dict) -> list[tuple[str, float, float, float]]:
  """(metric, i2t, t2i, avg) for every metric of the summary, in metrics' order."""
  rows = []
  for key in summary:
    if key.startswith("i2t_") and key != "i2t_num_queries":
      m = key[4:]
      rows.append((m, summary[key], summary[f"t2i_{m}"], summary[f"avg_{m}"]))
  return rows


def _per_class_markdown(report: dict) -> str:
  lines = [
    "| class | queries (i2t / t2i) | image \u2192 text AP | text \u2192 image AP | average |",
    "|---|---|---:|---:|---:|",
  ]
  for row in report["per_class_ap"]:
    lines.append(
      f"| {_md_cell(row['class'])} | {row['i2t_queries']} / {row['t2i_queries']} | "
      f"{_fmt(row['i2t_map'])} | {_fmt(row['t2i_map'])} | {_fmt(row['avg_map'])} |"
    )
  o = report["overall"]
  lines += [
    "",
    f"Overall mAP@all: image \u2192 text {o['i2t_map']:.4f}, text \u2192 image "
    f"{o['t2i_map']:.4f}, average {o['avg_map']:.4f}.",
  ]
  return "\n".join(lines) + "\n"


def _header(report: dict) -> str:
  return (
    f"{report['method']} on {report['dataset']}, {report['split']} split "
    f"(best checkpoint, step {report['step']})"
  )


def _markdown_page(report: dict) -> str:
  out = [f"# Retrieval report: {_header(report)}", "", "## Metrics", ""]
  out += ["| metric | image \u2192 text | text \u2192 image | average |", "|---|---:|---:|---:|"]
  out += [
    f"| {m} | {a:.4f} | {b:.4f} | {c:.4f} |" for m, a, b, c in _summary_rows(report["metrics"])
  ]
  out += ["", "## Curves", "", "![precision-recall](pr_curve.png)", ""]
  out += ["![precision@K](precision_at_k.png)", "", "## Per-class AP", ""]
  out += [_per_class_markdown(report), "## Top-10 results", ""]
  for q in report["examples"]:
    name = dict(_DIRECTIONS)[q["direction"]]
    out += [
      f"### {name}: query {q['index']}, id `{q['id']}`, classes: "
      f"{_md_cell(', '.join(q['classes']) or 'no label')}",
      "",
      "| rank | gallery id | classes | similarity | hit |",
      "|---:|---|---|---:|:---:|",
    ]
    for r in q["results"]:
      pair = " (its pair)" if r["is_pair"] else ""
      out.append(
        f"| {r['rank']} | `{r['id']}`{pair} | {_md_cell(', '.join(r['classes']))} | "
        f"{r['similarity']:.3f} | {HIT_MARK if r['hit'] else MISS_MARK} |"
      )
    out.append("")
  return "\n".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.hit td.mark { color: #1a7f37; font-weight: bold; }
tr.miss td.mark { color: #c62828; font-weight: bold; }
tr.miss { background: #fdf0f0; }
tr.hit { background: #f0f9f2; }
img { max-width: 100%; }
section.query { margin-bottom: 1.5em; }
code { background: #f4f4f4; padding: 0 0.2em; }
.pair { font-size: 0.85em; color: #555; }
"""


def _row(cells: list[str], *, cls: str | None = None) -> str:
  """One table row of already escaped cells; numbers are right-aligned by their "num" class."""
  attr = f' class="{cls}"' if cls else ""
  return f"<tr{attr}>{''.join(cells)}</tr>"


def _td(text, kind: str | None = None) -> str:
  attr = f' class="{kind}"' if kind else ""
  return f"<td{attr}>{text}</td>"


def _html_page(report: dict) -> str:
  e = html.escape
  title = e(f"Retrieval report: {_header(report)}")
  n_q = int(report["metrics"]["i2t_num_queries"])
  out = [
    "<!DOCTYPE html>",
    '<html lang="en"><head><meta charset="utf-8">',
    f"<title>{title}</title><style>{_CSS}</style></head><body>",
    f"<h1>{title}</h1>",
    "<h2>Metrics</h2>",
    f"<p>Cosine ranking of the whole {report['split']} split; a gallery item is relevant when it "
    f"shares a class with the query. Means over {n_q} image and "
    f"{int(report['metrics']['t2i_num_queries'])} text queries that have a relevant item.</p>",
    "<table>",
    _row([f"<th>{h}</th>" for h in ("metric", *_DIRECTION_HEADERS, "average")]),
  ]
  for m, a, b, c in _summary_rows(report["metrics"]):
    out.append(_row([_td(e(m)), *(_td(f"{v:.4f}", "num") for v in (a, b, c))]))
  out += [
    "</table>",
    "<h2>Curves</h2>",
    "<p>Precision-recall: mean over queries of the interpolated precision "
    "max<sub>k: recall(k) &ge; r</sub> P(k) at 101 recall levels r = 0, 0.01, &hellip;, 1; the "
    "markers are the standard 11-point values (r = 0, 0.1, &hellip;, 1). Ties in similarity are "
    "broken by lower gallery index. The dashed line is the precision of a random ranking.</p>",
    '<p><img src="pr_curve.png" alt="precision-recall curves"></p>',
    '<p><img src="precision_at_k.png" alt="precision at K curves"></p>',
    "<h2>Per-class AP</h2>",
    "<p>Mean AP@all of the queries whose label includes the class.</p>",
    "<table>",
    _row(
      [
        f"<th>{h}</th>"
        for h in ("class", "queries (i2t / t2i)", *(f"{d} AP" for d in _DIRECTION_HEADERS))
      ]
      + ["<th>average</th>"]
    ),
  ]
  for r in report["per_class_ap"]:
    cells = [_td(e(r["class"])), _td(f"{r['i2t_queries']} / {r['t2i_queries']}", "num")]
    cells += [_td(_fmt(r[k]), "num") for k in ("i2t_map", "t2i_map", "avg_map")]
    out.append(_row(cells))
  o = report["overall"]
  overall = [_td(f"{o[k]:.4f}", "num") for k in ("i2t_map", "t2i_map", "avg_map")]
  out += [
    _row(["<th>overall mAP</th>", _td(""), *overall]),
    "</table>",
    f"<h2>Top-{TOP_RESULTS} results</h2>",
    "<p>Queries at evenly spaced positions of the split. A result is a hit "
    f"({HIT_MARK}) when it shares at least one class with the query, else a miss ({MISS_MARK}); "
    "&ldquo;its pair&rdquo; marks the query's own partner from the other modality.</p>",
  ]
  for q in report["examples"]:
    name = dict(_DIRECTIONS)[q["direction"]]
    classes = ", ".join(q["classes"]) or "no label"
    out += [
      f'<section class="query" id="{q["direction"]}-{q["index"]}">',
      f"<h3>{e(name)}: query {q['index']}, id <code>{e(q['id'])}</code>, "
      f"classes: {e(classes)}</h3>",
      "<table>",
      _row([f"<th>{h}</th>" for h in ("rank", "gallery id", "classes", "similarity", "hit")]),
    ]
    for r in q["results"]:
      pair = ' <span class="pair">(its pair)</span>' if r["is_pair"] else ""
      cells = [
        _td(r["rank"], "num"),
        _td(f"<code>{e(r['id'])}</code>{pair}"),
        _td(e(", ".join(r["classes"]))),
        _td(f"{r['similarity']:.3f}", "num"),
        _td(HIT_MARK if r["hit"] else MISS_MARK, "mark"),
      ]
      out.append(_row(cells, cls="hit" if r["hit"] else "miss"))
    out += ["</table>", "</section>"]
  out.append("</body></html>")
  return "\n".join(out) + "\n"


def _json_ready(x):
  if isinstance(x, dict):
    return {k: _json_ready(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_json_ready(v) for v in x]
  if isinstance(x, np.ndarray):
    return _json_ready(x.tolist())
  if isinstance(x, np.generic):
    return _json_ready(x.item())
  if isinstance(x, float) and not math.isfinite(x):
    return None  # strict JSON has no NaN
  return x


def write_report(
  workdir: str, *, split: str = "test", num_queries: int = 5, out_dir: str | None = None
) -> str:
  """Writes curves, per-class AP and example results of a workdir's best checkpoint.

  See the module docstring for the definitions (PR curves: mean interpolated precision at 101
  recall levels 0, 0.01, ..., 1, with the standard 11-point curve at 0, 0.1, ..., 1 marked and
  stored; precision@K on a log-spaced K grid up to the gallery size).

  Args:
    workdir: a workdir written by training, with a best checkpoint.
    split: "train", "validation" or "test".
    num_queries: queries shown per direction on the page, at evenly spaced indices of the split.
    out_dir: where to write; default `<workdir>/report_<split>`.

  Returns:
    The report directory, holding pr_curve.png, precision_at_k.png, per_class_ap.md,
    report.json, index.html and index.md.

  Raises:
    ConfigError, CheckpointError, DataError: as `evaluate.evaluate_workdir`, or a negative
      num_queries.
  """
  if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 0:
    raise ConfigError(f"num_queries must be a non-negative integer, got {num_queries!r}")
  config, net, step, gen_params = evaluate.restore_for_eval(workdir)
  part = input_pipeline.load_splits(config, splits=("train", split))[split]
  embed_fn = evaluate.make_embed_fn(config, net)
  summary = evaluate.split_metrics(config, embed_fn, gen_params, part)
  img, txt = evaluate.embed_split(embed_fn, gen_params, part)
  # 0 = automatic; the curves are computed by XLA, so size the block for that path.
  block = int(config.eval.block_size) or metrics.auto_block_size(len(part.label), host=False)

  queries_gallery = {"i2t": (img, txt), "t2i": (txt, img)}
  curves, per_class, examples = {}, {}, []
  for d, _ in _DIRECTIONS:
    q, g = queries_gallery[d]
    c = ranking_curves(q, g, part.label, part.label, block_size=block)
    c["eleven_point"] = c["precision"][::ELEVEN_POINT_STRIDE]
    c["map"] = summary[f"{d}_map"]
    curves[d] = c
    per_class[d] = per_class_ap(q, g, part.label, part.label, block_size=block)
    examples += _examples(d, q, g, part, num_queries)

  rows = []
  for ci, name in enumerate(part.class_names):
    a, b = per_class["i2t"][0][ci], per_class["t2i"][0][ci]
    rows.append(
      {
        "class": str(name),
        "i2t_queries": int(per_class["i2t"][1][ci]),
        "t2i_queries": int(per_class["t2i"][1][ci]),
        "i2t_map": float(a),
        "t2i_map": float(b),
        "avg_map": float((a + b) / 2),
      }
    )
  report = {
    "method": config.method,
    "dataset": config.data.name,
    "split": split,
    "step": int(step),
    "metrics": summary,
    "pr_curve": {
      "definition": "mean over queries of interpolated precision max_{k: recall(k) >= r} P(k)",
      "recall": curves["i2t"]["recall"],
      **{d: curves[d]["precision"] for d, _ in _DIRECTIONS},
    },
    "pr_11_point": {
      "recall": curves["i2t"]["recall"][::ELEVEN_POINT_STRIDE],
      **{d: curves[d]["eleven_point"] for d, _ in _DIRECTIONS},
    },
    "precision_at_k": {
      "k": curves["i2t"]["k"],
      **{d: curves[d]["precision_at_k"] for d, _ in _DIRECTIONS},
    },
    "per_class_ap": rows,
    "overall": {k: summary[k] for k in ("i2t_map", "t2i_map", "avg_map")},
    "examples": examples,
  }

  out_dir = out_dir or os.path.join(workdir, f"report_{split}")
  os.makedirs(out_dir, exist_ok=True)
  title = _header(report)
  _plot_curves(os.path.join(out_dir, "pr_curve.png"), curves, title, "pr")
  _plot_curves(os.path.join(out_dir, "precision_at_k.png"), curves, title, "k")
  files = {
    "per_class_ap.md": f"# Per-class AP: {title}\n\n{_per_class_markdown(report)}",
    "report.json": json.dumps(_json_ready(report), indent=1) + "\n",
    "index.md": _markdown_page(report),
    "index.html": _html_page(report),
  }
  for name, text in files.items():
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
      f.write(text)
  return out_dir
