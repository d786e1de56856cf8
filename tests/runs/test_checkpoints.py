"""CheckpointStore: exact round trips, falling back past a damaged save, refusing a foreign
architecture."""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mscross.errors import CheckpointError
from mscross.runs.checkpoints import CheckpointStore


def make_state(seed=0, width=4):
  k = jax.random.PRNGKey(seed)
  params = {"dense": {"kernel": jax.random.normal(k, (3, width)), "bias": jnp.zeros(width)}}
  tx = optax.adam(1e-3)
  return {"step": jnp.asarray(seed, jnp.int32), "params": params, "opt": tx.init(params)}


def leaves_equal(a, b):
  return all(
    np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def damage(step_dir: Path) -> None:
  """Truncates every data file of a saved state, as a crash mid-write or a bad disk would."""
  for path in (step_dir / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[:7])


def test_round_trip_is_exact_with_optimiser_state_types(tmp_path):
  with CheckpointStore(str(tmp_path)) as store:
    state = make_state(3)
    store.save_latest(10, state, {"best_score": 0.5})
    step, restored, meta = store.restore_latest(make_state(0))
  assert step == 10 and meta["best_score"] == 0.5
  assert leaves_equal(restored, state)
  assert type(restored["opt"][0]).__name__ == type(state["opt"][0]).__name__


def test_no_checkpoint_gives_none(tmp_path):
  with CheckpointStore(str(tmp_path)) as store:
    assert store.restore_latest(make_state()) is None
    assert store.restore_best(make_state()) is None


def test_damaged_latest_falls_back_to_previous(tmp_path):
  with CheckpointStore(str(tmp_path), keep=2) as store:
    store.save_latest(10, make_state(1), {"n": 10})
    store.save_latest(20, make_state(2), {"n": 20})
  damage(tmp_path / "checkpoints" / "latest" / "20")
  with CheckpointStore(str(tmp_path)) as store:
    step, restored, meta = store.restore_latest(make_state(0))
  assert step == 10 and meta["n"] == 10
  assert leaves_equal(restored, make_state(1))


def test_all_damaged_is_a_checkpoint_error(tmp_path):
  with CheckpointStore(str(tmp_path), keep=2) as store:
    store.save_latest(10, make_state(1), {})
  damage(tmp_path / "checkpoints" / "latest" / "10")
  with CheckpointStore(str(tmp_path)) as store, pytest.raises(CheckpointError, match="latest"):
    store.restore_latest(make_state(0))


def test_other_architecture_is_a_checkpoint_error(tmp_path):
  with CheckpointStore(str(tmp_path)) as store:
    store.save_best(5, make_state(1, width=4), {})
  with CheckpointStore(str(tmp_path)) as store, pytest.raises(CheckpointError):
    store.restore_best(make_state(0, width=8))


def test_keeps_only_the_newest(tmp_path):
  with CheckpointStore(str(tmp_path), keep=2) as store:
    for step in (10, 20, 30):
      store.save_latest(step, make_state(step), {})
    store.save_best(20, make_state(20), {})
    store.save_best(30, make_state(30), {})
  assert sorted(os.listdir(tmp_path / "checkpoints" / "latest")) == ["20", "30"]
  assert os.listdir(tmp_path / "checkpoints" / "best") == ["30"]


def test_read_only_store_on_missing_workdir(tmp_path):
  with pytest.raises(CheckpointError, match="no checkpoints"):
    CheckpointStore(str(tmp_path / "nothing"), read_only=True)
