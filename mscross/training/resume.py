"""Resuming a workdir: its stored `config.json` is the truth. A command whose config differs from
it in anything but `SAFE_TO_CHANGE` is refused with the differing keys, unless the caller allows
the change, which is then recorded in `history.jsonl`.
"""

from __future__ import annotations

import json
import os

from mscross import config as config_lib
from mscross import dotted
from mscross.errors import ConfigError
from mscross.runs import layout

# Keys a resumed run may change: how long to train, how often to evaluate, save and log, where
# the data lies and how many devices train. None of them changes the model, the data or the
# optimiser; `train.steps` does stretch what depends on the run's length (the DANN schedule of
# the adversarial weight), which is what training longer means.
SAFE_TO_CHANGE = (
  "train.steps",
  "train.eval_every",
  "train.patience",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "train.max_nonfinite",
  "data.data_dir",
  "data.extract_batch",
  "parallel.num_devices",
  "parallel.feed",
  "parallel.host_steps",
  "eval.block_size",
)


# A string, not an object: an allowed change is written to history.jsonl as JSON.
_ABSENT = "<absent>"


def config_diff(stored, new, *, include_safe: bool = False) -> list[tuple[str, object, object]]:
  """(key, stored value, new value) for every key whose value differs; the keys of
  SAFE_TO_CHANGE only with `include_safe`."""
  a, b = dotted.flatten(stored), dotted.flatten(new)
  diffs = []
  for key in sorted(set(a) | set(b)):
    if key in SAFE_TO_CHANGE and not include_safe:
      continue
    va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
    if _normal(va) != _normal(vb):
      diffs.append((key, va, vb))
  return diffs


def _normal(value):
  # JSON turns tuples into lists and may turn 1.0 into 1; neither is a change.
  if isinstance(value, list | tuple):
    return tuple(_normal(v) for v in value)
  if isinstance(value, bool) or not isinstance(value, int | float):
    return value
  return float(value)


def check_resume(workdir: str, config, *, allow_change: bool) -> list[tuple]:
  """Compares `config` with the workdir's stored config.json (if any).

  Returns every differing (key, stored, new) triple, safe keys included, for the history's
  record (empty for a fresh workdir or the same config). Raises ConfigError listing the unsafe
  ones unless `allow_change`.
  """
  if not os.path.exists(layout.path(workdir, layout.CONFIG)):
    return []
  # The stored config reads with the defaults of keys added since it was saved; the new one is
  # completed the same way, so a key absent from either side is its default, not a change.
  stored, config = layout.read_config(workdir), config_lib.with_defaults(config)
  diffs = config_diff(stored, config)
  if diffs and not allow_change:
    # Shallow keys first: another method differs in many loss.* keys, and the listing is cut at
    # eight, which must not cut `method` itself.
    shown = sorted(diffs, key=lambda d: (d[0].count("."), d[0]))
    listing = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in shown[:8])
    more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
    raise ConfigError(
      f"{workdir} holds a run of another config ({listing}{more}); choose a new --workdir, or "
      "pass --allow_config_change to continue this run with the change"
    )
  return config_diff(stored, config, include_safe=True)


def _show(value) -> str:
  if value is _ABSENT:
    return "(absent)"
  return json.dumps(list(value) if isinstance(value, tuple) else value)
