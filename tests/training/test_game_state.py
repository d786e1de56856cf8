"""The adversarial game's state in the history: the discriminator's modality accuracy on the
validation embeddings at every evaluation, beside the step metrics `lambda` and `loss_adv`."""

import json

from conftest import trainer_config

from mscross.training import runlog, trainer, workdir


def _history(run) -> list[dict]:
  with open(run / workdir.HISTORY) as f:
    return [json.loads(line) for line in f]


def _disc_acc(tmp_path, name: str, steps: int = 80, **overrides) -> list[float]:
  c = trainer_config("acmr", steps=steps, overrides=overrides)
  trainer.train_and_evaluate(c, str(tmp_path / name))
  return [r["val_disc_acc"] for r in _history(tmp_path / name) if "val_disc_acc" in r]


def test_a_strong_adversary_keeps_the_discriminator_near_chance(tmp_path):
  # A ramp of 10 steps: the adversary acts within this short run whatever its step cap.
  weak = _disc_acc(tmp_path, "weak", **{"adv.weight": 0.001, "adv.ramp_steps": 10.0})
  strong = _disc_acc(tmp_path, "strong", **{"adv.weight": 3.0, "adv.ramp_steps": 10.0})
  assert len(weak) == len(strong) == 8 and all(0.0 <= a <= 1.0 for a in weak + strong)
  # Left alone, the discriminator learns to tell the two modalities apart; against a strong
  # adversary it stays near chance (1/2).
  assert weak[-1] > 0.65 and weak[-1] > weak[0]
  assert abs(strong[-1] - 0.5) < 0.15 and strong[-1] < weak[-1] - 0.2
  records = _history(tmp_path / "strong")
  assert all(r["lambda"] > 0 and "loss_adv" in r for r in records if r["step"] >= 10)
  # What the benchmark and the report read back: the last evaluation, and the selected one.
  evals = [r for r in records if "val_disc_acc" in r]
  state = runlog.game_state(str(tmp_path / "strong"), 0, best_step=evals[2]["step"])
  assert state["last"] == {"step": evals[-1]["step"], **{k: evals[-1][k] for k in runlog.GAME_KEYS}}
  assert state["best"]["val_disc_acc"] == strong[2]


def test_no_discriminator_no_game_state(tmp_path):
  assert _disc_acc(tmp_path, "off", steps=20, **{"adv.enabled": False}) == []
  assert runlog.game_state(str(tmp_path / "off")) is None
