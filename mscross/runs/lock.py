"""One writer per workdir: `WorkdirLock`, an OS-level lock (`fcntl.flock`) on `WORKDIR/.lock` for
the life of a run. The kernel drops it when the process ends, however it ends (`kill -9`
included), so a lock is never stale; the file holds the holder's pid for the message a second
writer gets, and `is_locked` lets a reader (eval.py) tell that a run is still training.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from mscross.errors import MscrossError
from mscross.runs.layout import LOCK_FILE

# `is_locked` (eval.py) takes the lock shared for an instant: a trainer starting in that instant
# must not be refused, so a busy lock is tried again for this long before it counts as held.
_LOCK_RETRY_SECONDS = 0.25


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
