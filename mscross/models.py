"""Flax Linen modules: per-modality encoders, a common sub-network, a label classifier, and the
modality discriminator.

Every method in mscross uses the same two modules:

* `CrossModalNet` (the "generator"): image and text encoders (modality-specific MLPs), an optional
  common MLP whose ONE set of weights is applied to both modalities (MS2GAN's shared sub-network,
  DSCMR's shared projection), and one label classifier shared by both modalities.
* `ModalityDiscriminator`: a small MLP that scores whether an embedding came from the image (logit
  > 0) or the text modality.

Params are plain pytrees (`init`/`apply`); the trainer keeps the two modules' params in disjoint
subtrees `{"gen": ..., "disc": ...}` so the adversarial game updates each with its own optimiser.

Mixed precision (`config.model.dtype = "bfloat16"`): every Dense layer computes in bfloat16 while
its parameters stay float32 (so the optimiser state and updates stay float32), and both modules
return float32, so the losses and the discriminator's loss are always computed in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {
  "tanh": jnp.tanh,
  "relu": nn.relu,
  "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
  "sigmoid": nn.sigmoid,
  "none": lambda x: x,
}


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def get_activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def compute_dtype(name: str):
  """The jnp dtype the Dense layers compute in, from `config.model.dtype`."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"unknown compute dtype {name!r}; choose one of {sorted(COMPUTE_DTYPES)}")
  return COMPUTE_DTYPES[name]


def _dense(features: int, dtype: Any, name: str | None = None) -> nn.Dense:
  # param_dtype stays float32 whatever the compute dtype: bfloat16 master weights would lose
  # small Adam updates to rounding.
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


class MLP(nn.Module):
  """Dense layers with one activation; `activate_final=False` leaves the last layer linear."""

  features: Sequence[int]
  activation: str = "tanh"
  activate_final: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = get_activation(self.activation)
    for i, width in enumerate(self.features):
      x = _dense(width, self.dtype, name=f"dense_{i}")(x)
      if i < len(self.features) - 1 or self.activate_final:
        x = act(x)
    return x


class CrossModalNet(nn.Module):
  """Two modality-specific encoders, an optional common sub-network and a shared classifier.

  Attributes:
    num_classes: C, the width of the label classifier.
    img_layers, txt_layers: widths of the modality-specific encoders.
    shared_layers: widths of the common sub-network applied to both modalities with the same
      weights; empty means the encoders' outputs are the common embeddings.
    activation: activation of every hidden layer.
    activate_final: whether the encoders' last layer is activated.
    shared_activate_final: whether the common sub-network's last layer is activated.
    classifier_input: "common" classifies the common embedding; "concat" classifies the
      concatenation [specific; common] (MS2GAN).
    dtype: the dtype the Dense layers compute in (params are float32 regardless).

  Returns (from `__call__`) a dict of arrays, B = batch size:
    spec_img [B, d_s], spec_txt [B, d_s]: encoder outputs (modality-specific features);
    img [B, d], txt [B, d]: common embeddings (the discriminator's input);
    logits_img [B, C], logits_txt [B, C]: label classifier outputs.
    All float32, whatever `dtype` is.
  """

  num_classes: int
  img_layers: Sequence[int]
  txt_layers: Sequence[int]
  shared_layers: Sequence[int] = ()
  activation: str = "tanh"
  activate_final: bool = True
  shared_activate_final: bool = True
  classifier_input: str = "common"
  dtype: Any = jnp.float32

  def setup(self):
    if self.classifier_input not in ("common", "concat"):
      raise ValueError(
        f"classifier_input must be 'common' or 'concat', got {self.classifier_input!r}"
      )
    self.img_encoder = MLP(self.img_layers, self.activation, self.activate_final, self.dtype)
    self.txt_encoder = MLP(self.txt_layers, self.activation, self.activate_final, self.dtype)
    self.common = (
      MLP(self.shared_layers, self.activation, self.shared_activate_final, self.dtype)
      if self.shared_layers
      else None
    )
    self.classifier = _dense(self.num_classes, self.dtype)

  def __call__(self, x_img: jax.Array, x_txt: jax.Array) -> dict[str, jax.Array]:
    chex.assert_rank([x_img, x_txt], 2)
    chex.assert_equal_shape_prefix([x_img, x_txt], 1)
    spec_img, spec_txt = self.img_encoder(x_img), self.txt_encoder(x_txt)
    chex.assert_equal_shape([spec_img, spec_txt])
    if self.common is None:
      img, txt = spec_img, spec_txt
    else:
      img, txt = self.common(spec_img), self.common(spec_txt)
    if self.classifier_input == "concat":
      cls_img = jnp.concatenate([spec_img, img], axis=-1)
      cls_txt = jnp.concatenate([spec_txt, txt], axis=-1)
    else:
      cls_img, cls_txt = img, txt
    out = {
      "spec_img": spec_img,
      "spec_txt": spec_txt,
      "img": img,
      "txt": txt,
      "logits_img": self.classifier(cls_img),
      "logits_txt": self.classifier(cls_txt),
    }
    # Losses (norms, logsumexp over the batch) lose too much in bfloat16.
    return {k: v.astype(jnp.float32) for k, v in out.items()}


class ModalityDiscriminator(nn.Module):
  """MLP d -> hidden... -> 1: the logit that an embedding came from the image modality."""

  layers: Sequence[int] = (64, 32)
  activation: str = "leaky_relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    """float32 logits [B] whatever `dtype` is, so the modality loss is computed in float32."""
    chex.assert_rank(z, 2)
    h = MLP(self.layers, self.activation, True, self.dtype)(z) if self.layers else z
    return _dense(1, self.dtype, name="out")(h)[:, 0].astype(jnp.float32)


def build_models(config, num_classes: int) -> tuple[CrossModalNet, ModalityDiscriminator]:
  """The generator and discriminator described by `config.model` and `config.disc`."""
  m = config.model
  # Configs saved before mixed precision existed have no model.dtype.
  dtype = compute_dtype(m.get("dtype", "float32"))
  net = CrossModalNet(
    num_classes=num_classes,
    img_layers=tuple(m.img_layers),
    txt_layers=tuple(m.txt_layers),
    shared_layers=tuple(m.shared_layers),
    activation=m.activation,
    activate_final=m.activate_final,
    shared_activate_final=m.shared_activate_final,
    classifier_input=m.classifier_input,
    dtype=dtype,
  )
  disc = ModalityDiscriminator(
    layers=tuple(config.disc.layers), activation=config.disc.activation, dtype=dtype
  )
  return net, disc


def retrieval_embeddings(out: dict[str, jax.Array], *, kind: str, mu: float = 1.0):
  """The embeddings that are ranked at retrieval time.

  Args:
    out: `CrossModalNet` outputs.
    kind: "common" ranks the common embeddings; "joint" ranks
      [normalize(specific); mu * normalize(common)] (MS2GAN's joint retrieval).
    mu: weight of the common part in "joint".

  Returns:
    (img_emb [B, e], txt_emb [B, e]).
  """
  if kind == "common":
    return out["img"], out["txt"]
  if kind == "joint":

    def joint(spec, common):
      n = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
      return jnp.concatenate([n(spec), mu * n(common)], axis=-1)

    return joint(out["spec_img"], out["img"]), joint(out["spec_txt"], out["txt"])
  raise ValueError(f"retrieval must be 'common' or 'joint', got {kind!r}")
