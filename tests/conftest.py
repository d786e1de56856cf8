"""Fixtures shared by the tests: the environment every test runs in (no tuned presets, no
benchmark files but through `data_dir`), a finished training run and a PostgreSQL server. The
builders and references the tests use are in `helpers.py`; the toy extractors in
`toy_extractors.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import REPO, check_data_declared, trainer_config

from mscross import caches, data, presets


@pytest.fixture(scope="session", autouse=True)
def _no_tuned_presets(tmp_path_factory):
  """The tests' configs come from the method registry and the dataset presets: the tuned values
  in mscross/presets/tuned/ change with every benchmark run, so they are left out. An empty
  folder stands in for them, set before any fixture runs, in this process and in the train.py
  and script subprocesses that inherit its environment."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(presets.store.ROOT_ENV, str(tmp_path_factory.mktemp("no_tuned_presets")))
    yield


@pytest.fixture(autouse=True)
def _shipped_presets(request, monkeypatch):
  """The tests marked `shipped_presets` check the shipped files themselves."""
  if request.node.get_closest_marker("shipped_presets") is not None:
    monkeypatch.delenv(presets.store.ROOT_ENV)


# The benchmark data: $MSCROSS_DATA_DIR, else the shared folder beside the checkout. Resolved,
# because errors name the resolved folder and the data folder may be a link. Read once, here:
# tests reach it only through the `data_dir` fixture.
_BENCHMARK_DATA = Path(
  os.environ.get(data.base.DATA_ENV) or REPO.parent / "shared" / "data"
).resolve()


def pytest_collection_modifyitems(config, items):
  """A test that reads the benchmark files declares it both ways (`check_data_declared`)."""
  for item in items:
    check_data_declared(item)


@pytest.fixture(scope="session", autouse=True)
def _no_benchmark_data(tmp_path_factory):
  """$MSCROSS_DATA_DIR names a folder that does not exist, whose name says why, from before any
  fixture runs and in every subprocess: a test that reads the benchmark files other than through
  `data_dir` fails loudly, here and in CI, instead of passing where the files happen to be and
  failing on a fresh clone."""
  nowhere = tmp_path_factory.getbasetemp() / "benchmark-files-only-through-the-data_dir-fixture"
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(data.base.DATA_ENV, str(nowhere))
    yield


@pytest.fixture(scope="session", autouse=True)
def _one_compilation_cache(tmp_path_factory):
  """One JAX compilation cache for the session (per xdist worker), none shared with the user's:
  the train.py and tune.py subprocesses of many tests compile the same small programs, which a
  rerun, a resumed run or a second worker then loads instead of compiling again."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(caches.JAX_ENV, str(tmp_path_factory.mktemp("jax_cache")))
    yield


@pytest.fixture(autouse=True)
def _benchmark_data_env(request, monkeypatch):
  """The tests marked `data` see the benchmark folder as $MSCROSS_DATA_DIR too (their
  subprocesses inherit it)."""
  if request.node.get_closest_marker("data") is not None:
    monkeypatch.setenv(data.base.DATA_ENV, str(_BENCHMARK_DATA))


@pytest.fixture
def data_dir(request) -> Path:
  """The benchmark data folder, for a test marked `@pytest.mark.data(<relative paths>)`; skips,
  naming what is missing, where those files or folders are absent (a fresh clone has none)."""
  needed = request.node.get_closest_marker("data").args
  missing = [name for name in needed if not (_BENCHMARK_DATA / name).exists()]
  if missing:
    pytest.skip(
      f"needs the benchmark files {', '.join(missing)} in {_BENCHMARK_DATA} "
      f"(set {data.base.DATA_ENV} to the folder that holds them)"
    )
  return _BENCHMARK_DATA


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
  """(workdir, metrics.json) of a finished 40-step ACMR run on digits_halves; read it, never
  write to it."""
  from mscross.training import trainer

  workdir = str(tmp_path_factory.mktemp("run"))
  return workdir, trainer.train_and_evaluate(trainer_config("acmr", 40), workdir)


@pytest.fixture(scope="session")
def postgres_server():
  """A PostgreSQL server of this test session on 127.0.0.1 (see tests/postgres.py); skips where
  PostgreSQL or its Python driver is not installed."""
  import postgres

  bin_dir = postgres.binaries()
  if bin_dir is None:
    pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
  pytest.importorskip("psycopg", reason="no PostgreSQL driver: pip install 'mscross[postgres]'")
  server = postgres.Server(bin_dir)
  yield server
  server.close()
