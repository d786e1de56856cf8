"""Embedding a split with trained params, scoring it, and evaluating a saved workdir.

Training (for validation and the final metrics.json) and `eval.py` both go through
`split_metrics`, so the two report the same numbers for the same checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mscross import checkpoints, data, input_pipeline, metrics, models, train_step
from mscross import config as config_lib
from mscross.errors import CheckpointError

EMBED_BATCH = 4096


def make_embed_fn(config, net: models.CrossModalNet) -> Callable:
  """jitted (gen_params, x_img, x_txt) -> (img_emb, txt_emb), the embeddings that are ranked."""

  @jax.jit
  def embed(gen_params, x_img, x_txt):
    out = net.apply({"params": gen_params}, x_img, x_txt)
    return models.retrieval_embeddings(out, kind=config.model.retrieval, mu=config.model.mu)

  return embed


def embed_split(embed_fn, gen_params, split: data.Split) -> tuple[np.ndarray, np.ndarray]:
  img, txt = [], []
  for start in range(0, len(split.label), EMBED_BATCH):
    sl = slice(start, start + EMBED_BATCH)
    ei, et = embed_fn(gen_params, jnp.asarray(split.image[sl]), jnp.asarray(split.text[sl]))
    img.append(np.asarray(ei))
    txt.append(np.asarray(et))
  return np.concatenate(img), np.concatenate(txt)


def split_metrics(config, embed_fn, gen_params, split: data.Split) -> dict[str, float]:
  """Retrieval metrics (image->text, text->image, average) of `split` under `gen_params`."""
  img, txt = embed_split(embed_fn, gen_params, split)
  return metrics.retrieval_metrics(
    img,
    txt,
    split.label,
    ks=tuple(config.eval.ks),
    map_ks=tuple(config.eval.map_ks),
    block_size=int(config.eval.block_size) or None,
  )


def restore_for_eval(workdir: str):
  """(config, net, best step, generator params) of a trained workdir's best checkpoint."""
  config = config_lib.load_config(workdir)
  splits = input_pipeline.load_splits(config, splits=("train",))
  train = splits["train"]
  net, disc = models.build_models(config, train.label.shape[1])
  txs = train_step.make_optimizers(config)
  target = train_step.init_state(config, net, disc, train.image.shape[1], train.text.shape[1], txs)
  with checkpoints.CheckpointStore(workdir, read_only=True) as store:
    restored = store.restore_best(target)
  if restored is None:
    raise CheckpointError(f"no best checkpoint in {workdir!r}: training has not evaluated yet")
  step, state, _ = restored
  return config, net, step, state.params["gen"]


def evaluate_workdir(workdir: str, *, split: str = "test", export_dir: str | None = None) -> dict:
  """Metrics of the best checkpoint of `workdir` on `split`; optionally exports the embeddings
  (`img_emb.npy`, `txt_emb.npy`, `labels.npy`, `ids.npy`) of that split to `export_dir`."""
  config, net, step, gen_params = restore_for_eval(workdir)
  part = input_pipeline.load_splits(config, splits=("train", split))[split]
  embed_fn = make_embed_fn(config, net)
  result = split_metrics(config, embed_fn, gen_params, part)
  if export_dir:
    os.makedirs(export_dir, exist_ok=True)
    img, txt = embed_split(embed_fn, gen_params, part)
    np.save(os.path.join(export_dir, "img_emb.npy"), img)
    np.save(os.path.join(export_dir, "txt_emb.npy"), txt)
    np.save(os.path.join(export_dir, "labels.npy"), part.label)
    np.save(os.path.join(export_dir, "ids.npy"), part.ids)
  return {
    "method": config.method,
    "dataset": config.data.name,
    "split": split,
    "step": int(step),
    **result,
  }


def dump_json(obj) -> str:
  return json.dumps(obj, sort_keys=True)
