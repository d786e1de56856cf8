"""Tests of mscross.dotted (dotted keys on nested dicts and ConfigDicts: get, set_, flatten, and
the ConfigError that names an unknown key) and of mscross.atomic (files written whole or not at
all, with no temporary file left behind either way)."""

import json
import os
import re

import ml_collections
import pytest

from mscross import atomic, dotted
from mscross.errors import ConfigError


def nested_dict():
  return {
    "optim": {"lr": 0.1, "schedule": {"warmup": 5, "kind": "cosine"}},
    "loss": {"reg": {"weight": 0.5}},
    "steps": 100,
    "layers": (8, 4),
  }


def config_dict():
  c = ml_collections.ConfigDict()
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.1
  c.optim.schedule = ml_collections.ConfigDict({"warmup": 5, "kind": "cosine"})
  c.loss = ml_collections.ConfigDict({"reg": {"weight": 0.5}})
  c.steps = 100
  c.layers = (8, 4)
  return c


TREES = {"dict": nested_dict, "config_dict": config_dict}
FLAT = {
  "optim.lr": 0.1,
  "optim.schedule.warmup": 5,
  "optim.schedule.kind": "cosine",
  "loss.reg.weight": 0.5,
  "steps": 100,
  "layers": (8, 4),
}


@pytest.mark.parametrize("kind", sorted(TREES))
def test_get(kind):
  tree = TREES[kind]()
  for key, value in FLAT.items():
    assert dotted.get(tree, key) == value, key
  # Inner nodes are values too.
  assert dotted.get(tree, "optim.schedule")["warmup"] == 5
  assert dotted.get(tree, "loss.reg") == tree["loss"]["reg"]


@pytest.mark.parametrize("kind", sorted(TREES))
@pytest.mark.parametrize(
  "key",
  ["optim.momentum", "optimizer.lr", "optim.schedule.warmup.steps", "steps.x", "", "optim."],
)
def test_get_unknown_key_names_it(kind, key):
  with pytest.raises(ConfigError, match=f"unknown config key '{re.escape(key)}'"):
    dotted.get(TREES[kind](), key)


@pytest.mark.parametrize("kind", sorted(TREES))
def test_set_existing_keys(kind):
  tree = TREES[kind]()
  dotted.set_(tree, "optim.lr", 0.01)
  dotted.set_(tree, "optim.schedule.kind", "linear")
  dotted.set_(tree, "steps", 7)
  dotted.set_(tree, "layers", (3,))
  assert tree["optim"]["lr"] == 0.01
  assert tree["optim"]["schedule"]["kind"] == "linear"
  assert tree["steps"] == 7 and tuple(tree["layers"]) == (3,)
  # Nothing else moved.
  assert dotted.get(tree, "optim.schedule.warmup") == 5
  assert dotted.get(tree, "loss.reg.weight") == 0.5


# (key, the part of it up to the first unknown name, which the message must name at least)
NEW_KEYS = [
  ("optim.momentum", "optim.momentum"),
  ("new", "new"),
  ("steps.x", "steps.x"),
  ("optim.lr.value", "optim.lr.value"),
  ("loss.reg.w", "loss.reg.w"),
  ("optimizer.lr", "optimizer"),
]


@pytest.mark.parametrize("kind", sorted(TREES))
@pytest.mark.parametrize("key,named", NEW_KEYS, ids=[k for k, _ in NEW_KEYS])
def test_set_refuses_new_keys(kind, key, named):
  tree = TREES[kind]()
  with pytest.raises(ConfigError, match=f"unknown config key '{re.escape(named)}"):
    dotted.set_(tree, key, 1)
  assert dotted.flatten(tree) == FLAT


def test_set_refuses_new_keys_in_unlocked_config_dict():
  # An unlocked ConfigDict would grow a field on item assignment: set_ must not rely on a lock.
  c = config_dict()
  assert not c.is_locked
  with pytest.raises(ConfigError):
    dotted.set_(c, "optim.beta", 0.9)
  assert "beta" not in c.optim


@pytest.mark.parametrize("kind", sorted(TREES))
def test_flatten(kind):
  flat = dotted.flatten(TREES[kind]())
  assert flat == FLAT
  # Depth first, in the order the tree lists its keys (a ConfigDict lists them sorted).
  assert list(flat) == (list(FLAT) if kind == "dict" else sorted(FLAT))
  assert dotted.flatten({"a": {}}) == {}
  assert dotted.flatten({"a": {"b": 1}}, prefix="x.") == {"x.a.b": 1}


def test_flatten_mixed_nesting_and_frozen_config():
  # A plain dict inside a ConfigDict, and the frozen form, flatten alike.
  c = ml_collections.ConfigDict({"model": {"encoders": {}}, "data": {"name": "digits"}})
  c.model.encoders["image"] = (8,)
  frozen = ml_collections.FrozenConfigDict(c)
  want = {"model.encoders.image": (8,), "data.name": "digits"}
  assert dotted.flatten(c) == want
  assert dotted.flatten(frozen) == want
  assert dotted.get(frozen, "model.encoders.image") == (8,)
  assert dotted.is_node(frozen) and dotted.is_node({}) and not dotted.is_node((1, 2))


# ----------------------------------------------------------------------------------------------
# atomic
# ----------------------------------------------------------------------------------------------


def only(path):
  """The folder of `path` holds that file and nothing else (no temporary file)."""
  assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]


def test_write_text_bytes_json_lines(tmp_path):
  path = tmp_path / "f"
  atomic.write_text(path, "héllo\n")
  assert path.read_text() == "héllo\n"
  only(path)
  atomic.write_bytes(str(path), b"\x00\x01\xff")
  assert path.read_bytes() == b"\x00\x01\xff"
  only(path)
  atomic.write_json(path, {"b": 1, "a": [1.5, None]})
  assert path.read_text() == '{\n  "a": [\n    1.5,\n    null\n  ],\n  "b": 1\n}'
  atomic.write_json(path, {"b": 1, "a": 2}, indent=None)
  assert path.read_text() == '{"a": 2, "b": 1}'
  only(path)
  atomic.write_lines(path, ["one\n", "two\n", "three"])
  assert path.read_text() == "one\ntwo\nthree"
  only(path)


def test_replacing_swaps_in_on_success(tmp_path):
  path = tmp_path / "data.npz"
  path.write_text("old")
  with atomic.replacing(path, suffix=".npz") as tmp:
    assert tmp.endswith(".npz") and tmp != str(path)
    assert os.path.dirname(tmp) == str(tmp_path)  # beside the target: one filesystem
    with open(tmp, "w") as f:
      f.write("new")
    # Not yet: until the block ends, readers see the old file.
    assert path.read_text() == "old"
  assert path.read_text() == "new"
  only(path)


def test_exception_inside_replacing_keeps_the_old_file(tmp_path):
  path = tmp_path / "config.json"
  path.write_text('{"old": true}')
  with pytest.raises(RuntimeError, match="crash"):
    with atomic.replacing(path) as tmp:
      with open(tmp, "w") as f:
        f.write('{"new"')
      raise RuntimeError("crash mid-write")
  assert json.loads(path.read_text()) == {"old": True}
  only(path)


def test_failed_write_of_a_new_file_leaves_nothing(tmp_path):
  path = tmp_path / "metrics.json"
  with pytest.raises(TypeError):
    atomic.write_json(path, {"x": object()})
  assert os.listdir(tmp_path) == []
  # An exception before anything was written to the temporary file.
  with pytest.raises(KeyError):
    with atomic.replacing(path):
      raise KeyError("early")
  assert os.listdir(tmp_path) == []


def test_failed_replace_keeps_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / "cache.bin"
  path.write_bytes(b"old")

  def failing_replace(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", failing_replace)
  with pytest.raises(OSError, match="disk full"):
    atomic.write_bytes(path, b"new")
  assert path.read_bytes() == b"old"
  only(path)
