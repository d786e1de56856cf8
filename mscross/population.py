"""Populations: many models trained in one compiled program.

A population of P members is one train state with a leading member axis; the train step is
`jax.vmap`ped over it, so one compilation serves every member. Members differ in

* their seed (`seed + m`, unless `population.vary_seed` is off): initial weights and batch order;
* the continuous hyperparameters listed in `population.hparams`, a JSON object
  {"dotted.key": [value of member 0, value of member 1, ...]}.

Only TRACED keys may differ: the learning rates, the adversary's weight, `model.mu`, and each
active loss term's weight and float options (`traced_keys`). These enter the step as a pytree of
scalars, never as constants of the program, so the same program also serves a later run of
another value (JAX's persistent compilation cache then skips compiling it again). Everything
else (layer widths, batch size, step counts, string and integer options) fixes the program's
shape and is shared by every member.

A float option that is 0.0 for every member stays a Python constant: a zero often switches work
off (the intra-modal term of MNS-GAN), which a traced value could not.
"""

from __future__ import annotations

import copy
import json

import jax.numpy as jnp
import numpy as np

from mscross import config as config_lib
from mscross import loss_terms
from mscross.errors import ConfigError

BASE_TRACED = ("optim.lr", "optim.disc_lr", "adv.weight", "model.mu")


def candidate_keys(config) -> list[str]:
  """Every key that may be traced for `config`'s active loss terms."""
  return [*BASE_TRACED, *loss_terms.traced_options(loss_terms.active_terms(config.loss))]


def _parse_hparams(config) -> dict[str, list]:
  raw = config.population.hparams
  if not raw:
    return {}
  try:
    values = json.loads(raw) if isinstance(raw, str) else dict(raw)
  except json.JSONDecodeError as e:
    raise ConfigError(f"config.population.hparams is not a JSON object: {e}") from None
  if not isinstance(values, dict):
    raise ConfigError("config.population.hparams must be a JSON object {key: [values]}")
  return values


def member_configs(config) -> list:
  """The P member configs of `config`'s population (P = population.size); validates
  `population.hparams`."""
  size = int(config.population.size)
  sweep = _parse_hparams(config)
  allowed = set(candidate_keys(config))
  for key, values in sweep.items():
    if key not in allowed:
      raise ConfigError(
        f"config.population.hparams: {key!r} cannot differ between members (it changes the "
        f"program's shape or is not an active float setting); these can: {sorted(allowed)}"
      )
    if not isinstance(values, list | tuple) or len(values) != size:
      raise ConfigError(
        f"config.population.hparams[{key!r}] needs one value per member ({size}), got {values!r}"
      )
    for v in values:
      if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
        raise ConfigError(f"config.population.hparams[{key!r}]: {v!r} is not a finite number")
  members = []
  for m in range(size):
    c = copy.deepcopy(config)
    with c.unlocked():
      c.population.size = 1
      c.population.hparams = ""
      if config.population.vary_seed:
        c.seed = int(config.seed) + m
      for key, values in sweep.items():
        config_lib.set_dotted(c, key, float(values[m]))
    members.append(c)
  return members


def _get(config, dotted: str):
  node = config
  for key in dotted.split("."):
    node = node[key]
  return node


def traced_keys(members: list) -> list[str]:
  """The keys that enter the step as traced scalars: every candidate that is not 0.0 in every
  member (see the module docstring)."""
  keys = []
  for key in candidate_keys(members[0]):
    values = [float(_get(c, key)) for c in members]
    if any(v != 0.0 for v in values):
      keys.append(key)
  return keys


def stacked_hparams(members: list, keys: list[str]) -> dict[str, jnp.ndarray]:
  """{key: float32 [P]}: the members' values of the traced keys."""
  return {key: jnp.asarray([float(_get(c, key)) for c in members], jnp.float32) for key in keys}


def member_seeds(members: list) -> np.ndarray:
  return np.asarray([int(c.seed) for c in members], np.int64)


def describe(members: list, keys: list[str]) -> list[dict]:
  """Per member: its seed and the values of the keys that differ between members."""
  differing = [k for k in keys if len({float(_get(c, k)) for c in members}) > 1]
  return [{"seed": int(c.seed), **{k: float(_get(c, k)) for k in differing}} for c in members]
