"""Fixtures of the dataset tests."""

import pytest

from mscross import caches


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
  """One prepared-data cache for the session's dataset tests, never the user's: every test's own
  source folder gets its own fingerprinted entry in it (tests that need a fresh cache set
  their own)."""
  monkeypatch.setenv(caches.ROOT_ENV, str(tmp_path_factory.getbasetemp() / "mscross-cache"))
