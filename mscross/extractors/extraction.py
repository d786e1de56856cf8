"""Running an extractor over many raw items: batched, jitted on whatever device JAX has, with the
host reading and preparing the next batch while the device encodes the current one, and a
progress bar (items per second, time left) on long work.

A raw item that cannot be read is not fatal here: `read` raises `BadInput` and the item's row
comes back as NaN with the reason, so the caller decides to skip the pair or to stop.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from mscross.errors import one_line
from mscross.extractors.registry import Model


class BadInput(Exception):
  """A raw item that cannot be used; the message says why, in one line."""


def _prepare_all(
  model: Model, read: Callable[[Any], Any], items: Sequence[Any]
) -> list[dict[str, np.ndarray] | BadInput]:
  out: list[dict[str, np.ndarray] | BadInput] = []
  for item in items:
    try:
      out.append(model.prepare(read(item)))
    except BadInput as exc:
      out.append(exc)
  return out


def extract(
  model: Model,
  items: Sequence[Any],
  read: Callable[[Any], Any],
  *,
  batch_size: int = 32,
  desc: str = "encoding",
  progress: bool = True,
) -> tuple[np.ndarray, dict[int, str], tuple[int, int]]:
  """Encodes every item; returns (float32 [N, dim] features, {row: reason} of unreadable items,
  (tokens unknown to the extractor's vocabulary, tokens) over the items, (0, 0) for an extractor
  without `unknown_tokens`).

  Args:
    model: a loaded extractor (`Extractor.load()`).
    items: what `read` takes, e.g. file paths or texts.
    read: one item -> the extractor's raw input (an RGB PIL image, a string); raises `BadInput`.
    batch_size: items per device call. The last batch is padded to it, so every call has one
      shape (text batches are also bucketed by length) and compiles once.
    desc: the progress bar's label.
    progress: show the progress bar.

  Rows of unreadable items are NaN.
  """
  apply = jax.jit(model.apply)
  batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
  failures: dict[int, str] = {}
  rows: list[np.ndarray] = []
  unknown, tokens = 0, 0
  # Two host workers: one reads ahead while the other's batch is extracted.
  workers = max(1, min(4, (os.cpu_count() or 1)))
  bar = tqdm(total=len(items), desc=desc, unit="item", disable=not progress, smoothing=0.1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = [pool.submit(_prepare_all, model, read, b) for b in batches[:2]]
    for index in range(len(batches)):
      prepared = pending.pop(0).result()
      if index + 2 < len(batches):
        pending.append(pool.submit(_prepare_all, model, read, batches[index + 2]))
      start = index * batch_size
      good = [p for p in prepared if not isinstance(p, BadInput)]
      if model.unknown_tokens is not None:
        for p in good:
          u, t = model.unknown_tokens(p)
          unknown, tokens = unknown + u, tokens + t
      for offset, p in enumerate(prepared):
        if isinstance(p, BadInput):
          failures[start + offset] = one_line(p)
      out = np.full((len(prepared), 0), np.nan, np.float32)
      if good:
        padded = good + [good[-1]] * (batch_size - len(good))
        extracted = np.asarray(apply(model.params, model.collate(padded)), np.float32)
        out = np.full((len(prepared), extracted.shape[1]), np.nan, np.float32)
        out[[i for i, p in enumerate(prepared) if not isinstance(p, BadInput)]] = extracted[
          : len(good)
        ]
      rows.append(out)
      bar.update(len(prepared))
  bar.close()
  width = max((r.shape[1] for r in rows), default=0)
  features = np.full((len(items), width), np.nan, np.float32)
  for index, r in enumerate(rows):
    if r.shape[1]:
      features[index * batch_size : index * batch_size + len(r)] = r
  return features, failures, (unknown, tokens)
