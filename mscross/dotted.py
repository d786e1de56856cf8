"""Dotted keys ("optim.lr", "loss.reg.weight") on nested configs and dicts: the one walker that
the config schema, the presets, the method registry's search space and the run plan share."""

from __future__ import annotations

from typing import Any

import ml_collections

from mscross.errors import ConfigError


def is_node(value) -> bool:
  """Whether `value` holds keys (a dict or a ConfigDict, which is no `Mapping`)."""
  return isinstance(value, dict | ml_collections.ConfigDict | ml_collections.FrozenConfigDict)


def get(tree, dotted: str) -> Any:
  """`tree["a"]["b"]["c"]` for "a.b.c"; ConfigError naming the key when a part is missing."""
  node = tree
  for part in dotted.split("."):
    if not is_node(node) or part not in node:
      raise ConfigError(f"unknown config key {dotted!r}")
    node = node[part]
  return node


def set_(tree, dotted: str, value: Any) -> None:
  """Sets an EXISTING key, as `--config.<dotted>=value` would; an unknown key is an error."""
  *path, last = dotted.split(".")
  try:
    node = get(tree, ".".join(path)) if path else tree
  except ConfigError:
    raise ConfigError(f"unknown config key {dotted!r}") from None
  if not is_node(node) or last not in node:
    raise ConfigError(f"unknown config key {dotted!r}")
  node[last] = value


def flatten(tree, prefix: str = "") -> dict[str, Any]:
  """{"a.b.c": value} for every leaf of a nested mapping (configs and plain dicts alike)."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if is_node(value):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out
