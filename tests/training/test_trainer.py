"""train_and_evaluate end to end on the embedded dataset: metrics.json, evaluation reproducing it,
populations (members, divergence of one member, early stopping), and resuming."""

import dataclasses
import json
import os
import signal

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ap_reference, cosine64, trainer_config

import mscross
from mscross.errors import CheckpointError, ConfigError
from mscross.methods import registry
from mscross.retrieval import evaluate
from mscross.runs import layout
from mscross.training import loop, trainer
from mscross.training import step as step_lib


def tiny_config(steps=40):
  return trainer_config("acmr", steps)


def history(workdir):
  with open(os.path.join(workdir, "history.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_metrics_json_layout(trained_run):
  workdir, result = trained_run
  with open(os.path.join(workdir, "metrics.json")) as f:
    on_disk = json.load(f)
  assert on_disk == json.loads(json.dumps(result))
  assert on_disk["method"] == "acmr" and on_disk["dataset"] == "digits_halves"
  assert on_disk["modalities"] == ["left", "right"] and on_disk["population"] == 1
  assert on_disk["steps"] == 40 and on_disk["train_seconds"] > 0
  (member,) = on_disk["members"]
  assert member["stopped"] == "cap" and member["seed"] == 0
  for split in ("val", "test"):
    for key in ("i2t_map", "t2i_map", "avg_map", "i2t_map@50", "avg_map@R", "i2t_p@1"):
      assert 0.0 <= on_disk[split][key] <= 1.0
      assert on_disk[split][key] == member[split][key]  # the mean of one member
  # Chance level on 10 balanced classes is about 0.1; 40 steps already learn something.
  assert on_disk["test"]["avg_map"] > 0.2
  # The best step is the one with the best VALIDATION score in the history.
  evals = [r for r in history(workdir) if "val_avg_map" in r]
  assert member["best_step"] == max(evals, key=lambda r: r["val_avg_map"])["step"]
  for name in ("config.json", "dataset.json", "input_transform.npz"):
    assert os.path.exists(os.path.join(workdir, name))


def test_tensorboard_events_are_written(trained_run):
  workdir, _ = trained_run
  events = os.listdir(os.path.join(workdir, "tensorboard"))
  assert any(name.startswith("events.out.tfevents") for name in events)


def test_evaluate_workdir_reproduces_metrics_json(trained_run, tmp_path):
  workdir, result = trained_run
  export = tmp_path / "emb"
  again, notes = evaluate.evaluate_workdir(workdir, split="test", export_dir=str(export))
  for key, value in result["test"].items():
    assert again[key] == pytest.approx(value, abs=1e-6), key
  val, _ = evaluate.evaluate_workdir(workdir, split="validation")
  assert val["avg_map"] == pytest.approx(result["val"]["avg_map"], abs=1e-6)
  left, right = np.load(export / "emb_left.npy"), np.load(export / "emb_right.npy")
  assert left.shape == (360, 16) and right.shape == (360, 16)
  assert np.load(export / "labels.npy").shape == (360, 10)
  assert len(np.load(export / "ids.npy")) == 360


def test_loaded_model_encodes_new_vectors_as_the_export(trained_run, tmp_path):
  """mscross.load: raw vectors (not read from the dataset) go through the saved input transform
  and the encoder of their modality, and match eval.py --export on the same rows."""
  import mscross
  from mscross import data

  workdir, _ = trained_run
  export = tmp_path / "emb"
  evaluate.evaluate_workdir(workdir, split="test", export_dir=str(export))
  raw = data.load_split("digits_halves", "test")
  model = mscross.load(workdir)
  rows = np.arange(0, 360, 7)
  # A fresh array: the vectors the user has, not the loader's own split.
  left = np.array(raw.features["left"][rows], copy=True)
  np.testing.assert_allclose(
    model.encode("left", left), np.load(export / "emb_left.npy")[rows], rtol=1e-5, atol=1e-6
  )
  # Search: left queries against a right gallery built from raw vectors rank as a cosine
  # argsort of the exported embeddings does.
  gallery = model.index("right", raw.features["right"], ids=raw.ids)
  scores, hits = model.search("left", left, gallery, k=5)
  q, g = np.load(export / "emb_left.npy")[rows], np.load(export / "emb_right.npy")
  cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1)[:, None]).T
  np.testing.assert_allclose(scores, -np.sort(-cos, axis=1)[:, :5], atol=1e-5)
  assert gallery.search_ids(model.encode("left", left), k=1)[0][0] == raw.ids[hits[0, 0]]
  with pytest.raises(Exception, match="modality"):
    model.encode("image", left)


def test_population_trains_members_with_their_own_seeds_and_lr(tmp_path):
  config = tiny_config(steps=30)
  config.population.size = 3
  config.population.hparams = json.dumps({"optim.lr": [1e-3, 3e-3, 1e-2]})
  result = trainer.train_and_evaluate(config, str(tmp_path))
  members = result["members"]
  assert [m["seed"] for m in members] == [0, 1, 2]
  assert [m["optim.lr"] for m in members] == pytest.approx([1e-3, 3e-3, 1e-2])
  tests = [m["test"]["avg_map"] for m in members]
  assert len(set(tests)) == 3
  assert result["test"]["avg_map"] == pytest.approx(np.mean(tests))
  assert result["test_std"]["avg_map"] == pytest.approx(np.std(tests, ddof=1))
  # Each member keeps its own best state: eval.py --member k reproduces member k.
  for k in (0, 2):
    again, _ = evaluate.evaluate_workdir(str(tmp_path), member=k)
    assert again["avg_map"] == pytest.approx(members[k]["test"]["avg_map"], abs=1e-6)
  every, _ = evaluate.evaluate_workdir(str(tmp_path))
  assert len(every["members"]) == 3
  assert every["mean"]["avg_map"] == pytest.approx(result["test"]["avg_map"], abs=1e-6)
  # The ensemble of the three ranks by the mean of their cosines: mAP of a NumPy reference.
  joint, _ = evaluate.evaluate_workdir(str(tmp_path), ensemble=True)
  assert [m["member"] for m in joint["ensemble"]] == [0, 1, 2]
  split = None
  cosines = {d: 0.0 for d in ("i2t", "t2i")}
  for k in range(3):
    split, emb = mscross.load(str(tmp_path), member=k).split_embeddings("test")
    cosines["i2t"] += cosine64(emb["left"], emb["right"]) / 3
    cosines["t2i"] += cosine64(emb["right"], emb["left"]) / 3
  rel = (split.label @ split.label.T) > 0
  for key, cos in cosines.items():
    reference = np.mean([ap_reference(cos[i], rel[i]) for i in range(len(cos))])
    assert joint[f"{key}_map"] == pytest.approx(reference, abs=1e-5), key
  # history.jsonl: one line per member and evaluation.
  assert {(r["step"], r["member"]) for r in history(str(tmp_path))} == {
    (s, m) for s in (10, 20, 30) for m in range(3)
  }


def spy_on_step(monkeypatch):
  """The traced (step, hparams) of the member being stepped, for loss terms that misbehave on
  cue: the train step passes both to adversarial_lambda before computing the losses."""
  seen = {}
  real = step_lib.adversarial_lambda

  def spying(plan, hparams, step):
    seen.update(step=step, hparams=hparams)
    return real(plan, hparams, step)

  monkeypatch.setattr(step_lib, "adversarial_lambda", spying)
  return seen


def nan_label_when(monkeypatch, condition):
  seen = spy_on_step(monkeypatch)
  real = registry.LOSS_TERMS["label"]

  def label(out, batch, *, params, rng, **options):
    value = real.fn(out, batch, params=params, rng=rng, **options)
    return jnp.where(condition(seen["step"], seen["hparams"]), jnp.nan, value)

  monkeypatch.setitem(registry.LOSS_TERMS, "label", dataclasses.replace(real, fn=label))


def test_one_diverging_member_never_stops_the_others(tmp_path, monkeypatch):
  # Member 1, marked by its learning rate, has a NaN loss from the first step on.
  nan_label_when(monkeypatch, lambda step, h: jnp.abs(h["optim.lr"] - 2e-3) < 1e-9)
  config = tiny_config(steps=30)
  config.train.max_nonfinite = 5
  config.population.size = 2
  config.population.hparams = json.dumps({"optim.lr": [1e-3, 2e-3]})
  result = trainer.train_and_evaluate(config, str(tmp_path))
  good, bad = result["members"]
  assert bad["stopped"] == "diverged" and bad["best_step"] == -1
  assert good["stopped"] == "cap" and good["best_step"] > 0 and good["skipped_steps"] == 0
  # The mean covers the member that has a selected state.
  assert result["test"]["avg_map"] == good["test"]["avg_map"]
  assert any(r.get("diverged") for r in history(str(tmp_path)) if r["member"] == 1)


def test_divergence_of_every_member_stops_at_the_last_good_checkpoint(tmp_path, monkeypatch):
  # Finite for the first 20 steps, then NaN forever: an adversarial blow-up.
  nan_label_when(monkeypatch, lambda step, h: step >= 20)
  config = tiny_config(steps=60)
  config.train.max_nonfinite = 5
  workdir = str(tmp_path)
  with pytest.raises(trainer.TrainingDiverged, match=r"last good checkpoint \(step 20\)"):
    trainer.train_and_evaluate(config, workdir)
  last = history(workdir)[-1]
  assert last["diverged"] and last["skipped"] == 10
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))


def test_patience_stops_a_run_that_has_stopped_improving(tmp_path):
  config = tiny_config(steps=400)
  config.optim.lr = 3e-2  # converges (or wanders) fast on this tiny problem
  config.train.patience = 2
  result = trainer.train_and_evaluate(config, str(tmp_path))
  (member,) = result["members"]
  assert member["stopped"] == "patience"
  assert result["steps"] < 400
  evals = [r["step"] for r in history(str(tmp_path)) if "val_avg_map" in r]
  # It stopped after exactly `patience` evaluations without a better score.
  assert evals[-1] == member["best_step"] + 2 * config.train.eval_every


def test_interrupted_run_resumes_to_the_same_result(trained_run, tmp_path, monkeypatch):
  _, uninterrupted = trained_run
  workdir = str(tmp_path / "resumed")
  real = loop.TrainLoop.__call__
  calls = []

  def interrupting(self, *a):
    out = real(self, *a)
    calls.append(1)
    if len(calls) == 2:  # SIGINT after 20 steps, as Ctrl-C would
      os.kill(os.getpid(), signal.SIGINT)
    return out

  monkeypatch.setattr(loop.TrainLoop, "__call__", interrupting)
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(tiny_config(), workdir)
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))
  monkeypatch.setattr(loop.TrainLoop, "__call__", real)

  resumed = trainer.train_and_evaluate(tiny_config(), workdir)
  assert [r["step"] for r in history(workdir)] == [10, 20, 30, 40]  # nothing trained twice
  assert resumed["members"][0]["best_step"] == uninterrupted["members"][0]["best_step"]
  for key in ("i2t_map", "t2i_map", "avg_map"):
    assert resumed["test"][key] == pytest.approx(uninterrupted["test"][key], abs=1e-6)


def test_eval_without_checkpoints_is_a_clear_error(tmp_path):
  with pytest.raises(ConfigError, match="config.json"):
    evaluate.evaluate_workdir(str(tmp_path))
  layout.write_config(str(tmp_path), tiny_config())
  with pytest.raises(CheckpointError, match="no trained model"):
    evaluate.evaluate_workdir(str(tmp_path))


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
  c = tiny_config()
  c.data.labels = False
  with pytest.raises(ConfigError, match="label"):
    trainer.train_and_evaluate(c, str(tmp_path))
  assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints"))


def test_own_npy_features_of_three_modalities_without_labels_train_and_evaluate(tmp_path):
  """A user's own arrays, no code change: three modalities, no labels, no validation split."""
  rng = np.random.default_rng(0)
  root = tmp_path / "mine"
  shared = {"train": rng.normal(size=(120, 4)), "test": rng.normal(size=(40, 4))}
  mix = {m: rng.normal(size=(4, d)) for m, d in (("audio", 6), ("video", 9), ("text", 5))}
  for split, z in shared.items():
    (root / split).mkdir(parents=True)
    for m, w in mix.items():
      # Each modality sees the same latent pair code, plus its own noise.
      x = z @ w + 0.1 * rng.normal(size=(len(z), w.shape[1]))
      np.save(root / split / f"{m}.npy", x.astype(np.float32))
  (root / "manifest.json").write_text(json.dumps({"modalities": ["audio", "video", "text"]}))

  from mscross import presets

  config = presets.build("mnsgan", "features", labels=False)
  config.data.data_dir = str(root)
  config.model.encoder_layers = (32,)
  config.model.encoder_width = 16
  config.train.batch_size = 32
  config.train.steps, config.train.eval_every, config.train.checkpoint_every = 60, 20, 20
  result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["modalities"] == ["audio", "video", "text"] and not result["labelled"]
  directions = {
    "audio2video",
    "audio2text",
    "video2audio",
    "video2text",
    "text2audio",
    "text2video",
  }
  assert {f"{d}_r@1" for d in directions} <= set(result["test"])
  # 40 test pairs: chance Recall@1 is 1/40; the shared code makes pairs findable.
  assert result["test"]["avg_r@1"] > 0.3 and result["test"]["avg_median_rank"] < 5
  again, _ = evaluate.evaluate_workdir(str(tmp_path / "run"))
  assert again["avg_mrr"] == pytest.approx(result["test"]["avg_mrr"], abs=1e-6)
