"""Builders and references the tests share: small configs, data specs, synthetic splits and
batches, the training program of a config (through the library's one program builder), numeric
references, image and archive files, and loading bench scripts.

Test modules import these as `from helpers import ...`; scripts that a test runs in a subprocess
put this folder on `sys.path` first.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import sys
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

NUM_CLASSES = 4
# Input widths of the synthetic modalities.
DIMS = {"a": 12, "b": 7, "c": 5, "image": 12, "text": 7}


def small_config(method: str = "acmr", overrides: dict | None = None, **sections):
  """`method`'s preset on the embedded digits with layers small enough to compile in a second
  or two, then `overrides` ({dotted key: value})."""
  # Without the stored tuned values: the tests size their runs from the registry's settings.
  c = presets.build(method, "digits_halves", use_tuned=False)
  c.model.encoder_layers = (16,)
  c.model.encoder_width = 8
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
  c.model.encoder_layers, c.model.encoder_width = (32,), 16
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


BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


@contextlib.contextmanager
def bench_module(name: str):
  """bench/<name>.py as a module, for the block. A script's own folder is on its import path,
  so bench/ goes on the tests' path for its sibling imports (provenance, accuracy); it is taken
  off again with every module loaded from it, so that no other test imports them by accident."""
  sys.path.insert(0, str(BENCH_DIR))
  spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  # dataclasses look their module up in sys.modules while the class body is processed.
  sys.modules[spec.name] = module
  try:
    spec.loader.exec_module(module)
    yield module
  finally:
    sys.path.remove(str(BENCH_DIR))
    for loaded, m in list(sys.modules.items()):
      if loaded == spec.name or Path(getattr(m, "__file__", None) or "/").parent == BENCH_DIR:
        sys.modules.pop(loaded, None)


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


def program_of(config, spec: DataSpec, num_examples: int = 64):
  """The training program of `config` on data of `spec`, as train.py builds it."""
  return program_lib.build(plan_lib.resolve(config, spec), num_examples)


# train.py flags that make any preset a 20-step run of a small network.
TINY_FLAGS = (
  "--config.train.steps=20",
  "--config.train.eval_every=10",
  "--config.train.checkpoint_every=10",
  "--config.model.encoder_layers=(32,)",
  "--config.model.encoder_width=16",
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


def write_image(path: Path, mode: str = "RGB", size=(24, 16), seed: int = 0, fmt=None) -> Path:
  """A small random image file of `mode` ("RGB", "RGBA", "CMYK", "L", "I;16")."""
  from PIL import Image

  rng = np.random.default_rng(seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  if mode == "I;16":
    pixels = rng.integers(0, 65535, size[::-1], dtype=np.uint16)
    Image.fromarray(pixels).save(path)  # uint16 -> mode I;16
    return path
  channels = len(mode) if mode != "L" else 1
  pixels = rng.integers(0, 255, (*size[::-1], channels), dtype=np.uint8)
  Image.frombytes(mode, size, pixels.tobytes()).save(path, format=fmt)
  return path


def write_archive(folder: Path, per_class: int = 10, test_per_class: int = 4) -> Path:
  """A folder in the Wikipedia archive layout: 2 classes ("cats", "dogs"), JPEG images and
  UTF-8 texts whose pixels and words depend on the class."""
  names = ("cats", "dogs")
  (folder / "categories.list").parent.mkdir(parents=True, exist_ok=True)
  (folder / "categories.list").write_text("\n".join(names) + "\n")
  number = 0
  for split, count in (("train", per_class), ("test", test_per_class)):
    lines = []
    for c, name in enumerate(names):
      for _ in range(count):
        number += 1
        write_image(folder / "images" / name / f"img{number}.jpg", seed=number + 1000 * c)
        words = ("meow purr whiskers " if c == 0 else "bark woof fetch ") * (1 + number % 3)
        (folder / "texts").mkdir(exist_ok=True)
        (folder / "texts" / f"txt{number}.txt").write_text(words, encoding="utf-8")
        lines.append(f"txt{number}\timg{number}\t{c + 1}")
    list_name = "trainset_txt_img_cat.list" if split == "train" else "testset_txt_img_cat.list"
    (folder / list_name).write_text("\n".join(lines) + "\n")
  return folder


def check_data_declared(item) -> None:
  """pytest.UsageError unless a test that takes `data_dir` says which files it reads
  (`@pytest.mark.data(...)`) and a test marked `data` takes `data_dir`: the marker is what
  `-m data` and `-m "not data"` select, and the fixture is what skips it on a machine without
  the files."""
  marked = item.get_closest_marker("data") is not None
  uses = "data_dir" in getattr(item, "fixturenames", ())
  if marked != uses or (marked and not item.get_closest_marker("data").args):
    raise pytest.UsageError(
      f"{item.nodeid}: a test that reads the benchmark files takes the data_dir fixture and "
      'is marked @pytest.mark.data("<dataset>/<file>", ...) with the files it needs'
    )
