"""Flax Linen modules: one encoder per modality, a common sub-network, a label classifier, and the
modality discriminator.

Every method in mscross uses the same two modules:

* `CrossModalNet` (the "generator"): K modality-specific MLP encoders, an optional common MLP
  whose ONE set of weights is applied to every modality (MS2GAN's shared sub-network, DSCMR's
  shared projection), and one label classifier shared by the modalities (absent for unlabelled
  data).
* `ModalityDiscriminator`: a small MLP that classifies which of the K modalities an embedding
  came from (softmax over K logits).

Params are plain pytrees (`init`/`apply`); the trainer keeps the two modules' params in disjoint
subtrees `{"gen": ..., "disc": ...}` so the adversarial game updates each with its own optimiser.
The generator's params hold one `encoder_<modality>` subtree per modality.

Mixed precision (`config.model.dtype = "bfloat16"`): every Dense layer computes in bfloat16 while
its parameters stay float32 (so the optimiser state and updates stay float32), and both modules
return float32, so the losses and the discriminator's loss are always computed in float32.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mscross.metrics.similarity import normalize

ACTIVATIONS = {
  "tanh": jnp.tanh,
  "relu": nn.relu,
  "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
  "sigmoid": nn.sigmoid,
  "none": lambda x: x,
}

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a model needs to know of its data: the modalities in order with their input widths,
  and the number of classes (0: unlabelled, instance-level retrieval)."""

  modalities: tuple[str, ...]
  dims: tuple[int, ...]
  num_classes: int
  class_names: tuple[str, ...] = ()

  def to_json(self) -> dict:
    return {
      "modalities": list(self.modalities),
      "dims": list(self.dims),
      "num_classes": self.num_classes,
      "class_names": list(self.class_names),
    }

  @classmethod
  def from_json(cls, raw: dict) -> DataSpec:
    return cls(
      tuple(raw["modalities"]),
      tuple(int(d) for d in raw["dims"]),
      int(raw["num_classes"]),
      tuple(raw.get("class_names", ())),
    )


def _dense(features: int, dtype: Any, name: str | None = None) -> nn.Dense:
  # param_dtype stays float32 whatever the compute dtype: bfloat16 master weights would lose
  # small Adam updates to rounding.
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


# (where, x) -> x with some entries zeroed and the rest scaled up: dropout, as `dropout` makes it.
Dropout = Callable[[str, jax.Array], jax.Array]


def dropout(rng: jax.Array, rate, axis_name: str | None = None) -> Dropout:
  """Inverted dropout at `rate` (may be traced): each entry is kept with probability 1 - rate
  and scaled by 1 / (1 - rate). Every call site, named by `where`, draws its own mask from
  `rng`. With `axis_name` (inside `shard_map` over a batch-sharded mesh axis) the mask is drawn
  for the global batch and this device's rows taken, so a batch is dropped alike on any number
  of devices."""

  def drop(where: str, x: jax.Array) -> jax.Array:
    key = jax.random.fold_in(rng, zlib.crc32(where.encode()) & 0x7FFFFFFF)
    if axis_name is None:
      keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    else:
      local = x.shape[0]
      full = jax.random.bernoulli(
        key, 1.0 - rate, (local * jax.lax.axis_size(axis_name), *x.shape[1:])
      )
      keep = jax.lax.dynamic_slice_in_dim(full, jax.lax.axis_index(axis_name) * local, local)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)

  return drop


class MLP(nn.Module):
  """Dense layers with one activation; `activate_final=False` leaves the last layer linear."""

  features: Sequence[int]
  activation: str = "tanh"
  activate_final: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, hidden_dropout: Dropout | None = None) -> jax.Array:
    """`hidden_dropout` drops the activations of every layer but the last (training only)."""
    act = ACTIVATIONS[self.activation]
    for i, width in enumerate(self.features):
      x = _dense(width, self.dtype, name=f"dense_{i}")(x)
      if i < len(self.features) - 1 or self.activate_final:
        x = act(x)
      if hidden_dropout is not None and i < len(self.features) - 1:
        x = hidden_dropout(f"{self.name}/{i}", x)
    return x


class CrossModalNet(nn.Module):
  """K modality-specific encoders, an optional common sub-network and a shared classifier.

  Attributes:
    modalities: the K modality names, in the dataset's order.
    encoder_layers: per modality (same order), the widths of its encoder; all end at one width.
    num_classes: C, the width of the label classifier; 0: no classifier (unlabelled data).
    shared_layers: widths of the common sub-network applied to every modality with the same
      weights; empty means the encoders' outputs are the common embeddings.
    activation: activation of every hidden layer.
    activate_final: whether the encoders' last layer is activated.
    shared_activate_final: whether the common sub-network's last layer is activated.
    classifier_input: "common" classifies the common embedding; "concat" classifies the
      concatenation [specific; common] (MS2GAN).
    dtype: the dtype the Dense layers compute in (params are float32 regardless).

  `__call__(inputs)` takes {modality: [B, d_m]} (every modality, or a subset: then only those are
  encoded) and returns a dict of float32 arrays (whatever `dtype` is), stacked over the given
  modalities in `modalities` order (training may pass `input_dropout` for the inputs and
  `hidden_dropout` for every hidden layer of the encoders and the common net):
    spec [K, B, d_s]: encoder outputs (modality-specific features);
    emb [K, B, d]: common embeddings (the discriminator's input);
    logits [K, B, C]: label classifier outputs (only when num_classes > 0).
  """

  modalities: tuple[str, ...]
  encoder_layers: tuple[tuple[int, ...], ...]
  num_classes: int
  shared_layers: Sequence[int] = ()
  activation: str = "tanh"
  activate_final: bool = True
  shared_activate_final: bool = True
  classifier_input: str = "common"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self,
    inputs: Mapping[str, jax.Array],
    *,
    input_dropout: Dropout | None = None,
    hidden_dropout: Dropout | None = None,
  ) -> dict[str, jax.Array]:
    unknown = set(inputs) - set(self.modalities)
    if unknown or not inputs:
      raise ValueError(f"expected inputs of {self.modalities}, got {sorted(inputs)}")
    # A subset of the modalities encodes just those (the outputs stack them in model order).
    pairs = zip(self.modalities, self.encoder_layers, strict=True)
    present = [(m, layers) for m, layers in pairs if m in inputs]
    xs = [inputs[m] for m, _ in present]
    chex.assert_rank(xs, 2)
    chex.assert_equal_shape_prefix(xs, 1)
    if input_dropout is not None:
      xs = [input_dropout(f"input_{m}", x) for (m, _), x in zip(present, xs, strict=True)]
    spec = jnp.stack(
      [
        MLP(layers, self.activation, self.activate_final, self.dtype, name=f"encoder_{m}")(
          x, hidden_dropout
        )
        for (m, layers), x in zip(present, xs, strict=True)
      ]
    )
    emb = spec
    if self.shared_layers:
      common = MLP(
        tuple(self.shared_layers),
        self.activation,
        self.shared_activate_final,
        self.dtype,
        name="common",
      )
      emb = common(spec, hidden_dropout)
    out = {"spec": spec, "emb": emb}
    if self.num_classes:
      cls_in = jnp.concatenate([spec, emb], axis=-1) if self.classifier_input == "concat" else emb
      out["logits"] = _dense(self.num_classes, self.dtype, name="classifier")(cls_in)
    # Losses (norms, logsumexp over the batch) lose too much in bfloat16.
    return {k: v.astype(jnp.float32) for k, v in out.items()}


class ModalityDiscriminator(nn.Module):
  """MLP d -> hidden... -> K: the logits of which modality an embedding came from."""

  num_modalities: int
  layers: Sequence[int] = (64, 32)
  activation: str = "leaky_relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    """float32 logits [..., K] of embeddings z [..., d], whatever `dtype` is."""
    h = MLP(tuple(self.layers), self.activation, True, self.dtype)(z) if self.layers else z
    return _dense(self.num_modalities, self.dtype, name="out")(h).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The two networks' shape: `config.model` (less what is ranked) and `config.disc`."""

  encoder_layers: tuple[int, ...]  # hidden widths of every modality's encoder...
  encoders: tuple[tuple[str, tuple[int, ...]], ...]  # ...unless overridden here, per modality
  encoder_width: int  # the width every encoder ends in
  shared_layers: tuple[int, ...]
  activation: str
  activate_final: bool
  shared_activate_final: bool
  classifier_input: str
  dtype: str
  disc_layers: tuple[int, ...]
  disc_activation: str

  @classmethod
  def of(cls, config) -> Architecture:
    m = config.model
    return cls(
      encoder_layers=tuple(int(w) for w in m.encoder_layers),
      encoders=tuple((name, tuple(int(w) for w in ws)) for name, ws in m.encoders.items()),
      encoder_width=int(m.encoder_width),
      shared_layers=tuple(int(w) for w in m.shared_layers),
      activation=m.activation,
      activate_final=bool(m.activate_final),
      shared_activate_final=bool(m.shared_activate_final),
      classifier_input=m.classifier_input,
      dtype=m.dtype,
      disc_layers=tuple(int(w) for w in config.disc.layers),
      disc_activation=config.disc.activation,
    )

  def encoder_widths(self, modality: str) -> tuple[int, ...]:
    """The full widths of `modality`'s encoder: its hidden layers, then `encoder_width`."""
    hidden = dict(self.encoders).get(modality, self.encoder_layers)
    return (*hidden, self.encoder_width)


def build_models(arch: Architecture, spec: DataSpec) -> tuple[CrossModalNet, ModalityDiscriminator]:
  """The generator and discriminator of architecture `arch` on data of `spec`."""
  dtype = COMPUTE_DTYPES[arch.dtype]
  net = CrossModalNet(
    modalities=spec.modalities,
    encoder_layers=tuple(arch.encoder_widths(name) for name in spec.modalities),
    num_classes=spec.num_classes,
    shared_layers=arch.shared_layers,
    activation=arch.activation,
    activate_final=arch.activate_final,
    shared_activate_final=arch.shared_activate_final,
    classifier_input=arch.classifier_input,
    dtype=dtype,
  )
  disc = ModalityDiscriminator(
    num_modalities=len(spec.modalities),
    layers=arch.disc_layers,
    activation=arch.disc_activation,
    dtype=dtype,
  )
  return net, disc


def init_generator(net: CrossModalNet, spec: DataSpec, seed: int = 0) -> dict:
  """Generator params of `seed`, initialised as the train state's are: the restore target (as
  shapes, under `jax.eval_shape`) when only the generator is needed."""
  dummy = {m: jnp.zeros((2, d)) for m, d in zip(spec.modalities, spec.dims, strict=True)}
  k_gen, _ = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 0))
  return net.init(k_gen, dummy)["params"]


RETRIEVAL_KINDS = ("common", "joint", "label")


def retrieval_embeddings(
  out: dict[str, jax.Array], *, kind: str, mu=1.0, label_weight=0.0
) -> jax.Array:
  """The embeddings that are ranked at retrieval time, [K, B, e].

  Args:
    out: `CrossModalNet` outputs.
    kind: "common" ranks the common embeddings; "joint" ranks
      [normalize(specific); mu * normalize(common)] (MS2GAN's joint retrieval); "label" ranks
      the classifier's predicted distribution softmax(logits), as semantic matching does.
    mu: weight of the common part in "joint" (may be traced).
    label_weight: with "common" or "joint", the weight of the predicted distribution fused with
      them: [normalize(ranked); label_weight * normalize(softmax(logits))] (may be traced); a
      Python 0 (the default) fuses nothing.
  """
  if kind == "label":
    return jax.nn.softmax(out["logits"], axis=-1)
  if kind == "common":
    ranked = out["emb"]
  elif kind == "joint":
    ranked = jnp.concatenate([normalize(out["spec"]), mu * normalize(out["emb"])], axis=-1)
  else:
    raise ValueError(f"retrieval must be one of {RETRIEVAL_KINDS}, got {kind!r}")
  if isinstance(label_weight, int | float) and label_weight == 0:
    return ranked
  predicted = normalize(jax.nn.softmax(out["logits"], axis=-1))
  return jnp.concatenate([normalize(ranked), label_weight * predicted], axis=-1)
