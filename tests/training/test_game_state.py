"""The adversarial game's state in the history: the discriminator's modality accuracy on the
validation embeddings at every evaluation, beside the step metrics `lambda` and `loss_adv`; and
what the adversary does to the embeddings. The two halves of a digit are told apart easily, so
a discriminator left alone learns to separate them."""

import json

import numpy as np
import pytest
from helpers import trainer_config

from mscross.retrieval import trained
from mscross.runs import layout
from mscross.training import trainer

# A ramp of 10 steps: the adversary acts within these short runs whatever their step cap.
RUNS = {
  "strong": {"adv.weight": 3.0, "adv.ramp_steps": 10.0},
  # The discriminator trains, but its weight in the encoders' loss is 0: it plays alone.
  "silent": {"adv.weight": 0.0, "adv.ramp_steps": 10.0},
  "off": {"adv.enabled": False},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """name -> (workdir, history records, validation embeddings of the best state)."""
  out = {}
  for name, overrides in RUNS.items():
    path = tmp_path_factory.mktemp(name)
    trainer.train_and_evaluate(trainer_config("acmr", steps=80, overrides=overrides), str(path))
    with open(path / layout.HISTORY) as f:
      history = [json.loads(line) for line in f]
    wd = trained.Workdir(str(path))
    out[name] = (str(path), history, wd.member(0).embed(wd.split("validation")))
  return out


def _disc_acc(history) -> list[float]:
  return [r["val_disc_acc"] for r in history if "val_disc_acc" in r]


def test_a_strong_adversary_keeps_the_discriminator_near_chance(runs):
  alone, strong = _disc_acc(runs["silent"][1]), _disc_acc(runs["strong"][1])
  assert len(alone) == len(strong) == 8 and all(0.0 <= a <= 1.0 for a in alone + strong)
  # Left alone, the discriminator learns to tell the two modalities apart; against a strong
  # adversary it stays near chance (1/2).
  assert alone[-1] > 0.65 and alone[-1] > alone[0]
  assert abs(strong[-1] - 0.5) < 0.15 and strong[-1] < alone[-1] - 0.2
  path, records, _ = runs["strong"]
  assert all(r["lambda"] > 0 and "loss_adv" in r for r in records if r["step"] >= 10)
  # What the benchmark and the report read back: the last evaluation, and the selected one.
  evals = [r for r in records if "val_disc_acc" in r]
  state = layout.game_state(path, 0, best_step=evals[2]["step"])
  last = evals[-1]
  assert state["last"] == {"step": last["step"], **{k: last[k] for k in layout.GAME_KEYS}}
  assert state["best"]["val_disc_acc"] == strong[2]


def test_the_adversary_moves_the_embeddings_and_nothing_else_does(runs):
  off, silent, strong = (runs[n][2] for n in ("off", "silent", "strong"))
  for modality in off:
    # A discriminator whose weight is 0 leaves the encoders exactly where no discriminator does.
    np.testing.assert_allclose(silent[modality], off[modality], rtol=1e-5, atol=1e-6)
    # A strong one moves them.
    assert np.abs(strong[modality] - off[modality]).mean() > 0.02


def test_no_discriminator_no_game_state(runs):
  path, history, _ = runs["off"]
  assert _disc_acc(history) == [] and layout.game_state(path) is None
