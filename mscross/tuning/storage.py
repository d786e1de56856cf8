"""Where a study lives, and what keeps its workers honest when there are several of them.

* The study's storage is `sqlite:///<workdir>/study.db` unless a URL names another (PostgreSQL
  or MySQL through SQLAlchemy, e.g. `postgresql+psycopg://user:password@host/db`): the way a
  sweep spreads over machines. A URL that cannot be opened (a wrong host, password or database,
  a driver that is not installed) is one `StorageError` naming the URL, its password masked.
* Claims are serialised across every worker of the study (`claim_lock`): a PostgreSQL advisory
  lock or a MySQL named lock, held on a connection of its own, which the server releases if the
  worker dies; for the workdir's own SQLite file, a file lock in the workdir. So a group of
  trials is counted and claimed by one worker at a time, and a study never runs more trials
  than it was asked for.
* A worker records, on every trial it trains, a heartbeat every `recovery_seconds / 10`
  (`Heartbeat`). `recover` marks a RUNNING trial as failed and queues its parameters again when
  its worker is gone: a worker of this machine whose process has ended, at once; any other once
  its heartbeat is older than `recovery_seconds` (`tune.py --recovery_seconds`, 600 by
  default); a trial without a worker at once, since claims are serialised (the claim died
  halfway).
* A connection lost to the server (restarted, or the network gone) is retried for
  `RECONNECT_SECONDS`, saying so in one line; after that the worker stops with a `StorageError`
  and a rerun of the same command continues the study.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator

from mscross.errors import MscrossError, one_line

log = logging.getLogger(__name__)

STUDY_NAME = "mscross"
STUDY_DB = "study.db"
DEFAULT_RECOVERY_SECONDS = 600.0
RECONNECT_SECONDS = 60.0
# The advisory lock's key: any constant shared by every worker of every study of this name.
_LOCK_KEY = zlib.crc32(f"mscross-study-{STUDY_NAME}".encode())


class StorageError(MscrossError):
  """The study's storage cannot be opened or reached."""


def url_of(workdir: str, storage: str | None) -> str:
  return storage or f"sqlite:///{os.path.abspath(os.path.join(workdir, STUDY_DB))}"


def shown(url: str) -> str:
  """`url` with its password masked, for messages."""
  try:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
  except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse has no password to hide
    return url


def _dialect(url: str) -> str:
  return url.split(":", 1)[0].split("+", 1)[0]


def _one_line(e: BaseException) -> str:
  # SQLAlchemy's own text adds a help link to the driver's message (`orig`): the driver's alone.
  return one_line(getattr(e, "orig", None) or e)


def _no_driver(url: str, e: ModuleNotFoundError) -> str:
  return (
    f"cannot open the study's storage {shown(url)}: its driver is not installed ({e.name}); "
    "for PostgreSQL: pip install 'mscross[postgres]'"
  )


def open_storage(url: str, progress: Callable[[str], None] | None = None):
  """The Optuna storage of `url`, its tables created on first use; StorageError if it cannot
  be opened. `progress` hears, in one line, of a connection that the server dropped and that
  was replaced."""
  import optuna

  # A pooled connection that the server dropped (a restart) is replaced on its next use.
  engine = {} if _dialect(url) == "sqlite" else {"pool_pre_ping": True}
  try:
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
  except ModuleNotFoundError as e:
    raise StorageError(_no_driver(url, e)) from None
  except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many types for one bad URL
    raise StorageError(f"cannot open the study's storage {shown(url)}: {_one_line(e)}") from None
  if progress is not None and engine:
    import sqlalchemy

    def invalidated(dbapi_connection, record, exception):
      detail = _one_line(exception).strip("() ") if exception is not None else ""
      why = f" ({detail})" if detail else ""
      _say_lost(
        progress, f"the connection to the study's storage {shown(url)} was lost{why}; reconnecting"
      )

    sqlalchemy.event.listen(storage.engine, "invalidate", invalidated)
  return storage


_last_said = [-float("inf")]


def _say_lost(progress: Callable[[str], None], line: str) -> None:
  """One line per episode: a restart invalidates every pooled connection in turn, and the
  failed request that noticed it is retried too."""
  if time.monotonic() - _last_said[0] > RECONNECT_SECONDS:
    _last_said[0] = time.monotonic()
    progress(line)


def is_connection_error(e: BaseException | None) -> bool:
  """Whether `e`, or what caused it (Optuna wraps a failed commit in StorageInternalError), is
  a lost or refused connection rather than a fault of the request."""
  try:
    from sqlalchemy import exc
  except ImportError:
    return False
  seen = 0
  while e is not None and seen < 8:
    if isinstance(e, exc.OperationalError | exc.InterfaceError) or (
      isinstance(e, exc.DBAPIError) and e.connection_invalidated
    ):
      return True
    e, seen = e.__cause__ or e.__context__, seen + 1
  return False


def retrying(fn: Callable, url: str, progress: Callable[[str], None] = print):
  """`fn()`, again while the storage's server cannot be reached, for up to RECONNECT_SECONDS;
  says so in one line, and once more when it is back."""
  deadline, lost = None, False
  while True:
    try:
      out = fn()
    except Exception as e:
      if not is_connection_error(e):
        raise
      now = time.monotonic()
      if deadline is None:
        deadline = now + RECONNECT_SECONDS
        _say_lost(
          progress,
          f"lost the connection to the study's storage {shown(url)} ({_one_line(e)}); "
          f"retrying for {RECONNECT_SECONDS:.0f} s",
        )
      if now >= deadline:
        raise StorageError(
          f"the study's storage {shown(url)} is unreachable ({_one_line(e)}); rerun the same "
          "command once it is back: the study continues where it stopped"
        ) from None
      lost = True
      time.sleep(1.0)
      continue
    if lost:
      progress(f"reconnected to the study's storage {shown(url)}")
    return out


@contextlib.contextmanager
def claim_lock(url: str, workdir: str) -> Iterator[None]:
  """Serialises every worker of the study around creating it and claiming trials."""
  dialect = _dialect(url)
  if dialect not in ("postgresql", "mysql"):
    with open(os.path.join(workdir, ".study.lock"), "a") as f:
      fcntl.flock(f, fcntl.LOCK_EX)
      try:
        yield
      finally:
        fcntl.flock(f, fcntl.LOCK_UN)
    return
  import sqlalchemy

  acquire, release = {
    "postgresql": ("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"),
    "mysql": (
      "SELECT GET_LOCK(CONCAT('mscross-', :k), -1)",
      "SELECT RELEASE_LOCK(CONCAT('mscross-', :k))",
    ),
  }[dialect]
  try:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    conn = engine.connect()
  except ModuleNotFoundError as e:
    raise StorageError(_no_driver(url, e)) from None
  except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many types for one bad URL
    raise StorageError(f"cannot open the study's storage {shown(url)}: {_one_line(e)}") from None
  try:
    with conn:
      conn.execute(sqlalchemy.text(acquire), {"k": _LOCK_KEY})
      try:
        yield
      finally:
        with contextlib.suppress(Exception):  # a dropped connection has released it already
          conn.execute(sqlalchemy.text(release), {"k": _LOCK_KEY})
  finally:
    engine.dispose()


def worker_id() -> str:
  return f"{socket.gethostname()}:{os.getpid()}"


def _ended_here(worker: str) -> bool:
  """Whether a worker id names a process of THIS machine that has ended."""
  host, _, pid = worker.rpartition(":")
  if host != socket.gethostname():
    return False
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return True
  except (PermissionError, ValueError):
    return False
  return False


def recover(study, *, recovery_seconds: float = DEFAULT_RECOVERY_SECONDS) -> list[int]:
  """Marks the RUNNING trials whose worker is gone (see the module docstring) as failed and
  queues their parameters again; returns their numbers. Call it under `claim_lock`."""
  import optuna

  now = time.time()
  dead = []
  for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    worker = t.user_attrs.get("worker")
    started = (t.datetime_start or datetime.datetime.now()).timestamp()
    beat = float(t.user_attrs.get("heartbeat", started))
    if not worker or _ended_here(worker) or now - beat > recovery_seconds:
      _run_again(study, t.number, t.params)
      dead.append(t.number)
  return dead


def release(study, trials) -> list[int]:
  """Fails and queues again those of `trials` that are still RUNNING (a group this worker
  drops); returns their numbers. The others are finished already, by whoever took them."""
  import optuna

  running = optuna.trial.TrialState.RUNNING
  still = {t.number for t in study.get_trials(deepcopy=False, states=(running,))}
  released = [t for t in trials if t.number in still]
  for t in released:
    _run_again(study, t.number, t.params)
  return [t.number for t in released]


def _run_again(study, number: int, params: dict) -> None:
  """Marks trial `number` failed and queues its parameters as a new trial."""
  import optuna

  study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
  if params:
    study.enqueue_trial(params, user_attrs={"rerun_of": number}, skip_if_exists=False)


class Heartbeat:
  """`with Heartbeat(trials, interval):` records the time on the (Optuna) trials every
  `interval` seconds from a background thread, so other workers can tell this one is alive; a
  failed write (the server restarting) is tried again at the next beat."""

  def __init__(self, trials, interval: float):
    self.trials, self.interval = list(trials), interval
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="mscross-heartbeat", daemon=True)

  def _beat(self) -> None:
    now = time.time()
    for trial in self.trials:
      with contextlib.suppress(Exception):  # finished meanwhile, or the server is away
        trial.set_user_attr("heartbeat", now)

  def _run(self) -> None:
    while not self._stop.wait(self.interval):
      self._beat()

  def __enter__(self) -> Heartbeat:
    self._beat()
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join()
