"""What a trained run is used with, read from its config once: how it is scored (`Evaluation`),
what it ranks (`Retrieval`), and the values its population's members differ in.

Training and inference both read these: the trainer selects and reports with `Evaluation`, and
`mscross.load` and eval.py score and search with the same records.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from mscross import dotted, metrics
from mscross.data import Split
from mscross.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """How a split's embeddings are scored (`config.eval`)."""

  select_metric: str  # chosen on the validation split, never on test
  precision_ks: tuple[int, ...]
  map_ks: tuple[int, ...]
  recall_ks: tuple[int, ...]
  block_size: int | None  # queries per block; None picks the largest that fits

  @classmethod
  def of(cls, config) -> Evaluation:
    e = config.eval
    return cls(
      select_metric=e.select_metric,
      precision_ks=tuple(int(k) for k in e.precision_ks),
      map_ks=tuple(int(k) for k in e.map_ks),
      recall_ks=tuple(int(k) for k in e.recall_ks),
      block_size=int(e.block_size) or None,
    )

  def metrics(self, embeddings: np.ndarray, split: Split) -> dict[str, float]:
    """Retrieval metrics of every direction (and their average) of embeddings [K, N, e]."""
    return metrics.retrieval_metrics(
      dict(zip(split.modalities, embeddings, strict=True)),
      split.label,
      ks=self.precision_ks,
      map_ks=self.map_ks,
      recall_ks=self.recall_ks,
      block_size=self.block_size,
    )


def population_sweep(config) -> dict[str, list[float]]:
  """`population.hparams` of `config`: {dotted key: one finite number per member}, checked for
  its shape (which keys may differ is the run plan's to say)."""
  raw, size = config.population.hparams, int(config.population.size)
  if not raw:
    return {}
  try:
    sweep = json.loads(raw) if isinstance(raw, str) else dict(raw)
  except json.JSONDecodeError as e:
    raise ConfigError(f"config.population.hparams is not a JSON object: {e}") from None
  if not isinstance(sweep, dict):
    raise ConfigError("config.population.hparams must be a JSON object {key: [values]}")
  for key, values in sweep.items():
    if not isinstance(values, list | tuple) or len(values) != size:
      raise ConfigError(
        f"config.population.hparams[{key!r}] needs one value per member ({size}), got {values!r}"
      )
    for v in values:
      if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
        raise ConfigError(f"config.population.hparams[{key!r}]: {v!r} is not a finite number")
  return sweep


@dataclasses.dataclass(frozen=True)
class Retrieval:
  """What is ranked (`config.model.retrieval`): the common embeddings, MS2GAN's joint
  [n(specific); mu * n(common)] or the predicted labels, with each member's `mu`, and the
  weight each fuses the predicted labels in at (`model.label_weight`)."""

  kind: str
  mu: tuple[float, ...]  # per member
  label_weight: tuple[float, ...]  # per member

  @property
  def fused(self) -> bool:
    return any(w != 0 for w in self.label_weight)

  @classmethod
  def of(cls, config) -> Retrieval:
    size = int(config.population.size)
    sweep = population_sweep(config)
    per_member = lambda key: tuple(
      float(v) for v in sweep.get(key, [dotted.get(config, key)] * size)
    )
    return cls(config.model.retrieval, per_member("model.mu"), per_member("model.label_weight"))
