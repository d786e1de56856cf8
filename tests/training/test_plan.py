"""The run plan: a config resolved once into the method, the active terms with every option, the
members and the value of every traced hyperparameter, checked against the data."""

import dataclasses
import json

import pytest
from helpers import spec_of

from mscross import presets
from mscross.errors import ConfigError
from mscross.methods import registry
from mscross.training import plan as plan_lib

WIKI_SPEC = spec_of(("image", "text"))


def test_terms_are_the_active_ones_with_every_option():
  c = presets.build("mnsgan", "digits_halves")
  c.loss.multi_negative.tau = 0.05
  plan = plan_lib.resolve(c)
  assert [t.name for t in plan.terms] == ["label", "multi_negative", "reg"]
  mn = plan.terms[1]
  assert mn.static == {"negatives": "all", "k": 5}
  assert mn.floats == ("intra_weight", "margin", "tau")
  assert plan.hparams.values["loss.multi_negative.tau"] == (0.05,)
  # MS2GAN switches its regulariser off: a zero weight is no term at all.
  assert "reg" not in [t.name for t in plan_lib.resolve(presets.build("ms2gan", "wikipedia")).terms]
  assert plan.metric_names[-3:] == ("loss_label", "loss_multi_negative", "loss_reg")
  assert plan.method.name == "mnsgan" and plan.adversarial and plan.size == 1


def test_zero_everywhere_stays_a_constant_and_the_run_length_is_traced():
  c = presets.build("mnsgan", "digits_halves")
  plan = plan_lib.resolve(c)
  # disc_lr 0 (= lr) and MNS-GAN's margin 0 switch work off, so they are not traced.
  h = plan.hparams
  assert "optim.disc_lr" not in h.traced and "loss.multi_negative.margin" not in h.traced
  assert {"optim.lr", "adv.weight", "train.steps", "loss.multi_negative.tau"} <= set(h.traced)
  assert h.values["train.steps"] == (float(c.train.steps),)
  inside = h.inside({k: f"traced {k}" for k in h.traced})
  assert inside["optim.lr"] == "traced optim.lr" and inside["optim.disc_lr"] == 0.0
  assert set(h.initial()) == set(h.traced)


def test_population_members_and_their_hyperparameters():
  c = presets.build("mnsgan", "digits_halves")
  c.seed, c.population.size = 7, 2
  c.population.hparams = json.dumps({"optim.lr": [1e-3, 2e-3], "loss.multi_negative.tau": [1, 2]})
  plan = plan_lib.resolve(c)
  assert plan.seeds == (7, 8)
  assert plan.hparams.values["loss.multi_negative.tau"] == (1.0, 2.0)
  assert plan.hparams.of("optim.lr").tolist() == pytest.approx([1e-3, 2e-3])
  assert plan.describe() == [
    {"seed": 7, "optim.lr": 1e-3, "loss.multi_negative.tau": 1.0},
    {"seed": 8, "optim.lr": 2e-3, "loss.multi_negative.tau": 2.0},
  ]
  c.population.vary_seed = False
  assert plan_lib.resolve(c).seeds == (7, 7)
  for bad, match in (
    ({"model.encoder_width": [8, 16]}, "cannot differ"),
    ({"optim.lr": [1e-3]}, "one value per member"),
    ({"optim.lr": [1e-3, float("nan")]}, "finite"),
  ):
    c.population.hparams = json.dumps(bad)
    with pytest.raises(ConfigError, match=match):
      plan_lib.resolve(c)
  c.population.hparams = "{not json"
  with pytest.raises(ConfigError, match="JSON"):
    plan_lib.resolve(c)


def test_the_program_key_ignores_what_the_program_takes_as_inputs():
  base = presets.build("acmr", "wikipedia")
  key = plan_lib.resolve(base, WIKI_SPEC).program_key
  for change in ("seed", "optim.lr", "train.steps", "train.patience", "eval.block_size"):
    c = presets.build("acmr", "wikipedia")
    section, name = change.split(".") if "." in change else (None, change)
    node = c[section] if section else c
    node[name] = node[name] * 2 + 1
    assert plan_lib.resolve(c, WIKI_SPEC).program_key == key, change
  c = presets.build("acmr", "wikipedia")
  c.model.encoder_width = 32
  assert plan_lib.resolve(c, WIKI_SPEC).program_key != key
  assert plan_lib.resolve(base, spec_of(("image", "text"), 3)).program_key != key
  assert plan_lib.resolve(base).program_key is None  # no data spec, no program


def test_a_loss_term_from_outside_the_package_has_no_program_key(monkeypatch):
  # The key covers mscross's own source; a researcher's term can change under the same name
  # (its file, its helpers, its closure), so its loop must be traced afresh, never loaded.
  base = presets.build("acmr", "wikipedia")
  assert plan_lib.resolve(base, WIKI_SPEC).program_key is not None
  real = registry.LOSS_TERMS["reg"]

  def reg(out, batch, *, params, rng):
    return 2.0 * real.fn(out, batch, params=params, rng=rng)

  monkeypatch.setitem(registry.LOSS_TERMS, "reg", dataclasses.replace(real, fn=reg))
  assert plan_lib.resolve(base, WIKI_SPEC).program_key is None
  # A term that is off is not in the program.
  base.loss.reg.weight = 0.0
  assert plan_lib.resolve(base, WIKI_SPEC).program_key is not None


def test_instance_level_plans_refuse_label_terms():
  c = presets.build("dscmr", "wikipedia", labels=False)
  assert c.data.labels is False and c.loss.dscmr_label.weight == 0.0
  plan_lib.resolve(c, spec_of(("image", "text"), 0))
  with pytest.raises(ConfigError, match="predict class labels"):
    plan_lib.resolve(presets.build("acmr", "wikipedia"), spec_of(("image", "text"), 0))


def test_config_errors_name_the_key():
  def resolve_with(change, spec=None):
    c = presets.build("acmr", "wikipedia")
    change(c)
    return plan_lib.resolve(c, spec)

  cases = [
    (lambda c: setattr(c, "method", "gan9000"), "unknown method"),
    (lambda c: c.loss.acmr_triplet.update(tau=0.1), "no option tau"),
    (lambda c: c.loss.update(nope={"weight": 1.0}), "unknown loss term"),
    (lambda c: setattr(c, "loss", {"reg": {"weight": "big"}}), "must be a number"),
    (lambda c: [c.loss[t].update(weight=0.0) for t in c.loss], "non-zero weight"),
    (lambda c: c.train.update(batch_size=1), "batch_size"),
  ]
  for change, match in cases:
    with pytest.raises(ConfigError, match=match):
      resolve_with(change)
  # With the data: modality names and the selection metric's direction.
  with pytest.raises(ConfigError, match="does not have"):
    resolve_with(lambda c: None, spec_of(("a", "b")))  # the preset's data.powers.image
  with pytest.raises(ConfigError, match="select_metric"):
    resolve_with(lambda c: c.eval.update(select_metric="a2b_map"), WIKI_SPEC)
  with pytest.raises(ConfigError, match="2 or more modalities"):
    resolve_with(lambda c: c.data.update(powers={}), spec_of(("image",)))
