"""The rule that keeps a fresh clone's test run green: the benchmark files are reached only
through the `data_dir` fixture (tests/conftest.py), which skips where they are absent."""

import os
import re
from pathlib import Path

import pytest
from helpers import REPO, check_data_declared

import mscross.data

# Reading the data folder's variable, or naming the folder beside the checkout: what a test
# that found the files on its own would do. Setting the variable (to a test folder) is fine.
OTHER_WAYS = re.compile(
  r"""environ\.get\(\s*["']MSCROSS_DATA_DIR|environ\[\s*["']MSCROSS_DATA_DIR|getenv\(\s*["']"""
  r"""MSCROSS_DATA_DIR|["']shared["']\s*/|["']\.\./shared|shared/data"""
)


def test_no_test_module_finds_the_benchmark_files_on_its_own():
  found = []
  for path in sorted((REPO / "tests").rglob("test_*.py")):
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if OTHER_WAYS.search(line) and path.name != Path(__file__).name:
        found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
  assert not found, "use the data_dir fixture instead:\n" + "\n".join(found)


def test_a_test_without_the_fixture_sees_no_benchmark_folder(tmp_path):
  with pytest.raises(mscross.errors.DataError, match="only-through-the-data_dir-fixture"):
    mscross.data.load_split("wikipedia", "train")


@pytest.mark.data("wikipedia/raw_features.mat")
def test_the_fixture_gives_the_folder_and_the_variable(data_dir):
  assert (data_dir / "wikipedia" / "raw_features.mat").is_file()
  assert os.environ[mscross.data.base.DATA_ENV] == str(data_dir)


class _Item:
  """What the collection hook reads of a test item."""

  def __init__(self, fixtures, marker_args):
    self.nodeid, self.fixturenames = "test_x", fixtures
    self.marker = None if marker_args is None else pytest.mark.data(*marker_args).mark

  def get_closest_marker(self, name):
    return self.marker if name == "data" else None


@pytest.mark.parametrize(
  ("fixtures", "marker_args"),
  [(["data_dir"], None), (["tmp_path"], ("wikipedia",)), (["data_dir"], ())],
  ids=["fixture without marker", "marker without fixture", "marker without files"],
)
def test_a_half_declared_data_test_is_a_usage_error(fixtures, marker_args):
  with pytest.raises(pytest.UsageError, match="takes the data_dir fixture and is marked"):
    check_data_declared(_Item(fixtures, marker_args))
  check_data_declared(_Item(["data_dir"], ("wikipedia",)))
