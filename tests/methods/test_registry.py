"""The loss-term and method registries and the presets: one source of truth for every term's
options, every method's settings and search space, and configs/default.py building any method on
any dataset."""

import importlib.util
import inspect

import jax.numpy as jnp
import pytest
from helpers import REPO

from mscross import dotted, methods, presets
from mscross.errors import ConfigError
from mscross.methods import losses, registry
from mscross.training import plan as plan_lib

DATASETS = ("wikipedia", "uci_mfeat/fou_kar_pix", "digits_halves", "features", "dscmr_mat")
# DSCMR's published 2048/1024 network and batch of 100 lie outside the widths every method is
# searched over; the regulariser is off (0) in the published MS2GAN and DSCMR.
PUBLISHED_OUTSIDE = {
  ("dscmr", "embedding_width"),
  ("dscmr", "hidden_width"),
  ("dscmr", "train.batch_size"),
}


def _preset_value(config, method, param):
  """What a preset holds for a search-space entry (the widths are spread over several keys)."""
  if param.name == "embedding_width":
    return config.model.shared_layers[-1] if method == "dscmr" else config.model.encoder_width
  if param.name == "hidden_width":
    return config.model.encoder_width if method == "dscmr" else config.model.encoder_layers[0]
  return dotted.get(config, param.name)


@pytest.mark.parametrize("method", methods.names())
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_preset_is_a_valid_config_inside_its_search_space(method, dataset):
  c = presets.build(method, dataset)
  plan_lib.resolve(c)
  for p in methods.get(method).search_space:
    value = _preset_value(c, method, p)
    if (method, p.name) in PUBLISHED_OUTSIDE or (p.name == "loss.reg.weight" and value == 0.0):
      continue  # a published setting the search space does not reach (see methods.py)
    assert p.contains(value), (method, dataset, p.name, value)


@pytest.mark.parametrize("method", methods.names())
def test_search_space_values_apply_to_the_config_they_name(method):
  c = presets.build(method, "wikipedia")
  space = methods.get(method).search_space
  values = {p.name: (p.choices[-1] if p.choices else p.high) for p in space}
  methods.apply_params(c, method, values)
  plan = plan_lib.resolve(c)
  for p in space:
    assert _preset_value(c, method, p) == pytest.approx(values[p.name]), p.name
  # Every continuous entry is a traced key, so members of one program can differ in it.
  assert {p.name for p in space if p.continuous} <= set(plan.hparams.values)


def test_unknown_names_are_config_errors():
  with pytest.raises(ConfigError, match="unknown method"):
    presets.build("gan9000", "wikipedia")
  with pytest.raises(ConfigError, match="unknown dataset"):
    presets.build("acmr", "imagenet")
  with pytest.raises(ConfigError, match="search space"):
    methods.apply_params(presets.build("acmr", "wikipedia"), "acmr", {"loss.multi_negative.tau": 1})


def test_default_config_file_takes_method_dataset_and_labels():
  spec = importlib.util.spec_from_file_location("default_config", REPO / "configs" / "default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.get_config().method == "mnsgan"
  c = module.get_config("method=ms2gan,dataset=uci_mfeat/fou_kar_pix,labels=false")
  assert (c.method, c.data.name, c.data.labels) == ("ms2gan", "uci_mfeat/fou_kar_pix", False)
  for bad in ("method", "labels=maybe"):
    with pytest.raises(ValueError):
      module.get_config(bad)
  # Other keys name extractors of the dataset's raw modalities; the embedded digits have none.
  with pytest.raises(ConfigError, match="no raw modality 'colour'.*none"):
    module.get_config("colour=red")


def test_term_options_and_defaults_come_from_the_loss_signatures():
  # One place for a default: the pure loss function's signature (MS2GAN's margin, ACMR's).
  sim = inspect.signature(losses.ms2gan_similarity_loss).parameters
  assert registry.LOSS_TERMS["ms2gan_similarity"].defaults == {
    name: sim[name].default for name in ("margin", "negatives", "normalize")
  }
  assert registry.LOSS_TERMS["acmr_triplet"].defaults == {"margin": 0.5, "negatives": "random"}
  # A term's own options join its loss's: the difference loss's kind, the large margin's margin.
  assert registry.LOSS_TERMS["ms2gan_difference"].defaults == {
    "kind": "large_margin",
    "margin": 0.5,
  }
  assert registry.LOSS_TERMS["reg"].defaults == {}
  # The presets carry every option, so `--config.loss.<term>.<option>` always names a key.
  c = presets.build("ms2gan", "digits_halves")
  assert dict(c.loss.ms2gan_similarity) == {
    "weight": 1.0,
    "margin": 0.5,
    "negatives": "all",
    "normalize": True,
  }
  full = registry.complete_options("multi_negative", {"tau": 0.3})
  assert full["tau"] == 0.3 and full["weight"] == 1.0 and full["k"] == 5


def test_term_registration_rules():
  with pytest.raises(ConfigError, match="no option tau"):
    registry.complete_options("acmr_triplet", {"tau": 0.1})
  with pytest.raises(ConfigError, match="unknown loss term"):
    registry.term("nope")
  with pytest.raises(ValueError, match="already registered"):
    registry.loss_term("label")(lambda out, batch, *, params, rng: 0.0)

  def needs_default(out, batch, *, params, rng, scale):
    return scale

  with pytest.raises(ValueError, match="needs a default"):
    registry.loss_term("test_only_term")(needs_default)
  assert "test_only_term" not in registry.LOSS_TERMS


def test_a_registered_term_maps_outputs_to_its_pure_loss():
  out = {"emb": jnp.ones((2, 4, 3)), "spec": jnp.ones((2, 4, 3)), "logits": jnp.zeros((2, 4, 5))}
  batch = {"label": jnp.eye(4, 5)}
  # Uniform logits: the cross-entropy of each modality is log(5).
  label = registry.LOSS_TERMS["label"].fn(out, batch, params={}, rng=None, multilabel=False)
  assert float(label) == pytest.approx(2 * float(jnp.log(5.0)))
  # Identical specific and shared features: the large-margin difference is margin per modality.
  diff = registry.LOSS_TERMS["ms2gan_difference"].fn(
    out, batch, params={}, rng=None, kind="large_margin", margin=0.5
  )
  assert float(diff) == pytest.approx(
    2 * float(losses.large_margin_difference_loss(out["spec"][0], out["emb"][0], margin=0.5))
  )
  with pytest.raises(ConfigError, match="large_margin or orthogonality"):
    registry.LOSS_TERMS["ms2gan_difference"].fn(out, batch, params={}, rng=None, kind="x")


def test_adversarial_flag_is_the_registry_s():
  for name in methods.names():
    assert presets.build(name, "digits_halves").adv.enabled == methods.get(name).adversarial
