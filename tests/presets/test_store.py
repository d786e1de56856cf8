"""Tuned presets stored as data: what `configs/default.py` builds where the benchmark tuned a
(method, dataset variant), and a clear error where a file or an argument is wrong."""

import json
import runpy

import pytest
from helpers import REPO

from mscross import methods, presets
from mscross.errors import ConfigError
from mscross.presets import store

DEFAULT_CONFIG = str(REPO / "configs" / "default.py")


def _tuned(method="mnsgan", dataset="wikipedia", extractors=None, **params):
  return store.Tuned(
    method=method,
    dataset=dataset,
    extractors=extractors or {},
    params=params or {"optim.lr": 0.0042, "embedding_width": 64, "adv.ramp_steps": 250.0},
    settings={"train.patience": 7, "train.eval_every": 50},
    tuning={"command": "python bench/accuracy.py ...", "best_validation": 0.3},
  )


@pytest.fixture
def tuned_root(tmp_path, monkeypatch):
  monkeypatch.setenv(store.ROOT_ENV, str(tmp_path))
  return tmp_path


def test_variant_names_the_dataset_and_its_non_default_extractors():
  assert store.variant("uci_mfeat/fou_pix") == "uci_mfeat-fou_pix"
  assert store.variant("wikipedia", {"text": "wordllama"}) == "wikipedia.text-wordllama"
  both = store.variant("web_news", {"text": "minilm", "image": ""})
  assert both == "web_news.image-none.text-minilm"
  # Extractors equal to the builder's defaults are not part of the variant.
  assert presets.variant_extractors("web_news", {"text": "wordllama"}) == {}
  assert presets.variant_extractors("wikipedia", {"text": "wordllama"}) == {"text": "wordllama"}


def test_build_applies_the_stored_values_of_its_variant_only(tuned_root):
  store.write(_tuned())
  c = presets.build("mnsgan", "wikipedia")
  untuned = presets.build("mnsgan", "wikipedia", use_tuned=False)
  assert c.optim.lr == 0.0042 and c.train.patience == 7 and c.train.eval_every == 50
  assert c.adv.ramp_steps == 250.0
  # `width` is a search-space name standing for the embedding width of every layer that has it.
  methods.apply_params(untuned, "mnsgan", {"embedding_width": 64})
  assert c.model.encoder_width == untuned.model.encoder_width == 64
  assert presets.build("mnsgan", "wikipedia", use_tuned=False).optim.lr != 0.0042
  # Another variant, method or dataset has no stored values.
  assert presets.build("mnsgan", "wikipedia", extractors={"text": "wordllama"}).optim.lr != 0.0042
  assert presets.build("acmr", "wikipedia").optim.lr != 0.0042
  assert presets.build("mnsgan", "digits_halves").optim.lr != 0.0042


def test_the_default_config_file_picks_a_variant_by_its_extractors(tuned_root):
  store.write(_tuned(extractors={"text": "wordllama"}))
  get_config = runpy.run_path(DEFAULT_CONFIG)["get_config"]
  c = get_config("method=mnsgan,dataset=wikipedia,text=wordllama")
  assert c.optim.lr == 0.0042 and c.data.extractors.text == "wordllama"
  assert get_config("method=mnsgan,dataset=wikipedia").optim.lr != 0.0042
  # tuned=false builds the registry's settings, as the tuning studies start from them.
  plain = get_config("method=mnsgan,dataset=wikipedia,text=wordllama,tuned=false")
  untuned = presets.build("mnsgan", "wikipedia", extractors={"text": "wordllama"}, use_tuned=False)
  assert plain.to_dict() == untuned.to_dict() and plain.optim.lr != 0.0042
  with pytest.raises(ValueError, match="tuned must be true or false"):
    get_config("tuned=no")
  with pytest.raises(ConfigError, match="no raw modality 'image'.*text"):
    get_config("method=mnsgan,dataset=wikipedia,image=efficientnet_lite0")
  with pytest.raises(ValueError, match="method=...*<modality>=<extractor>"):
    get_config("method=mnsgan,wikipedia")


def test_written_presets_read_back_and_wrong_files_are_refused(tuned_root):
  tuned = _tuned(dataset="uci_mfeat/fou_pix")
  path = store.write(tuned)
  assert path.endswith("uci_mfeat-fou_pix/mnsgan.json")
  assert store.read("mnsgan", "uci_mfeat/fou_pix") == tuned
  assert store.stored() == [tuned]
  # A file copied to another method's place is not silently used for it.
  other = tuned_root / "uci_mfeat-fou_pix" / "acmr.json"
  other.write_text(tuned.to_json())
  with pytest.raises(ConfigError, match="holds the preset of mnsgan"):
    presets.build("acmr", "uci_mfeat/fou_pix")
  other.write_text("{not json")
  with pytest.raises(ConfigError, match="not a tuned preset"):
    presets.build("acmr", "uci_mfeat/fou_pix")
  # A value outside the method's search space.
  store.write(_tuned(**{"loss.multi_negative.tau": 0.3, "no.such.param": 1}))
  with pytest.raises(ConfigError, match="not in the search space"):
    presets.build("mnsgan", "wikipedia")


@pytest.mark.shipped_presets
@pytest.mark.parametrize(
  "tuned",
  store.stored(store.ROOT),
  ids=lambda t: f"{t.method}-{store.variant(t.dataset, t.extractors)}",
)
def test_every_shipped_preset_is_inside_its_search_space_and_says_how_it_was_tuned(tuned):
  space = {p.name: p for p in methods.get(tuned.method).search_space}
  assert tuned.params and set(tuned.params) <= set(space)
  assert all(space[k].contains(v) for k, v in tuned.params.items())
  assert tuned.tuning["command"].startswith("python bench/accuracy.py")
  assert tuned.tuning["trials"]["COMPLETE"] >= 1 and tuned.tuning["tree_clean"]
  c = presets.build(tuned.method, tuned.dataset, extractors=tuned.extractors)
  assert json.loads(json.dumps(c.to_dict()))["method"] == tuned.method
