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
`instance` for the summary's metrics. `report_data` builds the typed report (report.json),
`report_pages` and `report_plots` render it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from mscross.errors import ConfigError
from mscross.retrieval import report_data, report_items, report_pages, report_plots
from mscross.retrieval.report_data import SplitLike

_LABELLED_ONLY_FILES = ("pr_curve.png", "precision_at_k.png", "per_class_ap.md")


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
  report = report_data.build(
    title=title,
    split=split,
    embeddings=embeddings,
    summary=summary,
    num_queries=num_queries,
    block_size=block_size,
    game=game,
  )
  os.makedirs(out_dir, exist_ok=True)
  if raw_items:
    report_items.attach(report, raw_items, out_dir)
  else:
    report_items.prune(out_dir)  # thumbnails of an earlier report are not this one's
  files = {
    "report.json": json.dumps(report.to_json(), indent=1) + "\n",
    "index.md": report_pages.markdown(report),
    "index.html": report_pages.html(report),
  }
  if report.labelled:
    for name, kind in (("pr_curve.png", "pr"), ("precision_at_k.png", "k")):
      path = os.path.join(out_dir, name)
      report_plots.plot_curves(path, report.curves, report.directions, report.title, kind)
    files["per_class_ap.md"] = (
      f"# Per-class AP: {report.title}\n\n{report_pages.per_class_markdown(report)}"
    )
  else:
    for name in _LABELLED_ONLY_FILES:
      # Left from an earlier labelled report, they would be taken for this split's.
      if os.path.exists(os.path.join(out_dir, name)):
        os.remove(os.path.join(out_dir, name))
  for name, text in files.items():
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
      f.write(text)
  return out_dir
