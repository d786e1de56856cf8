"""The prepared-data cache: its fast decoder, concurrent preparations and its lock."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from mscross.data import (
  base,
  cache,
  load_split,
)


def test_fast_decoder_falls_back_to_tfds_on_mismatch(monkeypatch):
  expected = load_split("digits_halves", "test")

  def wrong(records, widths):
    decoded = {key: np.zeros((len(records), width), np.float32) for key, width in widths.items()}
    return {**decoded, "id": ["?"] * len(records)}

  monkeypatch.setattr(cache, "_decode_direct", wrong)
  again = load_split("digits_halves", "test")
  np.testing.assert_array_equal(again.features["left"], expected.features["left"])
  np.testing.assert_array_equal(again.label, expected.label)
  np.testing.assert_array_equal(again.ids, expected.ids)


def test_losing_a_prepare_race_reads_the_winner(tmp_path, monkeypatch):
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path))
  original = base.PairedBuilder.download_and_prepare

  def lose_race(self, **kwargs):
    # Another process finishes first; our final rename then fails on the existing folder.
    twin = type(self)(data_dir=Path(self.data_dir).parents[1], file_format="array_record")
    original(twin, **kwargs)
    raise OSError(39, "Directory not empty")

  monkeypatch.setattr(base.PairedBuilder, "download_and_prepare", lose_race)
  assert len(load_split("digits_halves", "test").ids) == 360


# Each child records in prepared.log when it reads the source, then waits until both children
# are about to load, so that both find the cache cold at the same moment.
_CHILD = textwrap.dedent(
  """
  import sys, time
  from pathlib import Path
  import numpy as np
  from mscross.data import digits_halves, load_split

  tmp, me = Path(sys.argv[1]), sys.argv[2]
  original = digits_halves.DigitsHalves.read_source

  def read_source(self):
    with open(tmp / "prepared.log", "a") as log:
      log.write(me + "\\n")
    time.sleep(0.5)  # keeps the preparation going while the other child arrives
    return original(self)

  digits_halves.DigitsHalves.read_source = read_source
  (tmp / f"ready-{me}").touch()
  deadline = time.time() + 60
  while not all((tmp / f"ready-{i}").exists() for i in "01") and time.time() < deadline:
    time.sleep(0.005)
  split = load_split("digits_halves", "validation")
  np.savez(tmp / f"out-{me}.npz", ids=split.ids, label=split.label, **split.features)
  """
)


def test_processes_preparing_at_once_take_turns(tmp_path, monkeypatch):
  cache_dir = tmp_path / "cache"
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(cache_dir))
  children = [
    subprocess.Popen(
      [sys.executable, "-c", _CHILD, str(tmp_path), me],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for me in "01"
  ]
  for child in children:
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr
  assert len((tmp_path / "prepared.log").read_text().split()) == 1  # prepared once
  assert len(list(cache_dir.rglob("dataset_info.json"))) == 1
  assert not list(cache_dir.rglob("*.lock"))
  first, second = (np.load(tmp_path / f"out-{me}.npz") for me in "01")
  assert sorted(first.files) == ["ids", "label", "left", "right"]
  for key in first.files:
    np.testing.assert_array_equal(first[key], second[key])
  np.testing.assert_array_equal(
    first["left"], load_split("digits_halves", "validation").features["left"]
  )


def test_lock_is_exclusive_and_cleans_up(tmp_path):
  lock = tmp_path / "x.lock"
  with cache._exclusive(lock):
    assert lock.exists()
    probe = subprocess.run(
      [
        sys.executable,
        "-c",
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n  fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
        "  sys.exit(3)",
        str(lock),
      ],
      timeout=30,
    )
    assert probe.returncode == 3  # held: another process cannot take it
  assert not lock.exists()
