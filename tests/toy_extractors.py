"""Small stand-ins for the pretrained extractors, for tests of the raw-data path that need no
weights: registered on import, as a user's own extractor would be (`mscross.extractors.registry`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mscross import extractors

TINY_IMAGE_DIM, TINY_TEXT_DIM = 12, 16
EXTRACT_CALLS = {"image": 0, "text": 0}


@extractors.register("tiny_image", kind="image", dim=TINY_IMAGE_DIM, licence="-", weights="-")
def _tiny_image() -> extractors.Model:
  def prepare(image):
    EXTRACT_CALLS["image"] += 1
    pixels = np.asarray(image.resize((2, 2)), np.float32) / 255.0
    return {"pixels": pixels}

  return extractors.Model(
    params={"scale": np.float32(1.0)},
    prepare=prepare,
    collate=extractors.stack_collate,
    apply=lambda params, batch: params["scale"] * batch["pixels"].reshape(-1, TINY_IMAGE_DIM),
    fingerprint="tiny_image-1",
  )


@extractors.register("tiny_text", kind="text", dim=TINY_TEXT_DIM, licence="-", weights="-")
def _tiny_text() -> extractors.Model:
  def prepare(text):
    EXTRACT_CALLS["text"] += 1
    return {
      "ids": np.asarray([ord(ch) % TINY_TEXT_DIM for ch in text], np.int32),
      # Its "vocabulary" is ASCII: every other character counts as an unknown token.
      "unknown": np.int32(sum(ord(ch) > 127 for ch in text)),
    }

  def apply(params, batch):
    counts = jax.nn.one_hot(batch["ids"], TINY_TEXT_DIM) * batch["mask"][..., None]
    return counts.sum(axis=1) / jnp.maximum(batch["mask"].sum(axis=1, keepdims=True), 1)

  return extractors.Model(
    params={},
    prepare=prepare,
    collate=extractors.pad_collate(),
    apply=apply,
    fingerprint="tiny_text-1",
    unknown_tokens=lambda prepared: (int(prepared["unknown"]), len(prepared["ids"])),
  )


TINY_EXTRACTORS = {"image": "tiny_image", "text": "tiny_text"}
