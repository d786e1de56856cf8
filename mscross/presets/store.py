"""Tuned presets stored as data: one JSON file per (method, dataset variant) under `tuned/`, or
under `$MSCROSS_TUNED_DIR` when it is set (`root_dir`).

A dataset variant is the dataset's name plus the extractors that differ from its builder's
defaults, so `wikipedia` (its LDA text features) and `wikipedia` with WordLlama text
(`wikipedia.text-wordllama`) are tuned and stored apart. A file holds:

- `params`: the method's search-space values (`mscross.methods`), applied with
  `methods.apply_params`, so a name such as `width` sets every key it stands for;
- `settings`: other dotted config keys the values were tuned under (the training protocol:
  evaluation cadence, patience, step cap);
- `tuning`: where the values came from: the command that produced them, the study's trial
  counts and best validation score, the commit and whether its tree was clean.

`bench/accuracy.py` writes these files from its studies; `mscross.presets.build` reads them.
"""

from __future__ import annotations

import dataclasses
import json
import os

from mscross import atomic
from mscross.errors import ConfigError

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuned")
# Another folder of tuned presets in place of the shipped ones: a lab's own benchmark results,
# or an empty folder for configs built from the registry alone (the test suite's subprocesses).
ROOT_ENV = "MSCROSS_TUNED_DIR"


def root_dir() -> str:
  """The folder the presets are read from and written to: $MSCROSS_TUNED_DIR, else `ROOT`."""
  return os.environ.get(ROOT_ENV) or ROOT


@dataclasses.dataclass(frozen=True)
class Tuned:
  method: str
  dataset: str
  extractors: dict[str, str]
  params: dict
  settings: dict
  tuning: dict

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True) + "\n"


def variant(dataset: str, extractors: dict[str, str] | None = None) -> str:
  """The folder name of a dataset variant: `uci_mfeat/fou_pix` -> `uci_mfeat-fou_pix`, with
  `.<modality>-<extractor>` for each extractor other than the builder's default, sorted."""
  name = dataset.replace("/", "-")
  for modality, extractor in sorted((extractors or {}).items()):
    name += f".{modality}-{extractor or 'none'}"
  return name


def path(method: str, dataset: str, extractors: dict[str, str] | None = None, root=None) -> str:
  return os.path.join(root or root_dir(), variant(dataset, extractors), f"{method}.json")


def read(method: str, dataset: str, extractors=None, *, root=None) -> Tuned | None:
  """The stored preset of (method, dataset variant), or None when none was tuned."""
  file = path(method, dataset, extractors, root)
  if not os.path.exists(file):
    return None
  try:
    with open(file) as f:
      raw = json.load(f)
    tuned = Tuned(**raw)
  except (OSError, ValueError, TypeError) as e:
    raise ConfigError(f"{file}: not a tuned preset ({e})") from None
  if (tuned.method, tuned.dataset) != (method, dataset) or tuned.extractors != dict(
    extractors or {}
  ):
    raise ConfigError(
      f"{file} holds the preset of {tuned.method} on {tuned.dataset} {tuned.extractors}, "
      f"not of {method} on {dataset} {dict(extractors or {})}"
    )
  return tuned


def write(tuned: Tuned, *, root=None) -> str:
  file = path(tuned.method, tuned.dataset, tuned.extractors, root)
  os.makedirs(os.path.dirname(file), exist_ok=True)
  atomic.write_text(file, tuned.to_json())
  return file


def stored(root=None) -> list[Tuned]:
  """Every stored preset, sorted by variant and method."""
  root = root or root_dir()
  out = []
  if os.path.isdir(root):
    for folder in sorted(os.listdir(root)):
      for name in sorted(os.listdir(os.path.join(root, folder))):
        if name.endswith(".json"):
          with open(os.path.join(root, folder, name)) as f:
            out.append(Tuned(**json.load(f)))
  return out
