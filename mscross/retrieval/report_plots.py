"""The report's plots (labelled splits): the interpolated precision-recall curve and
precision@K of every direction, drawn on matplotlib's headless Agg canvas."""

from __future__ import annotations

import numpy as np

from mscross import metrics
from mscross.retrieval.report_data import Curve, Direction

# Legends of more directions than this go beside the plot rather than over the curves.
_LEGEND_INSIDE_MAX = 4


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


def plot_curves(
  path, curves: dict[str, Curve], directions: list[Direction], title: str, kind: str
) -> None:
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
  chance = np.nanmean([curves[d.key].precision_at_k[-1] for d in directions])
  for d, style in zip(directions, _styles(len(directions)), strict=True):
    c, name = curves[d.key], d.name
    if kind == "pr":
      label = f"{name} (mAP {c.map:.3f}, 11-pt {np.mean(c.eleven_point):.3f})"
      ax.plot(c.recall, c.precision, color=style["color"], ls=style["ls"], lw=1.6, label=label)
      ax.plot(
        c.recall[:: metrics.ELEVEN_POINT_STRIDE],
        c.eleven_point,
        ls="none",
        marker=style["marker"],
        color=style["color"],
        ms=5,
      )
    else:
      label = f"{name} (P@1 {c.precision_at_k[0]:.3f})"
      ax.plot(c.k, c.precision_at_k, lw=1.6, ms=3, label=label, **style)
  ax.axhline(chance, color="gray", ls="--", lw=1, label=f"random ranking ({chance:.3f})")
  if kind == "pr":
    # A small margin keeps the markers at recall 0 and 1 whole.
    ax.set_xlim(-0.015, 1.015)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Interpolated precision")
    subtitle = "Interpolated precision-recall, mean over queries (line: 101 levels, marks: 11-pt)"
  else:
    num_g = int(curves[directions[0].key].k[-1])
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
