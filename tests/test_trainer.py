"""train_and_evaluate end to end on the embedded dataset: metrics.json, evaluation reproducing it,
embedding export, and resuming after an interruption."""

import json
import os
import signal

import jax.numpy as jnp
import numpy as np
import pytest

from mscross import config as config_lib
from mscross import evaluate, methods, train_step, trainer
from mscross.errors import CheckpointError, ConfigError


def tiny_config(steps=40):
  c = config_lib.base_config()
  c.data.name = "digits_halves"
  c.model.img_layers = (32, 16)
  c.model.txt_layers = (32, 16)
  c.disc.layers = (8, 4)
  c.optim.lr = 1e-3
  c.train.batch_size = 32
  c.train.steps = steps
  c.train.eval_every = 10
  c.train.checkpoint_every = 10
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  result = trainer.train_and_evaluate(tiny_config(), workdir)
  return workdir, result


def test_metrics_json_layout(trained):
  workdir, result = trained
  with open(os.path.join(workdir, "metrics.json")) as f:
    on_disk = json.load(f)
  assert on_disk == json.loads(json.dumps(result))
  assert on_disk["method"] == "acmr" and on_disk["dataset"] == "digits_halves"
  assert on_disk["steps"] == 40 and on_disk["train_seconds"] > 0
  for split in ("val", "test"):
    for key in ("i2t_map", "t2i_map", "avg_map", "i2t_map@50", "avg_map@R", "i2t_p@1"):
      assert 0.0 <= on_disk[split][key] <= 1.0
  # Chance level on 10 balanced classes is about 0.1; 40 steps already learn something.
  assert on_disk["test"]["avg_map"] > 0.2
  # The best step is the one with the best VALIDATION score in the history.
  with open(os.path.join(workdir, "history.jsonl")) as f:
    history = [json.loads(line) for line in f]
  evals = [r for r in history if "val_avg_map" in r]
  assert on_disk["best_step"] == max(evals, key=lambda r: r["val_avg_map"])["step"]
  assert os.path.exists(os.path.join(workdir, "config.json"))


def test_tensorboard_events_are_written(trained):
  workdir, _ = trained
  events = os.listdir(os.path.join(workdir, "tensorboard"))
  assert any(name.startswith("events.out.tfevents") for name in events)


def test_divergence_stops_at_the_last_good_checkpoint(tmp_path, monkeypatch):
  real = methods.LOSS_TERMS["label"]

  def label_then_nan(out, batch, *, params, rng, **options):
    # Finite for the first 20 steps, then NaN forever: an adversarial blow-up.
    value = real(out, batch, params=params, rng=rng, **options)
    return jnp.where(params_step[0] >= 20, jnp.nan, value)

  params_step = [None]
  real_step = train_step.make_train_step

  def tracking_step(*args, **kwargs):
    step_fn = real_step(*args, **kwargs)

    def wrapped(state, batch):
      params_step[0] = state.step
      return step_fn(state, batch)

    return wrapped

  monkeypatch.setitem(methods.LOSS_TERMS, "label", label_then_nan)
  monkeypatch.setattr(train_step, "make_train_step", tracking_step)
  config = tiny_config(steps=60)
  config.train.max_nonfinite = 5
  workdir = str(tmp_path)
  with pytest.raises(trainer.TrainingDiverged, match=r"last good checkpoint \(step 20\)"):
    trainer.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "history.jsonl")) as f:
    last = [json.loads(line) for line in f][-1]
  assert last["diverged"] and last["skipped"] == 10
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))


def test_evaluate_workdir_reproduces_metrics_json(trained, tmp_path):
  workdir, result = trained
  export = tmp_path / "emb"
  again = evaluate.evaluate_workdir(workdir, split="test", export_dir=str(export))
  for key, value in result["test"].items():
    assert again[key] == pytest.approx(value, abs=1e-6), key
  val = evaluate.evaluate_workdir(workdir, split="validation")
  assert val["avg_map"] == pytest.approx(result["val"]["avg_map"], abs=1e-6)
  img, txt = np.load(export / "img_emb.npy"), np.load(export / "txt_emb.npy")
  labels = np.load(export / "labels.npy")
  assert img.shape == (360, 16) and txt.shape == (360, 16) and labels.shape == (360, 10)
  assert len(np.load(export / "ids.npy")) == 360


def test_interrupted_run_resumes_to_the_same_result(trained, tmp_path, monkeypatch):
  _, uninterrupted = trained
  workdir = str(tmp_path / "resumed")
  real = train_step.make_train_chunk
  calls = []

  def interrupting(*args, **kwargs):
    chunk = real(*args, **kwargs)

    def wrapped(*a):
      out = chunk(*a)
      calls.append(1)
      if len(calls) == 2:  # SIGINT after 20 steps, as Ctrl-C would
        os.kill(os.getpid(), signal.SIGINT)
      return out

    return wrapped

  monkeypatch.setattr(train_step, "make_train_chunk", interrupting)
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(tiny_config(), workdir)
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))
  monkeypatch.setattr(train_step, "make_train_chunk", real)

  resumed = trainer.train_and_evaluate(tiny_config(), workdir)
  with open(os.path.join(workdir, "history.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [10, 20, 30, 40]  # resumed at 20, nothing trained twice
  assert resumed["best_step"] == uninterrupted["best_step"]
  for key in ("i2t_map", "t2i_map", "avg_map"):
    assert resumed["test"][key] == pytest.approx(uninterrupted["test"][key], abs=1e-6)


def test_eval_without_checkpoints_is_a_clear_error(tmp_path):
  with pytest.raises(ConfigError, match="config.json"):
    evaluate.evaluate_workdir(str(tmp_path))
  config_lib.save_config(tiny_config(), str(tmp_path))
  with pytest.raises(CheckpointError, match="no checkpoints"):
    evaluate.evaluate_workdir(str(tmp_path))


def test_checkpoint_of_another_architecture_is_refused(trained, tmp_path):
  workdir, _ = trained
  other = tiny_config()
  other.model.img_layers = (64, 16)
  cfg_path = os.path.join(workdir, "config.json")
  with open(cfg_path) as f:
    original = f.read()
  try:
    config_lib.save_config(other, workdir)
    with pytest.raises(CheckpointError):
      evaluate.evaluate_workdir(workdir)
  finally:
    with open(cfg_path, "w") as f:
      f.write(original)


def test_invalid_config_is_rejected_before_training(tmp_path):
  c = tiny_config()
  c.method = "nonsense"
  with pytest.raises(ConfigError, match="unknown method"):
    trainer.train_and_evaluate(c, str(tmp_path))
  c = tiny_config()
  c.loss.acmr_triplet.weight = 0.0
  c.loss.label.weight = 0.0
  c.loss.reg.weight = 0.0
  with pytest.raises(ConfigError, match="non-zero weight"):
    trainer.train_and_evaluate(c, str(tmp_path))
