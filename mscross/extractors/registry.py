"""The extractor registry: pretrained extractors that turn raw items (images, texts) into feature
vectors, by name.

An extractor is a pure function of (params, batch), like the rest of the package, plus the host
side that makes a batch out of raw items. Registering one of your own takes a loader that
returns a `Model`:

    from mscross import extractors

    @extractors.register("my_text", kind="text", dim=300, licence="MIT", weights="my-package")
    def my_text() -> extractors.Model:
      table = np.load(...)                              # [vocab, 300]
      return extractors.Model(
        params={"table": table},
        prepare=lambda text: {"ids": my_tokenize(text)},  # one raw item -> arrays
        collate=extractors.pad_collate(max_length=256),     # a list of those -> one batch
        apply=lambda params, batch: ...,                  # batch -> [B, 300], jit-able
        fingerprint="my_text-v1",                         # changes when outputs would change
      )

after which `data.extractors.text=my_text` selects it. What the loader's `Model` must provide:
- `params`: a pytree of arrays, the weights;
- `prepare(item)`: one raw item -> a dict of numpy arrays. An image extractor gets an RGB
  `PIL.Image.Image` (decoding and checks are done for it); a text extractor gets a `str`;
- `collate(list of dicts)`: one batch, a dict of arrays with a leading batch axis;
- `apply(params, batch)`: a jit-able function returning float32 [B, dim];
- `fingerprint`: a string naming the weights and the code version; caches of extracted
  features are keyed by it;
- optionally `unknown_tokens(prepared)`: for a text extractor with a fixed vocabulary, (tokens
  of one prepared item its vocabulary lacks, tokens): texts it mostly cannot read are named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mscross.errors import ConfigError

KINDS = ("image", "text")


@dataclasses.dataclass(frozen=True)
class Model:
  """A loaded extractor: weights, host-side batching and the pure device-side function."""

  params: Any
  prepare: Callable[[Any], dict[str, np.ndarray]]
  collate: Callable[[Sequence[dict[str, np.ndarray]]], dict[str, np.ndarray]]
  apply: Callable[[Any, dict[str, Any]], Any]
  fingerprint: str
  unknown_tokens: Callable[[dict[str, np.ndarray]], tuple[int, int]] | None = None


@dataclasses.dataclass(frozen=True)
class Extractor:
  """A registered extractor: what it reads, what it returns, and where its weights come from."""

  name: str
  kind: str
  dim: int
  licence: str
  weights: str
  loader: Callable[[], Model]

  def load(self) -> Model:
    """The extractor's weights and functions (a converted copy of the weights is cached)."""
    model = _LOADED.get(self.name)
    if model is None:
      model = _LOADED[self.name] = self.loader()
    return model


EXTRACTORS: dict[str, Extractor] = {}
# Loaded models, per process: a run that embeds several splits loads the weights once.
_LOADED: dict[str, Model] = {}


def register(
  name: str, *, kind: str, dim: int, licence: str, weights: str
) -> Callable[[Callable[[], Model]], Callable[[], Model]]:
  """Registers the decorated loader as extractor `name`; returns the loader unchanged."""
  if kind not in KINDS:
    raise ValueError(f"extractor {name!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}")

  def decorate(loader: Callable[[], Model]) -> Callable[[], Model]:
    known = EXTRACTORS.get(name)
    if known is not None and known.loader.__qualname__ != loader.__qualname__:
      raise ValueError(f"extractor name {name!r} is taken by {known.loader.__qualname__}")
    EXTRACTORS[name] = Extractor(name, kind, dim, licence, weights, loader)
    _LOADED.pop(name, None)
    return loader

  return decorate


def names(kind: str | None = None) -> list[str]:
  """The registered extractors' names, of one kind if given."""
  return [name for name, e in EXTRACTORS.items() if kind is None or e.kind == kind]


def get(name: str, kind: str | None = None) -> Extractor:
  """The extractor `name`; ConfigError naming the choices if there is none (of that kind)."""
  extractor = EXTRACTORS.get(name)
  if extractor is None or (kind is not None and extractor.kind != kind):
    what = f"{kind} extractor" if kind else "extractor"
    raise ConfigError(f"unknown {what} {name!r}; available: {', '.join(names(kind)) or 'none'}")
  return extractor


def stack_collate(items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Stacks same-shaped per-item arrays into a batch (images)."""
  return {key: np.stack([item[key] for item in items]) for key in items[0]}


def pad_collate(
  *, pad_id: int = 0, bucket: int = 16
) -> Callable[[Sequence[dict[str, np.ndarray]]], dict[str, np.ndarray]]:
  """A collate for token sequences: pads "ids" to the batch's longest, rounded up to a
  multiple of `bucket` (few distinct shapes, so few compilations), and adds "mask"."""

  def collate(items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    longest = max(1, *(len(item["ids"]) for item in items))
    length = -(-longest // bucket) * bucket
    ids = np.full((len(items), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(items), length), dtype=np.int32)
    for row, item in enumerate(items):
      ids[row, : len(item["ids"])] = item["ids"]
      mask[row, : len(item["ids"])] = 1
    return {"ids": ids, "mask": mask}

  return collate
