"""The config schema: its checks name the key, and a config saved as JSON reads back as the same
config (tuples included)."""

import json

import pytest

from mscross import config as config_lib
from mscross import methods, presets
from mscross.errors import ConfigError


@pytest.mark.parametrize(
  "key, value, match",
  [
    ("train.batch_size", 1, "batch_size must be at least 2"),
    ("train.steps", 0, "train.steps must be a positive integer"),
    ("train.patience", -1, "patience must be >= 0"),
    ("optim.lr", 0.0, "optim.lr must be positive"),
    ("model.encoder_width", 0, "model.encoder_width must be a positive integer"),
    ("model.activation", "gelu", "model.activation must be one of"),
    ("adv.schedule", "linear", "adv.schedule must be one of"),
    ("adv.generator_loss", "wasserstein", "adv.generator_loss must be one of"),
    ("eval.select_metric", "map", "select_metric must look like avg_map"),
    ("parallel.feed", "disk", "parallel.feed must be one of"),
    ("population.size", 0, "population.size must be a positive integer"),
  ],
)
def test_schema_errors_name_the_key(key, value, match):
  c = presets.build("acmr", "digits_halves")
  section, name = key.split(".")
  with c.unlocked():
    c[section][name] = value
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(c)


def test_every_preset_passes_the_schema_and_reads_back_from_json(tmp_path):
  c = presets.build("ms2gan", "wikipedia")
  config_lib.validate(c)
  path = tmp_path / "config.json"
  path.write_text(config_lib.to_json(c))
  back = config_lib.load_config_file(str(path))
  assert back.to_dict() == c.to_dict()
  assert back.model.shared_layers == (128, 128)  # JSON lists come back as the schema's tuples


def test_a_file_that_is_no_config_is_one_error(tmp_path):
  with pytest.raises(ConfigError, match="not found"):
    config_lib.load_config_file(str(tmp_path / "missing.json"))
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ConfigError, match="not valid JSON"):
    config_lib.load_config_file(str(bad))
  bad.write_text(json.dumps([1, 2]))
  with pytest.raises(ConfigError, match="does not hold a config"):
    config_lib.load_config_file(str(bad))


def test_confusion_needs_alternating_steps():
  c = presets.build("acmr", "digits_halves")
  c.adv.generator_loss, c.adv.mode = "confusion", "reversal"
  with pytest.raises(ConfigError, match="needs adv.mode=alternating"):
    config_lib.validate(c)
  c.adv.mode = "alternating"
  config_lib.validate(c)


@pytest.mark.parametrize(("old", "new"), sorted(config_lib.RENAMED.items()))
def test_a_renamed_key_is_one_line_naming_the_new_one(tmp_path, old, new):
  """An old workdir's config.json (or a saved best_config.json) that still uses a renamed key."""
  c = presets.build("acmr" if "acmr" in old else "ms2gan", "web_news")
  raw = json.loads(config_lib.to_json(c))
  section, _, rest = new.partition(".")
  node = raw[section]
  for part in rest.split(".")[:-1]:
    node = node[part]
  node[old.rsplit(".", 1)[1]] = node.pop(new.rsplit(".", 1)[1])
  path = tmp_path / "config.json"
  path.write_text(json.dumps(raw))
  with pytest.raises(ConfigError) as caught:
    config_lib.load_config_file(str(path))
  message = str(caught.value)
  assert f"uses {old}, which mscross now calls {new}" in message and "\n" not in message


def test_a_renamed_search_value_is_one_line_naming_the_new_one():
  c = presets.build("mnsgan", "digits_halves")
  with pytest.raises(ConfigError, match="'width' is now 'embedding_width'"):
    methods.apply_params(c, "mnsgan", {"width": 64})
