"""Tests of mscross.methods.models: the generator's outputs for K modalities (shapes, keys, a
subset of modalities), one forward pass against a NumPy reference computed from the params, the
ranked retrieval embeddings, the widths and models a config describes, mixed precision, the data
spec's JSON form and the modality discriminator."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import DIMS, NUM_CLASSES, small_config, spec_of

from mscross.methods import models
from mscross.methods.models import CrossModalNet, DataSpec, ModalityDiscriminator

B = 5
WIDTH = 6
# Encoders of different depths and hidden widths: only their last width must agree.
ENCODERS = {"a": (5, WIDTH), "b": (WIDTH,), "c": (4, 3, WIDTH)}


def inputs_of(modalities, seed=0):
  rng = np.random.default_rng(seed)
  return {m: rng.normal(size=(B, DIMS[m])).astype(np.float32) for m in modalities}


def make_net(modalities, num_classes=NUM_CLASSES, **kwargs):
  return CrossModalNet(
    modalities=tuple(modalities),
    encoder_layers=tuple(ENCODERS[m] for m in modalities),
    num_classes=num_classes,
    **kwargs,
  )


def init(module, inputs, seed=0):
  """Random params of the module's shapes. Unlike the initialisers' zero biases, these make a
  misplaced bias visible; and tracing the shapes skips compiling the random number generator."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), inputs)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


def output_shapes(module, inputs):
  """{key: ShapeDtypeStruct} of the outputs, traced without compiling anything."""
  return jax.eval_shape(module.apply, {"params": init(module, inputs)}, inputs)


# ----------------------------------------------------------------------------------------------
# NumPy reference (float64 loops over the layers of the params pytree)
# ----------------------------------------------------------------------------------------------

REF_ACTIVATIONS = {
  "tanh": np.tanh,
  "relu": lambda x: np.maximum(x, 0.0),
  "leaky_relu": lambda x: np.where(x > 0, x, 0.2 * x),
  "none": lambda x: x,
}


def ref_mlp(layers, x, activation, activate_final):
  """`layers` is the {"dense_<i>": {"kernel", "bias"}} subtree of one MLP."""
  act = REF_ACTIVATIONS[activation]
  x = np.asarray(x, np.float64)
  for i in range(len(layers)):
    dense = layers[f"dense_{i}"]
    x = x @ np.asarray(dense["kernel"], np.float64) + np.asarray(dense["bias"], np.float64)
    if i < len(layers) - 1 or activate_final:
      x = act(x)
  return x


def ref_net(
  params,
  inputs,
  modalities,
  *,
  activation,
  activate_final,
  shared_activate_final,
  classifier_input,
):
  spec, emb, logits = [], [], []
  for m in modalities:
    s = ref_mlp(params[f"encoder_{m}"], inputs[m], activation, activate_final)
    e = ref_mlp(params["common"], s, activation, shared_activate_final) if "common" in params else s
    spec.append(s)
    emb.append(e)
    if "classifier" in params:
      x = np.concatenate([s, e], axis=-1) if classifier_input == "concat" else e
      cls = params["classifier"]
      logits.append(x @ np.asarray(cls["kernel"], np.float64) + np.asarray(cls["bias"], np.float64))
  out = {"spec": np.stack(spec), "emb": np.stack(emb)}
  if logits:
    out["logits"] = np.stack(logits)
  return out


def ref_unit(x):
  x = np.asarray(x, np.float64)
  norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
  return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


# ----------------------------------------------------------------------------------------------
# CrossModalNet
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modalities", [("a", "b"), ("a", "b", "c")], ids=["K2", "K3"])
@pytest.mark.parametrize("shared", [(), (7, 3)], ids=["no_shared", "shared"])
@pytest.mark.parametrize("classifier_input", ["common", "concat"])
def test_output_shapes_and_keys(modalities, shared, classifier_input):
  net = make_net(modalities, shared_layers=shared, classifier_input=classifier_input)
  out = output_shapes(net, inputs_of(modalities))
  k, d = len(modalities), shared[-1] if shared else WIDTH
  assert set(out) == {"spec", "emb", "logits"}
  assert out["spec"].shape == (k, B, WIDTH)
  assert out["emb"].shape == (k, B, d)
  assert out["logits"].shape == (k, B, NUM_CLASSES)
  assert all(v.dtype == jnp.float32 for v in out.values())


@pytest.mark.parametrize("shared", [(), (3,)], ids=["no_shared", "shared"])
def test_unlabelled_data_has_no_classifier(shared):
  net = make_net(("a", "b"), num_classes=0, shared_layers=shared)
  inputs = inputs_of(("a", "b"))
  assert "classifier" not in init(net, inputs)
  out = output_shapes(net, inputs)
  assert set(out) == {"spec", "emb"}


def test_only_the_common_network_is_shared():
  net = make_net(("a", "b", "c"), shared_layers=(7, 3))
  params = init(net, inputs_of(("a", "b", "c")))
  # One common network and one classifier for all K modalities, one encoder per modality.
  assert set(params) == {"encoder_a", "encoder_b", "encoder_c", "common", "classifier"}
  for m, widths in ENCODERS.items():
    got = [params[f"encoder_{m}"][f"dense_{i}"]["kernel"].shape for i in range(len(widths))]
    assert got == list(zip((DIMS[m], *widths[:-1]), widths, strict=True))
  assert params["common"]["dense_0"]["kernel"].shape == (WIDTH, 7)
  assert params["classifier"]["kernel"].shape == (3, NUM_CLASSES)


# (activation, activate_final, shared_activate_final, shared_layers, classifier_input)
FORWARD_CASES = [
  ("tanh", True, True, (), "common"),
  ("tanh", True, False, (7, 3), "concat"),
  ("relu", False, True, (4,), "common"),
  ("relu", True, False, (7, 3), "concat"),
]


@pytest.mark.parametrize("modalities", [("a", "b"), ("a", "b", "c")], ids=["K2", "K3"])
@pytest.mark.parametrize(
  "activation,activate_final,shared_activate_final,shared,classifier_input", FORWARD_CASES
)
def test_forward_matches_reference(
  modalities, activation, activate_final, shared_activate_final, shared, classifier_input
):
  options = dict(
    activation=activation,
    activate_final=activate_final,
    shared_activate_final=shared_activate_final,
    classifier_input=classifier_input,
  )
  net = make_net(modalities, shared_layers=shared, **options)
  inputs = inputs_of(modalities, seed=1)
  params = init(net, inputs, seed=2)
  got = net.apply({"params": params}, inputs)
  want = ref_net(params, inputs, modalities, **options)
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_subset_of_modalities_gives_the_same_rows():
  modalities = ("a", "b", "c")
  net = make_net(modalities, shared_layers=(3,), classifier_input="concat")
  inputs = inputs_of(modalities, seed=3)
  params = init(net, inputs)
  full = net.apply({"params": params}, inputs)
  # The subset is given in another order than the model's: outputs follow the model's order.
  for subset in (("b",), ("c", "a")):
    out = net.apply({"params": params}, {m: inputs[m] for m in subset})
    rows = [modalities.index(m) for m in modalities if m in subset]
    for key in full:
      assert out[key].shape[0] == len(subset)
      np.testing.assert_allclose(
        out[key], np.asarray(full[key])[rows], rtol=1e-6, atol=1e-6, err_msg=key
      )


def test_unknown_or_missing_inputs_are_refused():
  net = make_net(("a", "b"))
  inputs = inputs_of(("a", "b"))
  params = init(net, inputs)
  with pytest.raises(ValueError, match="'c'"):
    net.apply({"params": params}, {**inputs, "c": inputs_of(("c",))["c"]})
  with pytest.raises(ValueError):
    net.apply({"params": params}, {})


# ----------------------------------------------------------------------------------------------
# Retrieval embeddings
# ----------------------------------------------------------------------------------------------


def net_outputs(seed=4):
  rng = np.random.default_rng(seed)
  spec = rng.normal(size=(3, B, 4)).astype(np.float32)
  emb = 5 * rng.normal(size=(3, B, 2)).astype(np.float32)
  # A zero row must stay zero rather than turn into NaN.
  spec[1, 2] = 0.0
  emb[0, 3] = 0.0
  return {"spec": spec, "emb": emb}


@pytest.mark.parametrize("mu", [1.0, 0.25, 3.0])
def test_joint_retrieval_embeddings(mu):
  out = net_outputs()
  got = models.retrieval_embeddings(out, kind="joint", mu=mu)
  want = np.concatenate([ref_unit(out["spec"]), mu * ref_unit(out["emb"])], axis=-1)
  assert got.shape == (3, B, 6)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_joint_weight_may_be_traced():
  out = net_outputs()
  mus = np.array([0.5, 2.0], np.float32)
  got = jax.vmap(lambda mu: models.retrieval_embeddings(out, kind="joint", mu=mu))(mus)
  for i, mu in enumerate(mus):
    want = np.concatenate([ref_unit(out["spec"]), mu * ref_unit(out["emb"])], axis=-1)
    np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-6)


def test_common_retrieval_embeddings_are_the_common_embeddings():
  out = net_outputs()
  np.testing.assert_array_equal(models.retrieval_embeddings(out, kind="common"), out["emb"])
  with pytest.raises(ValueError, match="'specific'"):
    models.retrieval_embeddings(out, kind="specific")


def test_label_retrieval_ranks_the_predicted_distribution_and_fuses_it():
  out = net_outputs()
  out["logits"] = np.random.default_rng(5).normal(size=(3, B, 4)).astype(np.float32)
  probs = np.exp(out["logits"]) / np.exp(out["logits"]).sum(-1, keepdims=True)
  np.testing.assert_allclose(models.retrieval_embeddings(out, kind="label"), probs, rtol=1e-5)
  # Fused: the cosine of two items is (cos_ranked + w^2 cos_labels) / (1 + w^2).
  w = 0.7
  fused = np.asarray(models.retrieval_embeddings(out, kind="common", label_weight=w))
  cos = lambda x: ref_unit(x[0]) @ ref_unit(x[1]).T
  want = (cos(out["emb"]) + w**2 * cos(probs)) / (1 + w**2)
  got = ref_unit(fused[0]) @ ref_unit(fused[1]).T
  keep = np.linalg.norm(out["emb"][0], axis=-1) > 0  # a zero row has no direction to rank by
  np.testing.assert_allclose(got[keep], want[keep], rtol=1e-5, atol=1e-6)
  # A Python 0 fuses nothing: the common embeddings as they are.
  np.testing.assert_array_equal(models.retrieval_embeddings(out, kind="common"), out["emb"])


def test_dropout_keeps_the_expected_share_scaled_and_splits_over_devices_alike():
  rng, x = jax.random.PRNGKey(0), jnp.ones((64, 50))
  drop = models.dropout(rng, 0.3)
  y = np.asarray(drop("here", x))
  np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.7], rtol=1e-6)
  assert abs((y == 0).mean() - 0.3) < 0.03
  assert not np.array_equal(y, np.asarray(drop("there", x)))  # every call site its own mask
  np.testing.assert_array_equal(y, np.asarray(drop("here", x)))
  # On 4 "devices" of 16 rows each (vmap stands for the mesh axis), the global batch is dropped
  # exactly as on one device.
  sharded = jax.vmap(lambda part: models.dropout(rng, 0.3, "data")("here", part), axis_name="data")
  np.testing.assert_array_equal(np.asarray(sharded(x.reshape(4, 16, 50))).reshape(64, 50), y)


# ----------------------------------------------------------------------------------------------
# Models from a config
# ----------------------------------------------------------------------------------------------


def test_encoder_widths_with_per_modality_override():
  c = small_config("acmr")
  c.model.encoders["a"] = (10, 3)
  # No hidden layer at all is an override too, not a fall-back to the default.
  c.model.encoders["c"] = ()
  assert models.Architecture.of(c).encoder_widths("a") == (10, 3, 8)
  assert models.Architecture.of(c).encoder_widths("b") == (16, 8)
  assert models.Architecture.of(c).encoder_widths("c") == (8,)


def test_build_models_from_preset():
  c = small_config("ms2gan")
  c.model.encoders["b"] = (5, 4)
  spec = spec_of(("a", "b", "c"))
  net, disc = models.build_models(models.Architecture.of(c), spec)
  assert net.modalities == ("a", "b", "c")
  assert net.encoder_layers == ((16, 8), (5, 4, 8), (16, 8))
  assert net.num_classes == NUM_CLASSES
  assert tuple(net.shared_layers) == (8, 8)
  assert net.classifier_input == "concat"
  assert net.activation == c.model.activation
  assert disc.num_modalities == 3
  assert tuple(disc.layers) == (8, 4)
  assert disc.activation == "leaky_relu"
  assert net.dtype == disc.dtype == jnp.float32

  inputs = inputs_of(spec.modalities)
  params = init(net, inputs)
  assert params["encoder_b"]["dense_1"]["kernel"].shape == (5, 4)
  # "concat": the classifier sees [specific; common], 8 + 8 wide.
  assert params["classifier"]["kernel"].shape == (16, NUM_CLASSES)
  out = output_shapes(net, inputs)
  assert out["spec"].shape == (3, B, 8) and out["emb"].shape == (3, B, 8)
  assert output_shapes(disc, out["emb"]).shape == (3, B, 3)


def test_bfloat16_computes_in_bfloat16_with_float32_params_and_outputs():
  c16 = small_config("ms2gan", {"model.dtype": "bfloat16"})
  spec = spec_of(("a", "b"))
  net16, disc16 = models.build_models(models.Architecture.of(c16), spec)
  net32, disc32 = models.build_models(models.Architecture.of(small_config("ms2gan")), spec)
  assert net16.dtype == disc16.dtype == jnp.bfloat16
  inputs = inputs_of(spec.modalities, seed=5)
  params = init(net16, inputs)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  # The same params serve both precisions: the compute dtype is no part of the pytree.
  assert jax.tree.structure(params) == jax.tree.structure(init(net32, inputs))
  out16 = net16.apply({"params": params}, inputs)
  out32 = net32.apply({"params": params}, inputs)
  for key in out32:
    assert out16[key].dtype == jnp.float32, key
    np.testing.assert_allclose(out16[key], out32[key], rtol=0.05, atol=0.05, err_msg=key)
  # bfloat16 keeps 8 significant bits: results equal to float32's would mean it never ran.
  assert not np.array_equal(out16["logits"], out32["logits"])
  disc_params = init(disc16, out16["emb"])
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(disc_params))
  assert disc16.apply({"params": disc_params}, out16["emb"]).dtype == jnp.float32


# ----------------------------------------------------------------------------------------------
# DataSpec and the discriminator
# ----------------------------------------------------------------------------------------------


def test_data_spec_json_round_trip():
  spec = DataSpec(("image", "text"), (12, 7), 3, ("cat", "dog", "owl"))
  raw = json.loads(json.dumps(spec.to_json()))
  assert raw == {
    "modalities": ["image", "text"],
    "dims": [12, 7],
    "num_classes": 3,
    "class_names": ["cat", "dog", "owl"],
  }
  assert DataSpec.from_json(raw) == spec
  # A spec written before class names were stored reads as one without them.
  del raw["class_names"]
  assert DataSpec.from_json(raw) == DataSpec(("image", "text"), (12, 7), 3)
  unlabelled = spec_of(("a", "b", "c"), num_classes=0)
  assert DataSpec.from_json(json.loads(json.dumps(unlabelled.to_json()))) == unlabelled


@pytest.mark.parametrize("layers", [(), (4, 3)], ids=["linear", "mlp"])
@pytest.mark.parametrize("k", [2, 3])
def test_discriminator_logits_match_reference(layers, k):
  disc = ModalityDiscriminator(num_modalities=k, layers=layers)
  z = np.random.default_rng(6).normal(size=(k, B, WIDTH)).astype(np.float32)
  params = init(disc, z)
  logits = disc.apply({"params": params}, z)
  assert logits.shape == (k, B, k) and logits.dtype == jnp.float32
  h = ref_mlp(params["MLP_0"], z, "leaky_relu", True) if layers else np.asarray(z, np.float64)
  want = h @ np.asarray(params["out"]["kernel"], np.float64) + np.asarray(params["out"]["bias"])
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
  # Any leading shape: one embedding, or a flat batch.
  assert output_shapes(disc, z[0, 0]).shape == (k,)
  assert output_shapes(disc, z.reshape(-1, WIDTH)).shape == (k * B, k)
