"""Several trained models served as one: the members of a population, or runs given together.

    model = mscross.load("runs/mnsgan_web", member="ensemble")         # every member of a run
    model = mscross.load(["runs/a", "runs/b"])                          # every member of both
    gallery = model.index("text", text_features)
    scores, rows = model.search("image", image_features, gallery, k=10)

An ensemble ranks by the mean of its members' cosine similarities. Each member's embeddings are
l2-normalised and the M members' concatenated, scaled by 1 / sqrt(M): the cosine of two such
vectors is the mean of the members' cosines, so an ensemble's embeddings go wherever one model's
do (`retrieval.Index`, the metrics, the report). Each member reads new vectors through the input
transform of its own workdir.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mscross import data
from mscross.errors import ConfigError, DataError
from mscross.metrics import similarity
from mscross.retrieval import index as index_lib
from mscross.retrieval.trained import TrainedModel


def combine(embeddings: Sequence[np.ndarray]) -> np.ndarray:
  """The ensemble embeddings [..., N, sum e_m] of M members' embeddings [..., N, e_m]: each
  l2-normalised (a zero row stays zero), concatenated and scaled by 1 / sqrt(M)."""
  if not embeddings:
    raise ValueError("an ensemble needs at least one member's embeddings")
  parts = [np.asarray(similarity.normalize_jit(e)) for e in embeddings]
  return np.concatenate(parts, axis=-1) / np.sqrt(len(parts), dtype=np.float32)


class Ensemble:
  """Trained models of one dataset served as one model (module docstring)."""

  def __init__(self, members: Sequence[TrainedModel]):
    if not members:
      raise ConfigError("an ensemble needs at least one trained model")
    first = members[0]
    for m in members[1:]:
      if m.modalities != first.modalities or m.config.data.name != first.config.data.name:
        raise ConfigError(
          f"an ensemble's models share one dataset: {m.workdir.path} was trained on "
          f"{m.config.data.name!r} ({', '.join(m.modalities)}), {first.workdir.path} on "
          f"{first.config.data.name!r} ({', '.join(first.modalities)})"
        )
    self.members = tuple(members)
    self.config, self.spec = first.config, first.spec

  @property
  def modalities(self) -> tuple[str, ...]:
    return self.spec.modalities

  @property
  def step(self) -> tuple[int, ...]:
    """Each member's best step."""
    return tuple(m.step for m in self.members)

  def __len__(self) -> int:
    return len(self.members)

  def __repr__(self) -> str:
    names = ", ".join(f"{m.workdir.path}[{m.member}]" for m in self.members)
    return f"Ensemble({names})"

  def encode(self, modality: str, features) -> np.ndarray:
    """Ensemble embeddings [N, e] of raw feature vectors [N, d] of `modality`."""
    return combine([m.encode(modality, features) for m in self.members])

  def features_of(self, modality: str, items) -> np.ndarray:
    """Features of raw items of `modality` by the extractor every member was trained on."""
    used = {dict(m.config.data.get("extractors", {})).get(modality) for m in self.members}
    if len(used) > 1:
      raise ConfigError(
        f"the ensemble's models read {modality} items with different extractors "
        f"({', '.join(sorted(map(str, used)))}): pass feature vectors to encode() instead"
      )
    return self.members[0].features_of(modality, items)

  def encode_items(self, modality: str, items) -> np.ndarray:
    return self.encode(modality, self.features_of(modality, items))

  def split_embeddings(self, name: str) -> tuple[data.Split, dict[str, np.ndarray]]:
    """(the split `name`, {modality: [N, e]}): each member embeds the split as its own workdir
    transforms it."""
    split, parts = None, []
    for m in self.members:
      own, emb = m.split_embeddings(name)
      if split is not None and not np.array_equal(own.ids, split.ids):
        raise DataError(
          f"the {name} split of {m.workdir.path} holds other items than that of "
          f"{self.members[0].workdir.path}: an ensemble's runs must share their splits"
        )
      split = split or own
      parts.append(np.stack([emb[k] for k in split.modalities]))
    stacked = combine(parts)
    return split, dict(zip(split.modalities, stacked, strict=True))

  def split_metrics(self, name: str) -> dict[str, float]:
    split, emb = self.split_embeddings(name)
    stacked = np.stack([emb[k] for k in split.modalities])
    return self.members[0].workdir.evaluation.metrics(stacked, split)

  def index(self, modality: str, features, *, ids=None, labels=None):
    """A `retrieval.Index` over the ensemble embeddings of raw gallery vectors of `modality`."""
    return index_lib.Index.from_arrays(self.encode(modality, features), ids=ids, labels=labels)

  def search(self, modality: str, queries, index, k: int = 10):
    """(scores [Q, k], gallery rows [Q, k]) of raw query vectors of `modality` in `index`."""
    return index.search(self.encode(modality, queries), k)
