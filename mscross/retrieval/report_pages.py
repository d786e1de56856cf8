"""The report's pages: `markdown` (index.md, and the per-class table of per_class_ap.md) and
`html` (index.html), both rendered from the one typed `report_data.Report`."""

from __future__ import annotations

import html as html_lib
import math

from mscross.retrieval import report_items
from mscross.retrieval.report_data import TOP_RESULTS, Query, Report

HIT_MARK, MISS_MARK = "\u2713", "\u2717"
_RANK_METRICS = ("median_rank", "mean_rank")


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


def _summary_rows(report: Report) -> list[tuple[str, str, list[str]]]:
  """(direction name, queries, formatted values) per direction, then the average row."""
  summary, names = report.metrics, _metric_names(report.metrics)
  rows = []
  for d in report.directions:
    queries = str(int(summary[f"{d.key}_num_queries"]))
    values = [_fmt_metric(m, summary.get(f"{d.key}_{m}")) for m in names]
    rows.append((d.name, queries, values))
  rows.append(("average", "", [_fmt_metric(m, summary.get(f"avg_{m}")) for m in names]))
  return rows


def _metrics_intro(report: Report) -> str:
  n_dir = len(report.directions)
  if report.labelled:
    return (
      f"Cosine ranking of the whole split ({report.num_items} items per modality); a gallery "
      "item is relevant when it shares a class with the query. Means over the queries that have "
      f"a relevant item; the average is the mean over the {n_dir} directions."
    )
  return (
    f"Cosine ranking of the whole split ({report.num_items} items per modality). The split "
    "has no labels: a query's only relevant item is its pair, the item of the same index in the "
    "other modality. r@k is the fraction of queries whose pair ranks within the top k; ranks "
    "count from 1 with ties broken by lower gallery index; mrr (and map, the same number) gives "
    "a tied pair the rank at the end of its tie group, as scikit-learn's average precision does. "
    f"The average is the mean over the {n_dir} directions."
  )


def _class_queries(row: dict, directions: list[dict]) -> str:
  counts = [row[f"{d.key}_queries"] for d in directions]
  # With labels shared by all modalities the counts agree; show one number then.
  return str(counts[0]) if len(set(counts)) == 1 else " / ".join(str(c) for c in counts)


def _overall_line(report: Report) -> str:
  o = report.overall
  parts = [f"{d.name} {_fmt(o[d.key + '_map'])}" for d in report.directions]
  return f"Overall mAP@all: {', '.join(parts)}, average {_fmt(o['avg_map'])}."


def per_class_markdown(report: Report) -> str:
  directions = report.directions
  header = ["class", "queries", *(f"{d.name} AP" for d in directions), "average"]
  lines = [
    "| " + " | ".join(_md_cell(h) for h in header) + " |",
    "|---|---:|" + "---:|" * (len(directions) + 1),
  ]
  for row in report.per_class_ap:
    values = [_fmt(row[f"{d.key}_map"]) for d in directions] + [_fmt(row["avg_map"])]
    lines.append(
      f"| {_md_cell(row['class'])} | {_class_queries(row, directions)} | {' | '.join(values)} |"
    )
  return "\n".join([*lines, "", _overall_line(report)]) + "\n"


def _result_headers(labelled: bool) -> list[str]:
  return ["rank", "gallery id", *(["classes"] if labelled else []), "similarity", "hit"]


def _query_heading(q: Query, names: dict) -> tuple[str, str]:
  """(text before the id, text after it) of a shown query's heading, unescaped."""
  after = ""
  if q.classes is not None:
    after = f", classes: {', '.join(q.classes) or 'no label'}"
  return f"{names[q.direction]}: query {q.index}, id ", after


def markdown(report: Report) -> str:
  labelled = report.labelled
  names = report.names()
  metric_names = _metric_names(report.metrics)
  out = [f"# Retrieval report: {report.title}", "", "## Metrics", "", _metrics_intro(report), ""]
  out += ["| direction | queries | " + " | ".join(_md_cell(m) for m in metric_names) + " |"]
  out += ["|---|---:|" + "---:|" * len(metric_names)]
  out += [f"| {_md_cell(n)} | {q} | {' | '.join(v)} |" for n, q, v in _summary_rows(report)]
  if report.game:
    out += ["", "## Adversarial game", "", _game_text(report.game)]
  if labelled:
    out += ["", "## Curves", "", "![precision-recall](pr_curve.png)", ""]
    out += ["![precision@K](precision_at_k.png)", "", "## Per-class AP", ""]
    out += [per_class_markdown(report)]
  out += ["", f"## Top-{TOP_RESULTS} results", ""]
  headers = _result_headers(labelled)
  for q in report.examples:
    before, after = _query_heading(q, names)
    item = report_items.markdown(q.item)
    out += [
      f"### {_md_cell(before)}`{q.id}`{_md_cell(after)}",
      "",
      *([item, ""] if item else []),
      "| " + " | ".join(headers) + " |",
      "|---:|---|" + ("---|" if labelled else "") + "---:|:---:|",
    ]
    for r in q.results:
      pair = " (its pair)" if r.is_pair else ""
      item = report_items.markdown(r.item)
      cells = [str(r.rank), f"`{r.id}`{pair}" + (f"<br>{item}" if item else "")]
      if labelled:
        cells.append(_md_cell(", ".join(r.classes)))
      cells += [f"{r.similarity:.3f}", HIT_MARK if r.hit else MISS_MARK]
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
  return f"<th>{html_lib.escape(str(text))}</th>"


def html(report: Report) -> str:
  e = html_lib.escape
  labelled = report.labelled
  directions = report.directions
  names = {d.key: d.name for d in directions}
  title = e(f"Retrieval report: {report.title}")
  out = [
    "<!DOCTYPE html>",
    '<html lang="en"><head><meta charset="utf-8">',
    f"<title>{title}</title><style>{_CSS}{report_items.CSS}</style></head><body>",
    f"<h1>{title}</h1>",
    "<h2>Metrics</h2>",
    f"<p>{e(_metrics_intro(report))}</p>",
    '<div class="wide"><table>',
    _row([_th(h) for h in ("direction", "queries", *_metric_names(report.metrics))]),
  ]
  for name, queries, values in _summary_rows(report):
    out.append(_row([_td(e(name)), _td(queries, "num"), *(_td(v, "num") for v in values)]))
  out.append("</table></div>")
  if report.game:
    out += ["<h2>Adversarial game</h2>", f"<p>{e(_game_text(report.game))}</p>"]
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
        [_th(h) for h in ("class", "queries", *(f"{d.name} AP" for d in directions))]
        + [_th("average")]
      ),
    ]
    for r in report.per_class_ap:
      cells = [_td(e(r["class"])), _td(_class_queries(r, directions), "num")]
      cells += [_td(_fmt(r[f"{d.key}_map"]), "num") for d in directions]
      out.append(_row([*cells, _td(_fmt(r["avg_map"]), "num")]))
    o = report.overall
    overall = [_td(_fmt(o[f"{d.key}_map"]), "num") for d in directions]
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
  for q in report.examples:
    before, after = _query_heading(q, names)
    anchor = e(f"{q.direction}-{q.index}", quote=True)
    out += [
      f'<section class="query" id="{anchor}">',
      f"<h3>{e(before)}<code>{e(q.id)}</code>{e(after)}</h3>",
      report_items.query_html(q.item),
      "<table>",
      _row([_th(h) for h in _result_headers(labelled)]),
    ]
    for r in q.results:
      pair = ' <span class="pair">(its pair)</span>' if r.is_pair else ""
      id_html = report_items.html_cell(r.item, f"<code>{e(r.id)}</code>{pair}")
      cells = [_td(r.rank, "num"), _td(id_html)]
      if labelled:
        cells.append(_td(e(", ".join(r.classes))))
      cells += [
        _td(f"{r.similarity:.3f}", "num"),
        _td(HIT_MARK if r.hit else MISS_MARK, "mark"),
      ]
      out.append(_row(cells, cls="hit" if r.hit else "miss"))
    out += ["</table>", "</section>"]
  out.append("</body></html>")
  return "\n".join(out) + "\n"
