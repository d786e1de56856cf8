"""WordLlama (l2_supercat, 256-d), a bag-of-tokens text extractor: a sentence is the mean of its
tokens' rows in an embedding table distilled from Llama 2 70B's token embeddings.

The table and the Llama 2 tokenizer (SentencePiece BPE with byte fallback, so any script,
Chinese included, becomes known tokens) are the files bundled in the `wordllama` package, read
directly: its own loader would try to download. The result equals the package's
`WordLlama.load(...).embed(texts)` with its defaults: no special tokens, no truncation, no
normalisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mscross.errors import ConfigError, one_line
from mscross.extractors import registry, weights

PACKAGE = "wordllama"
INSTALL = "pip install wordllama"
WEIGHTS = "weights/l2_supercat_256.safetensors"
TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"
TENSOR = "embedding.weight"


def convert(path: Path) -> dict[str, Any]:
  """{"embedding": float32 [32000, 256]} of the package's safetensors file (stored as float16;
  the package computes in float32)."""
  from safetensors.numpy import load_file

  try:
    table = load_file(path)[TENSOR]
  except (OSError, KeyError, ValueError) as exc:
    raise ConfigError(f"{path}: cannot read {TENSOR} ({one_line(exc)}); {INSTALL}") from exc
  return {"embedding": np.asarray(table, np.float32)}


def tokenizer(path: Path):
  """The package's Llama 2 tokenizer, set up as its `embed` uses it: no truncation, no
  padding (the batch is padded by `registry.pad_collate`)."""
  from tokenizers import Tokenizer

  tok = Tokenizer.from_file(str(path))
  tok.no_truncation()
  tok.no_padding()
  return tok


def embed(params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
  """ids, mask: int [B, T] (mask 1 on real tokens) -> float32 [B, 256], the mean of the real
  tokens' rows; a text without tokens (the empty string) gives zeros."""
  table = params["embedding"]
  # Ids past the table become its last row, as in the package (its tokenizer never makes any).
  rows = table[jnp.clip(ids, 0, table.shape[0] - 1)]
  weight = mask.astype(jnp.float32)
  # A sum of products rather than an einsum: accelerators would run the latter at reduced
  # precision.
  total = (rows.astype(jnp.float32) * weight[..., None]).sum(axis=1)
  return total / jnp.maximum(weight.sum(axis=1, keepdims=True), 1.0)


@registry.register("wordllama", kind="text", dim=256, licence="MIT", weights="wordllama (PyPI)")
def wordllama() -> registry.Model:
  """WordLlama l2_supercat 256-d: a text -> float32 [256], not normalised."""
  params, fingerprint = weights.converted(
    "wordllama", weights.package_file(PACKAGE, WEIGHTS, install=INSTALL), convert
  )
  tok = tokenizer(weights.package_file(PACKAGE, TOKENIZER, install=INSTALL))

  def prepare(text: str) -> dict[str, np.ndarray]:
    return {"ids": np.asarray(tok.encode(text, add_special_tokens=False).ids, np.int32)}

  def apply(params: Any, batch: dict[str, Any]) -> jax.Array:
    return embed(params, batch["ids"], batch["mask"])

  return registry.Model(
    params=params,
    prepare=prepare,
    # The package pads with id 0 (<unk>); padded positions are masked out either way.
    collate=registry.pad_collate(pad_id=0),
    apply=apply,
    fingerprint=fingerprint,
  )
