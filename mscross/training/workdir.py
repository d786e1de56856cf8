"""A training workdir: what it holds, one writer at a time, and a resumed run never changes its
own history.

The names of its files are stated here and nowhere else:

    config.json            the resolved config, the run's truth on resume
    dataset.json           the data spec (modalities, widths, classes)
    input_transform.npz    the input transform fitted on the training split
    history.jsonl          losses and validation metrics at every evaluation
    metrics.json           the final result
    checkpoints/           Orbax checkpoints (latest/, best/)
    tensorboard/           TensorBoard event files
    .lock                  the writer's lock

* `WorkdirLock`: an OS-level lock (`fcntl.flock`) on `WORKDIR/.lock` for the life of a run. The
  kernel drops it when the process ends, however it ends (`kill -9` included), so a lock is
  never stale; the file holds the holder's pid for the message a second writer gets.
* `check_resume`: on resume, the stored `config.json` is the truth. A command whose config
  differs from it in anything but `SAFE_TO_CHANGE` is refused with the differing keys, unless
  the caller allows the change, which is then recorded in `history.jsonl`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time

from mscross import atomic, dotted
from mscross import config as config_lib
from mscross.data import raw
from mscross.errors import ConfigError, MscrossError

CONFIG = "config.json"
SPEC = "dataset.json"
TRANSFORM = "input_transform.npz"
HISTORY = "history.jsonl"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
LOCK_FILE = ".lock"
# Raw items skipped or converted when the dataset was prepared, one a line, tab-separated.
PROBLEMS = "data_problems.tsv"


def path(workdir: str, name: str) -> str:
  """The path of one of the workdir's files (a name above)."""
  return os.path.join(workdir, name)


def write_config(workdir: str, config) -> None:
  # A crash mid-write must not leave a truncated config.json: the run's truth on resume.
  atomic.write_text(path(workdir, CONFIG), config_lib.to_json(config))


def read_config(workdir: str):
  """The resolved config a training run wrote to the workdir."""
  file = path(workdir, CONFIG)
  if not os.path.exists(file):
    raise ConfigError(f"{file} not found: is {workdir!r} a workdir written by train.py?")
  return config_lib.load_config_file(file)


# `is_locked` (eval.py) takes the lock shared for an instant: a trainer starting in that instant
# must not be refused, so a busy lock is tried again for this long before it counts as held.
_LOCK_RETRY_SECONDS = 0.25

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
  "data.encode_batch",
  "parallel.num_devices",
  "parallel.feed",
  "parallel.host_steps",
  "eval.block_size",
)


class WorkdirBusy(MscrossError):
  """Another process is training in this workdir."""


def holder_pid(workdir: str) -> int | None:
  """The pid written by the process that holds (or last held) the workdir's lock."""
  try:
    with open(os.path.join(workdir, LOCK_FILE)) as f:
      return int(f.read().strip() or 0) or None
  except (OSError, ValueError):
    return None


def is_locked(workdir: str) -> bool:
  """Whether a live process holds the workdir's lock (a shared probe, released at once)."""
  path = os.path.join(workdir, LOCK_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    try:
      fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        return True
      raise
    fcntl.flock(f, fcntl.LOCK_UN)
  return False


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir for one writer; a second raises WorkdirBusy
  at once, naming the holder's pid."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def __enter__(self) -> WorkdirLock:
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    # "a": opening must not truncate the pid of a holder we then fail to displace.
    f = open(self.path, "a+")  # noqa: SIM115 - held for the life of the run
    try:
      locked = _try_lock(f)
    except BaseException:
      f.close()
      raise
    if not locked:
      f.close()
      pid = holder_pid(os.path.dirname(self.path))
      holder = f"process {pid}" if pid else "another process"
      raise WorkdirBusy(
        f"{os.path.dirname(self.path) or '.'} is being trained by {holder}; wait for it to "
        "finish or choose another --workdir"
      )
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    self._file = f
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


def _try_lock(f) -> bool:
  deadline = time.monotonic() + _LOCK_RETRY_SECONDS
  while True:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
    if time.monotonic() >= deadline:
      return False
    time.sleep(0.02)


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
  if not os.path.exists(path(workdir, CONFIG)):
    return []
  stored = read_config(workdir)
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


def write_spec(workdir: str, spec) -> None:
  atomic.write_json(path(workdir, SPEC), spec.to_json(), indent=1)


def write_problems(workdir: str, problems) -> None:
  """The dataset's skipped or converted raw items (`mscross.data.Problem`), as a TSV file with
  a header row; no file when there were none."""
  if problems:
    atomic.write_text(path(workdir, PROBLEMS), raw.problems_tsv(problems))
  elif os.path.exists(path(workdir, PROBLEMS)):
    os.remove(path(workdir, PROBLEMS))


def read_spec(workdir: str) -> dict:
  with open(path(workdir, SPEC)) as f:
    return json.load(f)
