"""Evaluation report of one split's retrieval embeddings: plots, tables and a browsable page.

`write_report` renders what it is given: a split, the retrieval embeddings of each of its
modalities and the `metrics.retrieval_metrics` summary of them. Every number comes from
`mscross.metrics` (curves, per-class AP, similarities for the example results), for every
retrieval direction of `metrics.direction_names(split.modalities)`. It writes into one folder:

  labelled split:
    pr_curve.png        interpolated precision-recall curve of every direction
    precision_at_k.png  precision@K against K (log scale), every direction
    per_class_ap.md     mean AP of the queries holding each class, per direction, and overall mAP
    report.json         every number above, plus the metrics summary and the shown results
    index.html/.md      summary, both plots, the per-class table and top-10 results of a few
                        queries per direction, where a hit shares a class with the query
  unlabelled split (each query's only relevant item is its pair, so there are no curves and no
  classes):
    report.json         the metrics summary (Recall@k, median and mean rank, MRR) and the results
    index.html/.md      that table and top-10 results, where a hit is the query's own pair
  either, where the dataset's raw items are given (`raw_items`):
    thumbs/             a small JPEG of every shown image, beside its id on the pages, which
                        also show the opening words of every shown text (`report_items`)

The definitions are those of `mscross.metrics`: `curves` for the precision-recall curve (101
recall levels, the 11-point curve among them), precision@K and per-class AP; `ranking` and
`instance` for the summary's metrics.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from mscross import metrics
from mscross.errors import ConfigError, DataError
from mscross.retrieval import report_items

TOP_RESULTS = 10
HIT_MARK, MISS_MARK = "\u2713", "\u2717"
ARROW = "\u2192"
_LABELLED_ONLY_FILES = ("pr_curve.png", "precision_at_k.png", "per_class_ap.md")
# Legends of more directions than this go beside the plot rather than over the curves.
_LEGEND_INSIDE_MAX = 4
_RANK_METRICS = ("median_rank", "mean_rank")


class SplitLike(Protocol):
  """The attributes of `mscross.data.Split` that the report reads."""

  label: np.ndarray | None  # float32 [N, C] multi-hot, or None for unlabelled data
  ids: np.ndarray  # str [N]
  class_names: tuple[str, ...]  # C names, empty when unlabelled
  modalities: tuple[str, ...]  # K >= 2 modality names


def _example_queries(num_items: int, num_queries: int) -> np.ndarray:
  """Evenly spaced query indices, the first and the last included: deterministic, and spread over
  the split (whose order usually follows the source, often grouped by class)."""
  n = min(num_queries, num_items)
  if n <= 0:
    return np.zeros(0, np.int64)
  return np.unique(np.linspace(0, num_items - 1, n).round().astype(np.int64))


def _top_results(query_emb, gallery_emb, indices, top: int) -> tuple[np.ndarray, np.ndarray]:
  """Top-`top` gallery indices [n, top] and similarities [n, top] of the queries `indices`,
  ties by lower index as in metrics' P@k."""
  s = np.asarray(metrics.cosine_similarity(query_emb[indices], gallery_emb))
  s = np.where(s == 0, 0.0, s).astype(np.float32)
  order = np.argsort(-s, axis=1, kind="stable")[:, :top]
  return order, np.take_along_axis(s, order, axis=1)


def _class_list(label_row: np.ndarray, class_names) -> list[str]:
  return [str(class_names[c]) for c in np.flatnonzero(label_row > 0)]


def _examples(key, query_emb, gallery_emb, split: SplitLike, class_names, num_queries: int):
  """The shown queries of one direction and their top results (report.json's "examples")."""
  indices = _example_queries(len(query_emb), num_queries)
  order, sims = _top_results(query_emb, gallery_emb, indices, TOP_RESULTS)
  labelled = split.label is not None
  has = split.label > 0 if labelled else None
  out = []
  for row, qi in enumerate(indices):
    results = []
    for rank, (gi, sim) in enumerate(zip(order[row], sims[row], strict=True), start=1):
      # Paired data: item i of one modality is the partner of item i of every other.
      result = {"rank": rank, "index": int(gi), "id": str(split.ids[gi])}
      if labelled:
        result["classes"] = _class_list(split.label[gi], class_names)
      result["similarity"] = float(sim)
      result["hit"] = bool((has[qi] & has[gi]).any()) if labelled else bool(gi == qi)
      result["is_pair"] = bool(gi == qi)
      results.append(result)
    query = {"direction": key, "index": int(qi), "id": str(split.ids[qi])}
    if labelled:
      query["classes"] = _class_list(split.label[qi], class_names)
    out.append({**query, "results": results})
  return out


# ----------------------------------------------------------------------------------------------
# Plots


def _styles(n: int) -> list[dict]:
  """Line styles of n directions: distinct colours, then line styles and markers as well."""
  if n <= 2:
    return [
      {"color": c, "marker": m, "ls": "-"} for c, m in (("tab:blue", "o"), ("tab:orange", "s"))
    ]
  from matplotlib import colormaps

  cmap = colormaps["tab10" if n <= 10 else "tab20"]
  return [
    {"color": cmap(i % cmap.N), "marker": "osD^v<>ph*"[i % 10], "ls": ("-", "--", "-.", ":")[i % 4]}
    for i in range(n)
  ]


def _plot_curves(path, curves: dict, directions: list[dict], title: str, kind: str) -> None:
  # The object-oriented Agg canvas is headless and, unlike pyplot with matplotlib.use("Agg"), does
  # not change the backend of a caller that already uses pyplot interactively.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import FormatStrFormatter

  crowded = len(directions) > _LEGEND_INSIDE_MAX
  fig = Figure(figsize=(10.5 if crowded else 7.0, 5.5 if crowded else 5.0), dpi=120)
  fig.set_layout_engine("constrained")
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  chance = np.nanmean([curves[d["key"]]["precision_at_k"][-1] for d in directions])
  for d, style in zip(directions, _styles(len(directions)), strict=True):
    c, name = curves[d["key"]], d["name"]
    if kind == "pr":
      label = f"{name} (mAP {c['map']:.3f}, 11-pt {np.mean(c['eleven_point']):.3f})"
      ax.plot(
        c["recall"], c["precision"], color=style["color"], ls=style["ls"], lw=1.6, label=label
      )
      ax.plot(
        c["recall"][:: metrics.ELEVEN_POINT_STRIDE],
        c["eleven_point"],
        ls="none",
        marker=style["marker"],
        color=style["color"],
        ms=5,
      )
    else:
      label = f"{name} (P@1 {c['precision_at_k'][0]:.3f})"
      ax.plot(c["k"], c["precision_at_k"], lw=1.6, ms=3, label=label, **style)
  ax.axhline(chance, color="gray", ls="--", lw=1, label=f"random ranking ({chance:.3f})")
  if kind == "pr":
    # A small margin keeps the markers at recall 0 and 1 whole.
    ax.set_xlim(-0.015, 1.015)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Interpolated precision")
    subtitle = "Interpolated precision-recall, mean over queries (line: 101 levels, marks: 11-pt)"
  else:
    num_g = int(curves[directions[0]["key"]]["k"][-1])
    ax.set_xscale("log")
    ax.set_xlim(0.9, max(num_g, 2) * 1.1)
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel(f"K, number of retrieved items (log scale; gallery size {num_g})")
    ax.set_ylabel("Precision@K")
    subtitle = "Precision@K, mean over queries"
  ax.set_ylim(0, 1.02)
  ax.grid(True, which="major", alpha=0.3)
  ax.set_title(f"{title}\n{subtitle}", fontsize=10)
  if crowded:
    fig.legend(loc="outside right upper", fontsize=8, framealpha=0.9)
  else:
    ax.legend(loc="best", fontsize=9, framealpha=0.9)
  fig.savefig(path)


# ----------------------------------------------------------------------------------------------
# Tables and pages


def _fmt(x) -> str:
  return "\u2013" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _fmt_metric(name: str, x) -> str:
  # Ranks are counts from 1 (a median may end in .5), the other metrics fractions.
  if name in _RANK_METRICS and x is not None and not math.isnan(x):
    return f"{x:.1f}"
  return _fmt(x)


def _md_cell(text: str) -> str:
  return str(text).replace("|", "\\|")


def _metric_names(summary: dict) -> list[str]:
  """The averaged metrics of the summary, in its order."""
  return [key[4:] for key in summary if key.startswith("avg_")]


def _summary_rows(report: dict) -> list[tuple[str, str, list[str]]]:
  """(direction name, queries, formatted values) per direction, then the average row."""
  summary, names = report["metrics"], _metric_names(report["metrics"])
  rows = []
  for d in report["directions"]:
    queries = str(int(summary[f"{d['key']}_num_queries"]))
    values = [_fmt_metric(m, summary.get(f"{d['key']}_{m}")) for m in names]
    rows.append((d["name"], queries, values))
  rows.append(("average", "", [_fmt_metric(m, summary.get(f"avg_{m}")) for m in names]))
  return rows


def _metrics_intro(report: dict) -> str:
  n_dir = len(report["directions"])
  if report["labelled"]:
    return (
      f"Cosine ranking of the whole split ({report['num_items']} items per modality); a gallery "
      "item is relevant when it shares a class with the query. Means over the queries that have "
      f"a relevant item; the average is the mean over the {n_dir} directions."
    )
  return (
    f"Cosine ranking of the whole split ({report['num_items']} items per modality). The split "
    "has no labels: a query's only relevant item is its pair, the item of the same index in the "
    "other modality. r@k is the fraction of queries whose pair ranks within the top k; ranks "
    "count from 1 with ties broken by lower gallery index; mrr (and map, the same number) gives "
    "a tied pair the rank at the end of its tie group, as scikit-learn's average precision does. "
    f"The average is the mean over the {n_dir} directions."
  )


def _class_queries(row: dict, directions: list[dict]) -> str:
  counts = [row[f"{d['key']}_queries"] for d in directions]
  # With labels shared by all modalities the counts agree; show one number then.
  return str(counts[0]) if len(set(counts)) == 1 else " / ".join(str(c) for c in counts)


def _overall_line(report: dict) -> str:
  o = report["overall"]
  parts = [f"{d['name']} {_fmt(o[d['key'] + '_map'])}" for d in report["directions"]]
  return f"Overall mAP@all: {', '.join(parts)}, average {_fmt(o['avg_map'])}."


def _per_class_markdown(report: dict) -> str:
  directions = report["directions"]
  header = ["class", "queries", *(f"{d['name']} AP" for d in directions), "average"]
  lines = [
    "| " + " | ".join(_md_cell(h) for h in header) + " |",
    "|---|---:|" + "---:|" * (len(directions) + 1),
  ]
  for row in report["per_class_ap"]:
    values = [_fmt(row[f"{d['key']}_map"]) for d in directions] + [_fmt(row["avg_map"])]
    lines.append(
      f"| {_md_cell(row['class'])} | {_class_queries(row, directions)} | {' | '.join(values)} |"
    )
  return "\n".join([*lines, "", _overall_line(report)]) + "\n"


def _result_headers(labelled: bool) -> list[str]:
  return ["rank", "gallery id", *(["classes"] if labelled else []), "similarity", "hit"]


def _query_heading(q: dict, names: dict) -> tuple[str, str]:
  """(text before the id, text after it) of a shown query's heading, unescaped."""
  after = ""
  if "classes" in q:
    after = f", classes: {', '.join(q['classes']) or 'no label'}"
  return f"{names[q['direction']]}: query {q['index']}, id ", after


def _markdown_page(report: dict) -> str:
  labelled = report["labelled"]
  names = {d["key"]: d["name"] for d in report["directions"]}
  metric_names = _metric_names(report["metrics"])
  out = [f"# Retrieval report: {report['title']}", "", "## Metrics", "", _metrics_intro(report), ""]
  out += ["| direction | queries | " + " | ".join(_md_cell(m) for m in metric_names) + " |"]
  out += ["|---|---:|" + "---:|" * len(metric_names)]
  out += [f"| {_md_cell(n)} | {q} | {' | '.join(v)} |" for n, q, v in _summary_rows(report)]
  if report.get("game"):
    out += ["", "## Adversarial game", "", _game_text(report["game"])]
  if labelled:
    out += ["", "## Curves", "", "![precision-recall](pr_curve.png)", ""]
    out += ["![precision@K](precision_at_k.png)", "", "## Per-class AP", ""]
    out += [_per_class_markdown(report)]
  out += ["", f"## Top-{TOP_RESULTS} results", ""]
  headers = _result_headers(labelled)
  for q in report["examples"]:
    before, after = _query_heading(q, names)
    item = report_items.markdown(q.get("item"))
    out += [
      f"### {_md_cell(before)}`{q['id']}`{_md_cell(after)}",
      "",
      *([item, ""] if item else []),
      "| " + " | ".join(headers) + " |",
      "|---:|---|" + ("---|" if labelled else "") + "---:|:---:|",
    ]
    for r in q["results"]:
      pair = " (its pair)" if r["is_pair"] else ""
      item = report_items.markdown(r.get("item"))
      cells = [str(r["rank"]), f"`{r['id']}`{pair}" + (f"<br>{item}" if item else "")]
      if labelled:
        cells.append(_md_cell(", ".join(r["classes"])))
      cells += [f"{r['similarity']:.3f}", HIT_MARK if r["hit"] else MISS_MARK]
      out.append("| " + " | ".join(cells) + " |")
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
.wide { overflow-x: auto; }
"""


def _game(game, num_modalities: int) -> dict | None:
  if not game:
    return None
  return {"chance": 1.0 / num_modalities, **{k: dict(v) for k, v in game.items()}}


def _game_text(game: dict) -> str:
  """One paragraph: the discriminator's accuracy against chance, where the game stood."""

  def at(state: dict) -> str:
    acc, lam = state.get("val_disc_acc"), state.get("lambda")
    weight = f", adversary weight {lam:.3g}" if lam is not None else ""
    return f"{acc:.3f} at step {state['step']}{weight}"

  parts = []
  if "best" in game:
    parts.append(f"{at(game['best'])} (the reported checkpoint)")
  if "last" in game:
    parts.append(f"{at(game['last'])} (the last evaluation)")
  return (
    "The discriminator's modality accuracy on validation embeddings: "
    + "; ".join(parts)
    + f". Chance is {game['chance']:.3f}: near it the encoders leave the discriminator nothing "
    "to tell the modalities apart by; near 1 the modalities stay apart in the common space."
  )


def _row(cells: list[str], *, cls: str | None = None) -> str:
  """One table row of already escaped cells; numbers are right-aligned by their "num" class."""
  attr = f' class="{cls}"' if cls else ""
  return f"<tr{attr}>{''.join(cells)}</tr>"


def _td(text, kind: str | None = None) -> str:
  attr = f' class="{kind}"' if kind else ""
  return f"<td{attr}>{text}</td>"


def _th(text) -> str:
  return f"<th>{html.escape(str(text))}</th>"


def _html_page(report: dict) -> str:
  e = html.escape
  labelled = report["labelled"]
  directions = report["directions"]
  names = {d["key"]: d["name"] for d in directions}
  title = e(f"Retrieval report: {report['title']}")
  out = [
    "<!DOCTYPE html>",
    '<html lang="en"><head><meta charset="utf-8">',
    f"<title>{title}</title><style>{_CSS}{report_items.CSS}</style></head><body>",
    f"<h1>{title}</h1>",
    "<h2>Metrics</h2>",
    f"<p>{e(_metrics_intro(report))}</p>",
    '<div class="wide"><table>',
    _row([_th(h) for h in ("direction", "queries", *_metric_names(report["metrics"]))]),
  ]
  for name, queries, values in _summary_rows(report):
    out.append(_row([_td(e(name)), _td(queries, "num"), *(_td(v, "num") for v in values)]))
  out.append("</table></div>")
  if report.get("game"):
    out += ["<h2>Adversarial game</h2>", f"<p>{e(_game_text(report['game']))}</p>"]
  if labelled:
    out += [
      "<h2>Curves</h2>",
      "<p>Precision-recall: mean over queries of the interpolated precision "
      "max<sub>k: recall(k) &ge; r</sub> P(k) at 101 recall levels r = 0, 0.01, &hellip;, 1; the "
      "markers are the standard 11-point values (r = 0, 0.1, &hellip;, 1). Ties in similarity are "
      "broken by lower gallery index. The dashed line is the precision of a random ranking.</p>",
      '<p><img src="pr_curve.png" alt="precision-recall curves"></p>',
      '<p><img src="precision_at_k.png" alt="precision at K curves"></p>',
      "<h2>Per-class AP</h2>",
      "<p>Mean AP@all of the queries whose label includes the class.</p>",
      '<div class="wide"><table>',
      _row(
        [_th(h) for h in ("class", "queries", *(f"{d['name']} AP" for d in directions))]
        + [_th("average")]
      ),
    ]
    for r in report["per_class_ap"]:
      cells = [_td(e(r["class"])), _td(_class_queries(r, directions), "num")]
      cells += [_td(_fmt(r[f"{d['key']}_map"]), "num") for d in directions]
      out.append(_row([*cells, _td(_fmt(r["avg_map"]), "num")]))
    o = report["overall"]
    overall = [_td(_fmt(o[f"{d['key']}_map"]), "num") for d in directions]
    out += [
      _row(["<th>overall mAP</th>", _td(""), *overall, _td(_fmt(o["avg_map"]), "num")]),
      "</table></div>",
    ]
    hit_rule = "when it shares at least one class with the query"
  else:
    hit_rule = "when it is the query's own pair"
  out += [
    f'<h2 id="results">Top-{TOP_RESULTS} results</h2>',  # an anchor to link or jump to
    f"<p>Queries at evenly spaced positions of the split. A result is a hit ({HIT_MARK}) "
    f"{hit_rule}, else a miss ({MISS_MARK}); &ldquo;its pair&rdquo; marks the query's own "
    "partner from the other modality.</p>",
  ]
  for q in report["examples"]:
    before, after = _query_heading(q, names)
    anchor = e(f"{q['direction']}-{q['index']}", quote=True)
    out += [
      f'<section class="query" id="{anchor}">',
      f"<h3>{e(before)}<code>{e(q['id'])}</code>{e(after)}</h3>",
      report_items.query_html(q.get("item")),
      "<table>",
      _row([_th(h) for h in _result_headers(labelled)]),
    ]
    for r in q["results"]:
      pair = ' <span class="pair">(its pair)</span>' if r["is_pair"] else ""
      id_html = report_items.html_cell(r.get("item"), f"<code>{e(r['id'])}</code>{pair}")
      cells = [_td(r["rank"], "num"), _td(id_html)]
      if labelled:
        cells.append(_td(e(", ".join(r["classes"]))))
      cells += [
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


# ----------------------------------------------------------------------------------------------
# Entry point


def _checked_embeddings(split: SplitLike, embeddings: Mapping[str, np.ndarray]) -> dict:
  """modality -> float32 [N, d] in the split's modality order; DataError on any mismatch."""
  modalities = tuple(split.modalities)
  if set(embeddings) != set(modalities):
    raise DataError(
      f"embeddings are for modalities {sorted(embeddings)}, the split has {list(modalities)}"
    )
  num = len(split.ids)
  out = {}
  for m in modalities:
    x = np.asarray(embeddings[m], np.float32)
    if x.ndim != 2 or x.shape[0] != num:
      raise DataError(f"{m} embeddings must be [N, d] with N = {num} items, got shape {x.shape}")
    out[m] = x
  return out


def _labelled_parts(split, emb, directions, summary, class_names, block_size) -> dict:
  """The report's curve and per-class entries of a labelled split."""
  curves, per_class = {}, {}
  for d in directions:
    q, g = emb[d["query"]], emb[d["gallery"]]
    c = metrics.ranking_curves(q, g, split.label, split.label, block_size=block_size)
    c["eleven_point"] = c["precision"][:: metrics.ELEVEN_POINT_STRIDE]
    c["map"] = summary.get(f"{d['key']}_map", float("nan"))
    curves[d["key"]] = c
    per_class[d["key"]] = metrics.per_class_ap(
      q, g, split.label, split.label, block_size=block_size
    )

  rows = []
  for ci, name in enumerate(class_names):
    row = {"class": str(name)}
    for d in directions:
      row[f"{d['key']}_queries"] = int(per_class[d["key"]][1][ci])
    aps = [float(per_class[d["key"]][0][ci]) for d in directions]
    for d, ap in zip(directions, aps, strict=True):
      row[f"{d['key']}_map"] = ap
    row["avg_map"] = float(np.mean(aps))
    rows.append(row)
  first = curves[directions[0]["key"]]
  keys = [d["key"] for d in directions]
  return {
    "curves": curves,
    "pr_curve": {
      "definition": "mean over queries of interpolated precision max_{k: recall(k) >= r} P(k)",
      "recall": first["recall"],
      **{k: curves[k]["precision"] for k in keys},
    },
    "pr_11_point": {
      "recall": first["recall"][:: metrics.ELEVEN_POINT_STRIDE],
      **{k: curves[k]["eleven_point"] for k in keys},
    },
    "precision_at_k": {"k": first["k"], **{k: curves[k]["precision_at_k"] for k in keys}},
    "per_class_ap": rows,
    "overall": {
      **{f"{k}_map": summary.get(f"{k}_map", float("nan")) for k in keys},
      "avg_map": summary.get("avg_map", float("nan")),
    },
  }


def write_report(
  out_dir: str,
  *,
  title: str,
  split: SplitLike,
  embeddings: Mapping[str, np.ndarray],
  summary: dict,
  num_queries: int = 5,
  block_size: int | None = None,
  raw_items: Mapping[str, Mapping[str, object]] | None = None,
  game: Mapping[str, Mapping[str, object]] | None = None,
) -> str:
  """Writes the report of one split's retrieval embeddings (module docstring) into `out_dir`.

  Args:
    out_dir: folder to write into, created if needed. Plots and tables of a labelled report left
      there by an earlier call are removed when this split is unlabelled.
    title: what the report is about, e.g. "acmr on wikipedia, test split (step 1200)"; the
      pages are headed "Retrieval report: <title>".
    split: the split (`mscross.data.Split`); only its modalities, label (None when unlabelled),
      ids and class_names are read.
    embeddings: modality -> [N, d] retrieval embeddings of the split's N items, for every
      modality of the split.
    summary: `metrics.retrieval_metrics` of these embeddings (and the split's labels); shown as
      given, and its "<key>_map" values label the curves.
    num_queries: queries shown per direction, at evenly spaced indices of the split.
    block_size: queries scored at once by the curves and per-class AP; None sizes blocks from
      the metrics' memory budget.
    raw_items: pair id -> modality -> raw item (an image or text file, or an inline text), as
      `mscross.data.raw_items` gives them: the pages show each shown query's and result's image
      as a thumbnail (written to thumbs/) or its text's opening words. None or empty: ids only.
    game: the adversarial game of the run, as `mscross.runs.layout.game_state` gives it:
      {"last": {step, val_disc_acc, lambda, loss_adv}, "best": {...}} at the run's last
      evaluation and at the reported step; shown in a section of its own. None: no adversary.

  Returns:
    `out_dir`, holding report.json, index.html and index.md, for a labelled split also
    pr_curve.png, precision_at_k.png and per_class_ap.md, and with raw items thumbs/.

  Raises:
    ConfigError: a negative num_queries, or a block_size that is not a positive integer.
    DataError: embeddings that do not match the split's modalities or items, a summary without
      some direction's metrics, or as the metric functions.
  """
  if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 0:
    raise ConfigError(f"num_queries must be a non-negative integer, got {num_queries!r}")
  if block_size is not None and (
    isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
  ):
    raise ConfigError(f"block_size must be a positive integer or None, got {block_size!r}")
  emb = _checked_embeddings(split, embeddings)
  directions = [
    {"key": key, "query": q, "gallery": g, "name": f"{q} {ARROW} {g}"}
    for key, q, g in metrics.direction_names(split.modalities)
  ]
  missing = [d["key"] for d in directions if f"{d['key']}_num_queries" not in summary]
  if missing:
    raise DataError(f"the metrics summary has no results for the directions {missing}")
  labelled = split.label is not None
  report = {
    "title": str(title),
    "modalities": list(split.modalities),
    "num_items": len(split.ids),
    "labelled": labelled,
    "directions": directions,
    "metrics": dict(summary),
    "game": _game(game, len(split.modalities)),
  }
  parts = {}
  class_names = ()
  if labelled:
    num_classes = np.shape(split.label)[1]
    class_names = tuple(split.class_names)
    if len(class_names) != num_classes:
      # Classes without names (or a mismatched list) are shown by their column.
      class_names = tuple(str(c) for c in range(num_classes))
    parts = _labelled_parts(split, emb, directions, summary, class_names, block_size)
    report.update({k: v for k, v in parts.items() if k != "curves"})
  report["examples"] = [
    ex
    for d in directions
    for ex in _examples(
      d["key"], emb[d["query"]], emb[d["gallery"]], split, class_names, num_queries
    )
  ]

  os.makedirs(out_dir, exist_ok=True)
  if raw_items:
    report_items.attach(report, raw_items, out_dir)
  else:
    report_items.prune(out_dir)  # thumbnails of an earlier report are not this one's
  title = report["title"]
  files = {
    "report.json": json.dumps(_json_ready(report), indent=1) + "\n",
    "index.md": _markdown_page(report),
    "index.html": _html_page(report),
  }
  if labelled:
    _plot_curves(os.path.join(out_dir, "pr_curve.png"), parts["curves"], directions, title, "pr")
    _plot_curves(
      os.path.join(out_dir, "precision_at_k.png"), parts["curves"], directions, title, "k"
    )
    files["per_class_ap.md"] = f"# Per-class AP: {title}\n\n{_per_class_markdown(report)}"
  else:
    for name in _LABELLED_ONLY_FILES:
      # Left from an earlier labelled report, they would be taken for this split's.
      if os.path.exists(os.path.join(out_dir, name)):
        os.remove(os.path.join(out_dir, name))
  for name, text in files.items():
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
      f.write(text)
  return out_dir
