"""What a trained run is used with, read from its config once: how it is scored (`Evaluation`),
what it ranks (`Retrieval`), and the values its population's members differ in.

Training and inference both read these: the trainer selects and reports with `Evaluation`, and
`mscross.load` and eval.py score and search with the same records.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from mscross import metrics
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
  """What is ranked (`config.model.retrieval`): the common embeddings, or MS2GAN's joint
  [n(specific); mu * n(common)], with each member's `mu`."""

  kind: str
  mu: tuple[float, ...]  # per member

  @classmethod
  def of(cls, config) -> Retrieval:
    size = int(config.population.size)
    mu = population_sweep(config).get("model.mu", [config.model.mu] * size)
    return cls(config.model.retrieval, tuple(float(m) for m in mu))
