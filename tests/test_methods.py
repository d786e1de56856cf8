"""The method registry and the presets: one source of truth for every method's settings and
search space, and configs/default.py building any method on any dataset."""

import importlib.util
import json
from pathlib import Path

import pytest

from mscross import config as config_lib
from mscross import methods, population, presets
from mscross.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("wikipedia", "uci_mfeat/fou_kar_pix", "digits_halves", "features", "dscmr_mat")
# DSCMR's published 2048/1024 network and batch of 100 lie outside the widths every method is
# searched over; the regulariser is off (0) in the published MS2GAN and DSCMR.
PUBLISHED_OUTSIDE = {("dscmr", "width"), ("dscmr", "hidden"), ("dscmr", "train.batch_size")}


def _get(config, dotted):
  node = config
  for key in dotted.split("."):
    node = node[key]
  return node


def _preset_value(config, method, param):
  """What a preset holds for a search-space entry (the widths are spread over several keys)."""
  if param.name == "width":
    return config.model.shared_layers[-1] if method == "dscmr" else config.model.width
  if param.name == "hidden":
    return config.model.width if method == "dscmr" else config.model.encoder_layers[0]
  return _get(config, param.name)


@pytest.mark.parametrize("method", methods.names())
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_preset_is_a_valid_config_inside_its_search_space(method, dataset):
  c = presets.build(method, dataset)
  config_lib.validate(c)
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
  config_lib.validate(c)
  for p in space:
    assert _preset_value(c, method, p) == pytest.approx(values[p.name]), p.name
  # Every continuous entry is a traced key, so members of one program can differ in it.
  members = population.member_configs(c)
  traced = set(population.candidate_keys(members[0]))
  assert {p.name for p in space if p.continuous} <= traced


def test_unknown_names_are_config_errors():
  with pytest.raises(ConfigError, match="unknown method"):
    presets.build("gan9000", "wikipedia")
  with pytest.raises(ConfigError, match="unknown dataset"):
    presets.build("acmr", "imagenet")
  with pytest.raises(ConfigError, match="search space"):
    methods.apply_params(presets.build("acmr", "wikipedia"), "acmr", {"loss.multi_negative.tau": 1})


def test_instance_level_presets_switch_off_the_label_terms():
  c = presets.build("dscmr", "wikipedia", labels=False)
  assert c.data.labels is False and c.loss.dscmr_label.weight == 0.0
  config_lib.validate(c, labelled=False)
  with pytest.raises(ConfigError, match="label"):
    config_lib.validate(presets.build("acmr", "wikipedia"), labelled=False)


def test_default_config_file_takes_method_dataset_and_labels():
  spec = importlib.util.spec_from_file_location("default_config", ROOT / "configs" / "default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.get_config().method == "mnsgan"
  c = module.get_config("method=ms2gan,dataset=uci_mfeat/fou_kar_pix,labels=false")
  assert (c.method, c.data.name, c.data.labels) == ("ms2gan", "uci_mfeat/fou_kar_pix", False)
  for bad in ("method", "colour=red", "labels=maybe"):
    with pytest.raises(ValueError):
      module.get_config(bad)


def test_population_hparams_are_checked():
  c = presets.build("mnsgan", "digits_halves")
  c.population.size = 2
  c.population.hparams = json.dumps({"optim.lr": [1e-3, 2e-3], "loss.multi_negative.tau": [1, 2]})
  members = population.member_configs(c)
  assert [m.seed for m in members] == [0, 1]
  assert [m.loss.multi_negative.tau for m in members] == [1.0, 2.0]
  for bad, match in (
    ({"model.width": [8, 16]}, "cannot differ"),
    ({"optim.lr": [1e-3]}, "one value per member"),
    ({"optim.lr": [1e-3, float("nan")]}, "finite"),
  ):
    c.population.hparams = json.dumps(bad)
    with pytest.raises(ConfigError, match=match):
      config_lib.validate(c)
