"""The configuration schema: defaults shared by every config file, validation, and the resolved
config written to (and read back from) `WORKDIR/config.json`.

Config files in `configs/` start from `base_config()` and change what their method and dataset
need; `train.py` overrides any key from the command line (`--config.optim.lr=1e-4`).
"""

from __future__ import annotations

import json
import os

import ml_collections

from mscross import methods
from mscross.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "acmr"
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits_halves"
  # Empty: the MSCROSS_DATA_DIR environment variable, else no data directory.
  c.data.data_dir = ""
  # Per-feature z-scores with training-split statistics.
  c.data.standardize = True
  # Signed power applied before standardising (0.5 = Hellinger map for histograms; 1 = off).
  c.data.img_power = 1.0
  c.data.txt_power = 1.0

  c.model = ml_collections.ConfigDict()
  c.model.img_layers = (256, 64)
  c.model.txt_layers = (256, 64)
  c.model.shared_layers = ()
  c.model.activation = "tanh"
  c.model.activate_final = True
  c.model.shared_activate_final = True
  c.model.classifier_input = "common"  # or "concat" ([specific; common], MS2GAN)
  c.model.retrieval = "common"  # or "joint" ([n(specific); mu * n(common)], MS2GAN)
  c.model.mu = 1.0
  # "bfloat16": Dense layers compute in bfloat16; params, optimiser state and losses stay float32.
  c.model.dtype = "float32"

  c.disc = ml_collections.ConfigDict()
  c.disc.layers = (32, 16)
  c.disc.activation = "leaky_relu"

  c.adv = ml_collections.ConfigDict()
  c.adv.enabled = True
  c.adv.mode = "alternating"  # or "reversal"
  c.adv.weight = 1.0
  c.adv.schedule = "dann"  # or "constant"
  c.adv.d_steps = 1

  # One entry per loss term: {weight, options...}; see mscross/methods.py.
  c.loss = ml_collections.ConfigDict()
  c.loss.label = dict(weight=1.0)
  c.loss.acmr_triplet = dict(weight=1.0, margin=0.5, negative="random")
  c.loss.reg = dict(weight=1e-4)

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-4
  c.optim.disc_lr = 0.0  # 0: same as lr
  c.optim.b1 = 0.5
  c.optim.b2 = 0.999
  c.optim.grad_clip = 0.0  # 0: off

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64
  c.train.steps = 2000
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 2
  # Consecutive non-finite steps tolerated before training stops at the last good checkpoint.
  c.train.max_nonfinite = 20

  # Data parallelism (mscross/parallel.py): the global batch train.batch_size is split evenly over
  # the devices and every batch-level loss term sees the whole global batch.
  c.parallel = ml_collections.ConfigDict()
  # 0: every device (of every process under train.py --multihost); 1: the single-device path.
  c.parallel.num_devices = 0
  # "device": the whole training split on every device, batches gathered inside the step;
  # "host": each process gathers the rows of its own devices on the host, `host_steps` steps per
  # transfer; "auto": "device" in one process, "host" with several.
  c.parallel.feed = "auto"
  c.parallel.host_steps = 50

  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (1, 5, 10, 50, 100)
  c.eval.map_ks = (50,)
  c.eval.select_metric = "avg_map"  # chosen on the validation split, never on test
  # Queries scored per block; 0 picks the largest block that fits the metrics' memory budget.
  c.eval.block_size = 0
  return c


def validate(config) -> None:
  """Raises ConfigError for values that would otherwise fail deep inside training."""
  methods.check_method(config.method)
  methods.active_terms(config.loss)
  t = config.train
  for key in ("batch_size", "steps", "eval_every", "checkpoint_every", "keep_checkpoints"):
    if int(t[key]) < 1:
      raise ConfigError(f"config.train.{key} must be positive, got {t[key]}")
  if config.optim.lr <= 0:
    raise ConfigError(f"config.optim.lr must be positive, got {config.optim.lr}")
  if not config.model.img_layers or not config.model.txt_layers:
    raise ConfigError("config.model.img_layers and txt_layers need at least one layer")
  if config.model.img_layers[-1] != config.model.txt_layers[-1]:
    raise ConfigError(
      "the encoders must end at the same width: "
      f"img_layers[-1]={config.model.img_layers[-1]}, txt_layers[-1]={config.model.txt_layers[-1]}"
    )
  if config.model.retrieval not in ("common", "joint"):
    raise ConfigError(f"config.model.retrieval must be common or joint: {config.model.retrieval!r}")
  if config.adv.mode not in ("alternating", "reversal"):
    raise ConfigError(f"config.adv.mode must be alternating or reversal: {config.adv.mode!r}")
  if config.eval.select_metric.split("_", 1)[0] not in ("i2t", "t2i", "avg"):
    raise ConfigError("config.eval.select_metric must start with i2t_, t2i_ or avg_")
  if config.model.dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"config.model.dtype must be float32 or bfloat16: {config.model.dtype!r}")
  p = config.parallel
  if int(p.num_devices) < 0:
    raise ConfigError(f"config.parallel.num_devices must be >= 0, got {p.num_devices}")
  if int(p.num_devices) > 0 and int(t.batch_size) % int(p.num_devices):
    raise ConfigError(
      f"config.train.batch_size={t.batch_size} (the global batch) must be divisible by "
      f"config.parallel.num_devices={p.num_devices}"
    )
  if p.feed not in ("auto", "device", "host"):
    raise ConfigError(f"config.parallel.feed must be auto, device or host: {p.feed!r}")
  if int(p.host_steps) < 1:
    raise ConfigError(f"config.parallel.host_steps must be positive, got {p.host_steps}")


def save_config(config, workdir: str) -> str:
  path = os.path.join(workdir, "config.json")
  with open(path, "w") as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  return path


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a training run wrote to `workdir/config.json`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{path} not found: is {workdir!r} a workdir written by train.py?")
  with open(path) as f:
    try:
      raw = json.load(f)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path} is not valid JSON: {e}") from None
  return ml_collections.ConfigDict(_tuples(raw))


def _tuples(value):
  # JSON has no tuples; the config's sequences are tuples.
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value
