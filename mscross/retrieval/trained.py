"""Using a trained model: `mscross.load(workdir)`.

    import mscross
    model = mscross.load("runs/mnsgan_wikipedia")            # the best-on-validation model
    emb = model.encode("image", new_image_features)          # [N, e], ready for cosine ranking
    gallery = model.index("text", text_features, ids=text_ids)
    scores, rows = model.search("image", new_image_features, gallery, k=10)

A workdir is read once: its config, its data spec, the input transform fitted on the training
split (`input_transform.npz`), and the generator params of its best checkpoint (no optimiser,
no discriminator). New vectors of any modality go through that transform and the encoder of
their modality. `eval.py`, its `--report` and `--topk` and the benchmarks all go through this
module, and splits are read (and transformed) at most once per split.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from mscross import data
from mscross.errors import CheckpointError, ConfigError, DataError
from mscross.methods import models
from mscross.retrieval import index as index_lib
from mscross.training import checkpoints, evaluation, input_pipeline, runlog
from mscross.training import plan as plan_lib
from mscross.training import step as step_lib
from mscross.training import workdir as workdir_lib


class Workdir:
  """Everything a trained workdir holds for evaluation, read once.

  `retrieval` overrides which embeddings are ranked ("common" ranks MS2GAN's shared features
  alone: the same checkpoints, another ranking).
  """

  def __init__(self, path: str, *, retrieval: str | None = None):
    self.path = path
    self.config = workdir_lib.read_config(path)
    if retrieval is not None:
      with self.config.unlocked():
        self.config.model.retrieval = retrieval
    transform_path = workdir_lib.path(path, workdir_lib.TRANSFORM)
    if not (
      os.path.exists(workdir_lib.path(path, workdir_lib.SPEC)) and os.path.exists(transform_path)
    ):
      raise CheckpointError(
        f"{path} has no trained model yet ({workdir_lib.SPEC} or {workdir_lib.TRANSFORM} "
        "missing): run train.py with this workdir first"
      )
    self.spec = models.DataSpec.from_json(workdir_lib.read_spec(path))
    self.plan = plan_lib.resolve(self.config, self.spec)
    self.normalizer = input_pipeline.Normalizer.load(transform_path)
    self.net, _ = models.build_models(self.config, self.spec)
    self.in_training = workdir_lib.is_locked(path)
    self.trainer_pid = workdir_lib.holder_pid(path) if self.in_training else None
    self.step, self.gen, self.meta = self._restore_best()
    self._embed = evaluation.make_embed_fn(self.config, self.net)
    self._splits: dict[str, data.Split] = {}

  @property
  def size(self) -> int:
    return self.plan.size

  def _restore_best(self):
    one = jax.eval_shape(lambda: step_lib.init_generator(self.net, self.spec))
    target = {
      "gen": jax.tree.map(lambda s: np.zeros((self.size, *s.shape), s.dtype), one),
    }
    with checkpoints.CheckpointStore(self.path, read_only=True) as store:
      restored = store.restore_best(target)
    if restored is None:
      raise CheckpointError(f"no best checkpoint in {self.path!r}: training has not evaluated yet")
    step, tree, meta = restored
    return step, tree["gen"], meta

  def split(self, name: str) -> data.Split:
    """The split `name`, transformed as the training data was (read once)."""
    if name in self._splits:
      return self._splits[name]
    raw = input_pipeline.load_raw(self.config, (name,))[name]
    spec = input_pipeline.data_spec(raw)
    if spec.modalities != self.spec.modalities or spec.dims != self.spec.dims:
      raise DataError(
        f"the {name} split of {self.config.data.name!r} has modalities {spec.modalities} with "
        f"dims {spec.dims}, the model {self.spec.modalities} with {self.spec.dims}"
      )
    self._splits[name] = self.normalizer(raw, name)
    return self._splits[name]

  def member(self, m: int = 0) -> TrainedModel:
    if not 0 <= m < self.size:
      raise CheckpointError(f"member {m} does not exist: the population has {self.size}")
    return TrainedModel(self, m)

  def best_step(self, m: int) -> int:
    tracker = self.meta.get("tracker")
    return int(tracker["best_step"][m]) if tracker else int(self.step)


class TrainedModel:
  """One member's best model: encodes new vectors and searches galleries."""

  def __init__(self, workdir: Workdir, member: int):
    self.workdir, self.member = workdir, member
    self.config, self.spec = workdir.config, workdir.spec
    self.params = jax.tree.map(lambda x: x[member], workdir.gen)
    self.step = workdir.best_step(member)
    self.mu = float(workdir.plan.member_values("model.mu")[member])

  @property
  def modalities(self) -> tuple[str, ...]:
    return self.spec.modalities

  def encode(self, modality: str, features, *, transformed: bool = False) -> np.ndarray:
    """Embeddings [N, e] of raw feature vectors [N, d] of `modality` (`transformed=True`: the
    vectors already went through the input transform)."""
    x = np.asarray(features, np.float32)
    if not transformed:
      x = self.workdir.normalizer.transform(modality, x)
    one = data.Split(
      features={modality: x}, label=None, ids=np.arange(len(x)).astype(str), class_names=()
    )
    return evaluation.embed_split(self.workdir._embed, self.params, one, self.mu)[0]

  def features_of(self, modality: str, items) -> np.ndarray:
    """Features [N, d] of raw items of `modality` (image files; texts, or text files as
    `Path`s) by the pretrained encoder the model was trained on (`data.encoders.<modality>`);
    DataError naming the first unreadable item, ConfigError when the modality was not made
    from raw items."""
    encoder = dict(self.config.data.get("encoders", {})).get(modality)
    if not encoder:
      raise ConfigError(
        f"modality {modality!r} of this model was not made from raw items (no "
        f"data.encoders.{modality}); pass feature vectors to encode() instead"
      )
    return data.raw.encode_items(
      encoder, list(items), batch_size=int(self.config.data.encode_batch)
    )

  def encode_items(self, modality: str, items) -> np.ndarray:
    """Embeddings [N, e] of raw items of `modality`: `features_of`, then `encode`."""
    return self.encode(modality, self.features_of(modality, items))

  def embed(self, split: data.Split) -> dict[str, np.ndarray]:
    """{modality: [N, e]} of a TRANSFORMED split (`Workdir.split`)."""
    emb = evaluation.embed_split(self.workdir._embed, self.params, split, self.mu)
    return dict(zip(split.modalities, emb, strict=True))

  def metrics(self, split: data.Split) -> dict[str, float]:
    emb = evaluation.embed_split(self.workdir._embed, self.params, split, self.mu)
    return evaluation.metrics_of(self.config, emb, split)

  def index(self, modality: str, features, *, ids=None, labels=None, transformed=False):
    """A `retrieval.Index` over the embeddings of raw gallery vectors of `modality`."""
    emb = self.encode(modality, features, transformed=transformed)
    return index_lib.Index.from_arrays(emb, ids=ids, labels=labels)

  def search(self, modality: str, queries, index, k: int = 10):
    """(scores [Q, k], gallery rows [Q, k]) of raw query vectors of `modality` in `index`."""
    return index.search(self.encode(modality, queries), k)


def load(workdir: str, member: int = 0) -> TrainedModel:
  """The best-on-validation model of `workdir` (of population member `member`)."""
  return Workdir(workdir).member(member)


def evaluate_workdir(
  path: str,
  *,
  split: str = "test",
  member: int | None = None,
  export_dir: str | None = None,
  report: bool = False,
  topk: int | None = None,
) -> tuple[dict, list[str]]:
  """What `eval.py` does: the metrics of the best checkpoint on `split`, for one member (or
  every member when `member` is None and the population has several), plus the optional
  embedding export, report and top-k files. Returns (result, notes for the user)."""
  wd = Workdir(path)
  notes = []
  if wd.in_training:
    holder = f"process {wd.trainer_pid}" if wd.trainer_pid else "another process"
    notes.append(
      f"{path} is being trained by {holder}; evaluating its newest complete best checkpoint "
      f"(step {wd.step})"
    )
  part = wd.split(split)
  header = {"method": wd.config.method, "dataset": wd.config.data.name, "split": split}
  chosen = [member] if member is not None else list(range(wd.size))
  results = []
  for m in chosen:
    model = wd.member(m)
    results.append({**header, "member": m, "step": model.step, **model.metrics(part)})
  if len(results) == 1:
    result = results[0]
  else:
    numeric = [{k: v for k, v in r.items() if isinstance(v, float)} for r in results]
    mean, std = evaluation.mean_and_std(numeric)
    result = {**header, "members": results, "mean": mean, "std": std}
  model = wd.member(chosen[0])
  suffix = "" if wd.size == 1 else f"_member{model.member}"
  if export_dir or report or topk:
    embeddings = model.embed(part)
  if export_dir:
    notes.append(f"embeddings: {export(export_dir, embeddings, part)}")
  if report:
    from mscross.retrieval import report as report_lib

    title = (
      f"{wd.config.method} on {wd.config.data.name}, {split} split "
      f"(best checkpoint of member {model.member}, step {model.step})"
    )
    out = report_lib.write_report(
      os.path.join(path, f"report_{split}{suffix}"),
      title=title,
      split=part,
      embeddings=embeddings,
      summary={k: v for k, v in results[0].items() if k not in (*header, "member", "step")},
      block_size=int(wd.config.eval.block_size) or None,
      raw_items=_raw_items(wd.config, notes),
      game=runlog.game_state(path, model.member, model.step),
    )
    notes.append(f"report: {out}")
  if topk:
    out = os.path.join(path, f"topk_{split}{suffix}")
    index_lib.write_topk_files(out, embeddings, part.ids, topk)
    notes.append(f"top-{topk} neighbours: {out}")
  return result, notes


def _raw_items(config, notes: list[str]) -> dict:
  """The raw items of the config's dataset for the report (empty for feature datasets); when its
  source folder cannot be read (moved or deleted since training), none, with a note."""
  data_dir = data.resolve_data_dir(config.data.data_dir or None)
  try:
    return data.raw_items(config.data.name, data_dir)
  except DataError as exc:
    notes.append(
      f"report: shows ids only, the raw items of {config.data.name!r} are unreadable: {exc}"
    )
    return {}


def export(export_dir: str, embeddings: dict[str, np.ndarray], split: data.Split) -> str:
  """Writes emb_<modality>.npy for every modality, ids.npy and (labelled data) labels.npy."""
  os.makedirs(export_dir, exist_ok=True)
  for m, emb in embeddings.items():
    np.save(os.path.join(export_dir, f"emb_{m}.npy"), emb)
  np.save(os.path.join(export_dir, "ids.npy"), split.ids)
  if split.label is not None:
    np.save(os.path.join(export_dir, "labels.npy"), split.label)
  return export_dir
