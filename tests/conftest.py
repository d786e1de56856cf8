"""Builders shared by the tests: small configs, data specs, synthetic splits and batches, and the
training program of a config (through the library's one program builder).

Test modules import these as `from conftest import ...`; scripts that a test runs in a
subprocess put this folder on `sys.path` first.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscross import data, dotted, presets
from mscross.methods.models import DataSpec
from mscross.training import plan as plan_lib
from mscross.training import program as program_lib

REPO = Path(__file__).resolve().parents[1]
# The benchmark data: $MSCROSS_DATA_DIR, else the shared folder beside the checkout. Resolved,
# because errors name the resolved folder and the data folder may be a link.
DATA_DIR = Path(os.environ.get("MSCROSS_DATA_DIR") or REPO.parent / "shared" / "data").resolve()

NUM_CLASSES = 4
# Input widths of the synthetic modalities.
DIMS = {"a": 12, "b": 7, "c": 5, "image": 12, "text": 7}


def small_config(method: str = "acmr", overrides: dict | None = None, **sections):
  """`method`'s preset on the embedded digits with layers small enough to compile in a second
  or two, then `overrides` ({dotted key: value})."""
  c = presets.build(method, "digits_halves")
  c.model.encoder_layers = (16,)
  c.model.width = 8
  if c.model.shared_layers:
    c.model.shared_layers = (8,) * len(c.model.shared_layers)
  c.disc.layers = (8, 4)
  c.optim.lr = 1e-3
  c.train.batch_size = 8
  c.train.steps = 50
  for key, value in (overrides or {}).items():
    dotted.set_(c, key, value)
  return c


def trainer_config(method: str = "acmr", steps: int = 40, overrides: dict | None = None):
  """A config that train_and_evaluate runs in seconds on digits_halves, evaluating and saving
  every 10 steps."""
  c = small_config(method)
  c.model.encoder_layers, c.model.width = (32,), 16
  c.train.batch_size, c.train.steps = 32, steps
  c.train.eval_every = c.train.checkpoint_every = 10
  c.train.patience = 0
  for key, value in (overrides or {}).items():
    dotted.set_(c, key, value)
  return c


def free_port() -> int:
  """A TCP port of 127.0.0.1 that nothing listens on (for a server to start, or to fail on)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def spec_of(modalities=("a", "b"), num_classes: int = NUM_CLASSES) -> DataSpec:
  return DataSpec(tuple(modalities), tuple(DIMS[m] for m in modalities), num_classes)


def synthetic_split(n: int = 64, modalities=("a", "b"), seed: int = 0, labelled: bool = True):
  """A random split of `n` pairs: normal features, one of NUM_CLASSES classes per pair."""
  rng = np.random.default_rng(seed)
  labels = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, n)]
  return data.Split(
    features={m: rng.normal(size=(n, DIMS[m])).astype(np.float32) for m in modalities},
    label=labels if labelled else None,
    ids=np.arange(n).astype(str),
    class_names=tuple(f"c{i}" for i in range(NUM_CLASSES)) if labelled else (),
  )


def batch_of(n: int = 16, modalities=("a", "b"), seed: int = 0, labelled: bool = True) -> dict:
  """One training batch {"inputs": {modality: [n, d]}, "label": [n, C]} as device arrays."""
  split = synthetic_split(n, modalities, seed, labelled)
  batch = {"inputs": {m: jnp.asarray(x) for m, x in split.features.items()}}
  if labelled:
    batch["label"] = jnp.asarray(split.label)
  return batch


def program_of(config, spec: DataSpec, num_examples: int = 64, *, cache: bool = False):
  """The training program of `config` on data of `spec`, as train.py builds it."""
  return program_lib.build(plan_lib.resolve(config, spec), num_examples, cache=cache)


# train.py flags that make any preset a 20-step run of a small network.
TINY_FLAGS = (
  "--config.train.steps=20",
  "--config.train.eval_every=10",
  "--config.train.checkpoint_every=10",
  "--config.model.encoder_layers=(32,)",
  "--config.model.width=16",
  "--nocompilation_cache",
)
# The six directions of three modalities, in the order the metrics name them.
THREE_DIRECTIONS = [
  ("image2text", "image", "text"),
  ("image2audio", "image", "audio"),
  ("text2image", "text", "image"),
  ("text2audio", "text", "audio"),
  ("audio2image", "audio", "image"),
  ("audio2text", "audio", "text"),
]


def cosine64(q, g) -> np.ndarray:
  """All-pairs cosine similarity in float64 (a NumPy reference)."""
  q = q / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
  g = g / np.linalg.norm(g.astype(np.float64), axis=1, keepdims=True)
  return q @ g.T


def ap_reference(scores: np.ndarray, rel: np.ndarray) -> float:
  """AP over a whole ranking, a NumPy loop: the relevant items of a group of tied scores all
  get the precision at the group's end (scikit-learn's `average_precision_score`)."""
  order = np.argsort(-scores, kind="stable")
  s, r = scores[order], rel[order]
  ap, hits, i = 0.0, 0, 0
  while i < len(s):
    j = i
    while j + 1 < len(s) and s[j + 1] == s[i]:
      j += 1
    group_hits = int(r[i : j + 1].sum())
    hits += group_hits
    ap += group_hits * hits / (j + 1)
    i = j + 1
  return ap / hits


def member(state, m: int = 0):
  """Member `m` of a population state."""
  return jax.tree.map(lambda x: x[m], state)


def flat(tree) -> np.ndarray:
  """Every leaf of a pytree, raveled into one float64 vector (for comparisons)."""
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


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
