"""Decoding image files for the image extractors, with every way a real file can go wrong turned
into a one-line `BadInput`, and the modes real collections contain (RGBA, palette, CMYK,
grayscale, 16-bit) converted to 8-bit RGB.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from mscross.extractors.extraction import BadInput

# Larger images are refused before decoding: a small file can declare a huge canvas (a
# "decompression bomb") and decoding it would exhaust memory. 8,000 x 8,000 covers photographs.
MAX_PIXELS = 64_000_000


def open_rgb(path: str | Path, *, max_pixels: int | None = None):
  """(8-bit RGB PIL image, note) of the image file `path`; the note names a mode conversion
  ("RGBA composited on white"), None when the file was RGB already. `max_pixels` defaults to
  MAX_PIXELS.

  Raises:
    BadInput: the file is missing, not an image, truncated or corrupt, or over `max_pixels`.
  """
  from PIL import Image, UnidentifiedImageError

  max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
  path = Path(path)
  if not path.is_file():
    raise BadInput(f"{path}: no such image file")
  try:
    with warnings.catch_warnings():
      # Pillow's own bomb check warns or raises at its global limit; ours is explicit below.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(path)
      width, height = image.size
      if width * height > max_pixels:
        raise BadInput(
          f"{path}: {width}x{height} pixels, over the limit of {max_pixels:,} (a possible "
          "decompression bomb)"
        )
      image.load()
  except BadInput:
    raise
  except UnidentifiedImageError as exc:
    raise BadInput(f"{path}: not an image file Pillow can read") from exc
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
    raise BadInput(f"{path}: unreadable image ({' '.join(str(exc).split())})") from exc
  return _to_rgb(image)


def _to_rgb(image):
  from PIL import Image

  mode = image.mode
  if mode == "RGB":
    return image, None
  if mode in ("I;16", "I;16B", "I;16L", "I"):
    # 16-bit (or 32-bit integer) grayscale: scale the full range to 8 bits.
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if mode.startswith("I;16") else max(float(values.max()), 1.0)
    gray = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB"), f"{mode} (16-bit) scaled to 8-bit RGB"
  if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
    # Transparent pixels would otherwise show whatever colour they happen to store.
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB"), f"{mode} composited on white"
  return image.convert("RGB"), f"{mode} converted to RGB"


def center_crop(image, size: int, *, crop_fraction: float) -> np.ndarray:
  """uint8 [size, size, 3]: the shorter side resized (bicubic) to size / crop_fraction, then
  the central size x size square, the evaluation crop of ImageNet classifiers."""
  from PIL import Image

  width, height = image.size
  scale = size / crop_fraction / min(width, height)
  resized = image.resize(
    (max(size, round(width * scale)), max(size, round(height * scale))), Image.Resampling.BICUBIC
  )
  left = (resized.size[0] - size) // 2
  top = (resized.size[1] - size) // 2
  return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
