"""Summaries of several models' metrics: a population's members, a benchmark row's seeds."""

from __future__ import annotations

import math

import numpy as np


def mean_and_std(results: list[dict]) -> tuple[dict, dict]:
  """Per key, the mean and sample std (0 for one result) over metric dicts, NaN entries (a
  metric without any query to score) left out."""
  if not results:
    return {}, {}
  mean, std = {}, {}
  for key in results[0]:
    values = [r[key] for r in results if not math.isnan(r[key])]
    mean[key] = float(np.mean(values)) if values else float("nan")
    std[key] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return mean, std
