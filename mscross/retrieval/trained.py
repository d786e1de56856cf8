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
module, and splits are read (and transformed) at most once per split. Inference needs none of
the training machinery: what it shares with training sits below both, in `mscross.runs`.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from mscross import data
from mscross.errors import CheckpointError, ConfigError, DataError
from mscross.methods import models
from mscross.retrieval import index as index_lib
from mscross.runs import checkpoints, embedding, inputs, layout, lock, settings


class Workdir:
  """Everything a trained workdir holds for evaluation, read once.

  `retrieval` overrides which embeddings are ranked ("common" ranks MS2GAN's shared features
  alone: the same checkpoints, another ranking).
  """

  def __init__(self, path: str, *, retrieval: str | None = None):
    self.path = path
    self.config = layout.read_config(path)
    if retrieval is not None:
      with self.config.unlocked():
        self.config.model.retrieval = retrieval
    transform_path = layout.path(path, layout.TRANSFORM)
    if not (os.path.exists(layout.path(path, layout.SPEC)) and os.path.exists(transform_path)):
      raise CheckpointError(
        f"{path} has no trained model yet ({layout.SPEC} or {layout.TRANSFORM} "
        "missing): run train.py with this workdir first"
      )
    self.spec = models.DataSpec.from_json(layout.read_spec(path))
    self.source = inputs.DataSource.of(self.config)
    self.evaluation = settings.Evaluation.of(self.config)
    self.retrieval = settings.Retrieval.of(self.config)
    self.normalizer = inputs.Normalizer.load(transform_path)
    self.net, _ = models.build_models(models.Architecture.of(self.config), self.spec)
    self.in_training = lock.is_locked(path)
    self.trainer_pid = lock.holder_pid(path) if self.in_training else None
    self.step, self.gen, self.meta = checkpoints.restore_best_generator(
      path, self.net, self.spec, self.size
    )
    self.embed_fn = embedding.make_embed_fn(
      self.retrieval.kind, self.net, fused=self.retrieval.fused
    )
    self._splits: dict[str, data.Split] = {}

  @property
  def size(self) -> int:
    return len(self.retrieval.mu)

  def split(self, name: str) -> data.Split:
    """The split `name`, transformed as the training data was (read once)."""
    if name in self._splits:
      return self._splits[name]
    raw = self.source.load((name,))[0][name]
    spec = inputs.spec_of(raw)
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
    self.mix = (workdir.retrieval.mu[member], workdir.retrieval.label_weight[member])

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
    return embedding.embed_split(self.workdir.embed_fn, self.params, one, *self.mix)[0]

  def features_of(self, modality: str, items) -> np.ndarray:
    """Features [N, d] of raw items of `modality` (image files; texts, or text files as
    `Path`s) by the pretrained extractor the model was trained on (`data.extractors.<modality>`);
    DataError naming the first unreadable item, ConfigError when the modality was not made
    from raw items."""
    extractor = dict(self.config.data.get("extractors", {})).get(modality)
    if not extractor:
      raise ConfigError(
        f"modality {modality!r} of this model was not made from raw items (no "
        f"data.extractors.{modality}); pass feature vectors to encode() instead"
      )
    return data.raw.extract_items(
      extractor, list(items), batch_size=int(self.config.data.extract_batch)
    )

  def encode_items(self, modality: str, items) -> np.ndarray:
    """Embeddings [N, e] of raw items of `modality`: `features_of`, then `encode`."""
    return self.encode(modality, self.features_of(modality, items))

  def embed(self, split: data.Split) -> dict[str, np.ndarray]:
    """{modality: [N, e]} of a TRANSFORMED split (`Workdir.split`)."""
    emb = embedding.embed_split(self.workdir.embed_fn, self.params, split, *self.mix)
    return dict(zip(split.modalities, emb, strict=True))

  def metrics(self, split: data.Split) -> dict[str, float]:
    emb = embedding.embed_split(self.workdir.embed_fn, self.params, split, *self.mix)
    return self.workdir.evaluation.metrics(emb, split)

  def split_embeddings(self, name: str) -> tuple[data.Split, dict[str, np.ndarray]]:
    """(the transformed split `name` of the workdir's dataset, {modality: [N, e]})."""
    split = self.workdir.split(name)
    return split, self.embed(split)

  def split_metrics(self, name: str) -> dict[str, float]:
    return self.metrics(self.workdir.split(name))

  def index(self, modality: str, features, *, ids=None, labels=None, transformed=False):
    """A `retrieval.Index` over the embeddings of raw gallery vectors of `modality`."""
    emb = self.encode(modality, features, transformed=transformed)
    return index_lib.Index.from_arrays(emb, ids=ids, labels=labels)

  def search(self, modality: str, queries, index, k: int = 10):
    """(scores [Q, k], gallery rows [Q, k]) of raw query vectors of `modality` in `index`."""
    return index.search(self.encode(modality, queries), k)
