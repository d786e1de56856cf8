"""A throw-away PostgreSQL server for the tests: started in a temporary folder on 127.0.0.1 and a
free port, with a password-protected role, stopped and removed afterwards.

The server runs as the `postgres` system user when the tests run as root (initdb refuses root).
Its binaries come from PATH, else from Debian's /usr/lib/postgresql/<version>/bin.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from helpers import free_port

USER, PASSWORD = "mscross", "s3cret-pw"


def binaries() -> Path | None:
  """The folder holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
  found = shutil.which("initdb")
  if found and shutil.which("pg_ctl"):
    return Path(found).resolve().parent
  for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
    if os.path.exists(os.path.join(folder, "initdb")):
      return Path(folder)
  return None


class Server:
  def __init__(self, bin_dir: Path):
    self.bin = bin_dir
    # Under /tmp, not pytest's 0700 folders: the postgres user must reach it.
    self.root = Path(tempfile.mkdtemp(prefix="mscross-pg-", dir="/tmp"))
    self.data, self.log, self.port = self.root / "data", self.root / "server.log", free_port()
    self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    (self.root / "pw").write_text(PASSWORD + "\n")
    if self._as:
      shutil.chown(self.root, "postgres")
      shutil.chown(self.root / "pw", "postgres")
    self._run(
      "initdb", "-D", self.data, "-U", USER, f"--pwfile={self.root / 'pw'}", "-A", "scram-sha-256"
    )
    self.start()

  def _run(self, tool: str, *args) -> None:
    cmd = [*self._as, str(self.bin / tool), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode:
      log = self.log.read_text() if self.log.exists() else ""
      raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-1500:]}\n{log[-1500:]}")

  def _ctl(self, action: str, *extra) -> None:
    options = f"-p {self.port} -k {self.root} -h 127.0.0.1"
    self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", *extra, action)

  def start(self) -> None:
    self._ctl("start")

  def stop(self) -> None:
    self._ctl("stop", "-m", "fast")

  def restart(self) -> None:
    self._ctl("restart", "-m", "fast")

  def url(self, database: str, *, password: str = PASSWORD) -> str:
    return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{self.port}/{database}"

  def create_database(self, name: str) -> str:
    import psycopg

    dsn = f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
      conn.execute(f'CREATE DATABASE "{name}"')
    return self.url(name)

  def close(self) -> None:
    try:
      self._ctl("stop", "-m", "immediate")
    except RuntimeError:
      pass
    shutil.rmtree(self.root, ignore_errors=True)
