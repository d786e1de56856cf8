"""The configuration schema: every key with its default, the schema check of a config, and a
config as JSON (a workdir's config.json, tune.py's best_config.json).

`configs/default.py` builds a config with `presets.build(method, dataset)` from these defaults;
`train.py` overrides any key from the command line (`--config.optim.lr=1e-4`). What a config
MEANS (its method, loss terms with every option, population members, traced values) is resolved
once, against the registries and the data, by `mscross.training.plan`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import ml_collections

from mscross import dotted
from mscross.errors import ConfigError

# Keys renamed since earlier versions, old -> new: a config that still uses one (an old workdir's
# config.json, a saved best_config.json, a --config override) is refused in one line naming the
# new key, never half-read.
RENAMED = {
  "data.encoders": "data.extractors",
  "data.encode_batch": "data.extract_batch",
  "model.width": "model.encoder_width",
  "eval.ks": "eval.precision_ks",
  "loss.acmr_triplet.negative": "loss.acmr_triplet.negatives",
  "loss.ms2gan_similarity.mining": "loss.ms2gan_similarity.negatives",
}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "mnsgan"  # a name of the method registry (mscross.methods)
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits_halves"
  # Empty: the MSCROSS_DATA_DIR environment variable, else no data directory.
  c.data.data_dir = ""
  # False drops the class labels: instance-level retrieval, where a query's only relevant item
  # is its own pair (datasets without labels are always instance-level).
  c.data.labels = True
  # Per-feature z-scores with training-split statistics.
  c.data.standardize = True
  # Signed power applied before standardising (0.5 = Hellinger map for histograms; 1 = off),
  # for every modality unless `data.powers.<modality>` says otherwise.
  c.data.power = 1.0
  c.data.powers = ml_collections.ConfigDict()
  # Datasets of raw images and texts: the pretrained extractor of each raw modality
  # (`mscross.extractors.names()`); the presets fill in the dataset's defaults.
  c.data.extractors = ml_collections.ConfigDict()
  # A pair with an unreadable raw item (missing or corrupt image, empty or non-UTF-8 text):
  # "skip" it and list it in the workdir's data_problems.tsv, or "stop".
  c.data.bad_input = "skip"
  # Raw items per extractor call during feature extraction.
  c.data.extract_batch = 32
  # The validation split: "as_prepared" (the dataset's own, or the seeded part of train its
  # builder holds out), or "novel": its items that are near-duplicates of a train item (cosine
  # >= 0.99 between their features in any modality) move to train, so that validation scores
  # items unlike the training collection, as a later test split's are.
  c.data.validation = "as_prepared"

  c.model = ml_collections.ConfigDict()
  # Hidden widths of each modality-specific encoder; `model.encoders.<modality>` overrides them
  # for one modality. Every encoder ends in a layer of `model.encoder_width` units.
  c.model.encoder_layers = (256,)
  c.model.encoders = ml_collections.ConfigDict()
  c.model.encoder_width = 64
  # The common sub-network, ONE set of weights applied to every modality (its last width is the
  # common embedding's); empty: the encoders' outputs are the common embeddings.
  c.model.shared_layers = ()
  c.model.activation = "tanh"
  c.model.activate_final = True
  c.model.shared_activate_final = True
  c.model.classifier_input = "common"  # or "concat" ([specific; common], MS2GAN)
  # What is ranked: "common", "joint" ([n(specific); mu * n(common)], MS2GAN) or "label" (the
  # classifier's predicted distribution, as semantic matching ranks); with `label_weight` > 0,
  # common or joint are fused with the predicted distribution at that weight.
  c.model.retrieval = "common"
  c.model.mu = 1.0
  c.model.label_weight = 0.0
  # Dropout rates, in training only: of the inputs, and of every hidden layer's activations.
  c.model.dropout_input = 0.0
  c.model.dropout_hidden = 0.0
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
  # Steps over which the DANN schedule ramps the adversary's weight up to `adv.weight`: a
  # setting of its own, so that the adversary reaches its weight in runs that early stopping
  # ends long before the step cap; 0 ramps over `train.steps` (the cap), as DANN's paper does.
  c.adv.ramp_steps = 1000.0
  c.adv.d_steps = 1
  # What the encoders do with the discriminator's predictions: "minimax" maximises its loss (the
  # papers' objective; its gradient vanishes once the discriminator is confident and right),
  # "confusion" pulls its predictions toward uniform, a push that does not fade when it wins.
  c.adv.generator_loss = "minimax"

  # One entry per loss term, {weight, options...}: the method's terms (mscross.methods.registry),
  # which the presets fill in with every option's default.
  c.loss = ml_collections.ConfigDict()

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-4
  c.optim.disc_lr = 0.0  # 0: same as lr
  c.optim.b1 = 0.5
  c.optim.b2 = 0.999
  c.optim.grad_clip = 0.0  # 0: off
  # Decoupled weight decay of the generator's kernels (AdamW): params -= lr * decay * params.
  c.optim.weight_decay = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64
  # The step cap; with `patience` a run usually stops earlier, once validation stops improving.
  c.train.steps = 2000
  c.train.eval_every = 200
  # Evaluations without a better validation score after which a member stops; 0: never.
  c.train.patience = 0
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 2
  # Consecutive non-finite steps tolerated before a member stops at its last good state.
  c.train.max_nonfinite = 20
  # Exponential moving average of the generator's weights (0: off): when on, the average is
  # what evaluation, selection and the best checkpoint use.
  c.train.ema_decay = 0.0

  # Populations (mscross/training/plan.py): `size` members trained in one program, vmapped over a
  # leading axis of the train state. Members differ by seed (seed + m) unless `vary_seed` is
  # off, and by the continuous hyperparameters listed in `hparams`, a JSON object of
  # {"dotted.key": [one value per member]}, e.g. '{"optim.lr": [1e-4, 3e-4, 1e-3]}'.
  c.population = ml_collections.ConfigDict()
  c.population.size = 1
  c.population.vary_seed = True
  c.population.hparams = ""

  # Data parallelism (mscross/training/loop.py): the global batch train.batch_size is split
  # evenly over the devices and every batch-level loss term sees the whole global batch.
  c.parallel = ml_collections.ConfigDict()
  # 0: every device (of every process under train.py --multihost); n: the first n devices.
  c.parallel.num_devices = 0
  # "device": the whole training split on every device, batches gathered inside the step;
  # "host": each process gathers the rows of its own devices on the host, `host_steps` steps per
  # transfer; "auto": "device" in one process, "host" with several.
  c.parallel.feed = "auto"
  c.parallel.host_steps = 50

  c.eval = ml_collections.ConfigDict()
  c.eval.precision_ks = (1, 5, 10, 50, 100)  # precision@K
  c.eval.map_ks = (50,)
  c.eval.recall_ks = (1, 5, 10)  # Recall@k of instance-level (unlabelled) retrieval
  c.eval.select_metric = "avg_map"  # chosen on the validation split, never on test
  # Queries scored per block; 0 picks the largest block that fits the metrics' memory budget.
  c.eval.block_size = 0
  return c


def _positive_ints(config, section: str, keys) -> None:
  for key in keys:
    value = config[section][key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ConfigError(f"config.{section}.{key} must be a positive integer, got {value!r}")


def _widths(name: str, value, *, allow_empty: bool) -> None:
  if not isinstance(value, tuple | list) or (not value and not allow_empty):
    raise ConfigError(f"config.{name} must be a tuple of layer widths, got {value!r}")
  for w in value:
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
      raise ConfigError(f"config.{name} must hold positive integers, got {value!r}")


def _choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(f"config.{name} must be one of {list(choices)}, got {value!r}")


def check_renamed(keys: Iterable[str], where: str = "the config") -> None:
  """ConfigError naming the new key when any of the dotted `keys` is one of `RENAMED`."""
  for key in keys:
    for old, new in RENAMED.items():
      if key == old or key.startswith(old + "."):
        raise ConfigError(f"{where} uses {old}, which mscross now calls {new}: rename it")


def _keys(tree, prefix: str = "") -> list[str]:
  """Every dotted key of a nested mapping, sections (empty ones too) included."""
  out = []
  for key, value in tree.items():
    out.append(f"{prefix}{key}")
    if dotted.is_node(value):
      out += _keys(value, f"{prefix}{key}.")
  return out


def validate(config) -> None:
  """The schema check of a config (types, ranges, choices); raises ConfigError with one line.
  What needs the registries or the data is checked when the run plan is resolved."""
  check_renamed(_keys(config))
  _positive_ints(
    config,
    "train",
    ("batch_size", "steps", "eval_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite"),
  )
  if config.train.batch_size < 2:
    raise ConfigError(f"config.train.batch_size must be at least 2, got {config.train.batch_size}")
  if isinstance(config.train.patience, bool) or config.train.patience < 0:
    raise ConfigError(f"config.train.patience must be >= 0, got {config.train.patience!r}")
  if not config.optim.lr > 0:
    raise ConfigError(f"config.optim.lr must be positive, got {config.optim.lr}")
  if config.optim.disc_lr < 0 or config.optim.grad_clip < 0:
    raise ConfigError("config.optim.disc_lr and config.optim.grad_clip must be >= 0")

  _choice("data.bad_input", config.data.bad_input, ("skip", "stop"))
  _choice("data.validation", config.data.validation, ("as_prepared", "novel"))
  _positive_ints(config, "data", ("extract_batch",))

  m = config.model
  _widths("model.encoder_layers", tuple(m.encoder_layers), allow_empty=True)
  for name, layers in m.encoders.items():
    _widths(f"model.encoders.{name}", tuple(layers), allow_empty=True)
  width = m.encoder_width
  if isinstance(width, bool) or not isinstance(width, int) or width < 1:
    raise ConfigError(f"config.model.encoder_width must be a positive integer, got {width!r}")
  _widths("model.shared_layers", tuple(m.shared_layers), allow_empty=True)
  _widths("disc.layers", tuple(config.disc.layers), allow_empty=True)
  _choice("model.activation", m.activation, ("tanh", "relu", "leaky_relu", "sigmoid", "none"))
  _choice("disc.activation", config.disc.activation, ("tanh", "relu", "leaky_relu", "sigmoid"))
  _choice("model.classifier_input", m.classifier_input, ("common", "concat"))
  _choice("model.retrieval", m.retrieval, ("common", "joint", "label"))
  for key in ("dropout_input", "dropout_hidden"):
    if not 0.0 <= m[key] < 1.0:
      raise ConfigError(f"config.model.{key} must be in [0, 1), got {m[key]!r}")
  if m.label_weight < 0:
    raise ConfigError(f"config.model.label_weight must be >= 0, got {m.label_weight!r}")
  if config.optim.weight_decay < 0:
    raise ConfigError(f"config.optim.weight_decay must be >= 0, got {config.optim.weight_decay}")
  if not 0.0 <= config.train.ema_decay < 1.0:
    raise ConfigError(f"config.train.ema_decay must be in [0, 1), got {config.train.ema_decay}")
  _choice("model.dtype", m.dtype, ("float32", "bfloat16"))

  a = config.adv
  _choice("adv.mode", a.mode, ("alternating", "reversal"))
  _choice("adv.schedule", a.schedule, ("dann", "constant"))
  _positive_ints(config, "adv", ("d_steps",))
  _choice("adv.generator_loss", a.generator_loss, ("minimax", "confusion"))
  if a.generator_loss == "confusion" and a.mode == "reversal":
    raise ConfigError(
      "adv.generator_loss=confusion needs adv.mode=alternating: a gradient-reversal layer plays "
      "the minimax game by construction"
    )
  if isinstance(a.ramp_steps, bool) or not a.ramp_steps >= 0:
    raise ConfigError(f"config.adv.ramp_steps must be >= 0, got {a.ramp_steps!r}")

  metric = config.eval.select_metric
  if not isinstance(metric, str) or "_" not in metric:
    raise ConfigError(f"config.eval.select_metric must look like avg_map, got {metric!r}")
  if config.eval.block_size < 0:
    raise ConfigError(f"config.eval.block_size must be >= 0, got {config.eval.block_size}")

  p = config.parallel
  if isinstance(p.num_devices, bool) or p.num_devices < 0:
    raise ConfigError(f"config.parallel.num_devices must be >= 0, got {p.num_devices}")
  _choice("parallel.feed", p.feed, ("auto", "device", "host"))
  _positive_ints(config, "parallel", ("host_steps",))
  _positive_ints(config, "population", ("size",))


def to_json(config) -> str:
  return config.to_json(indent=2, sort_keys=True)


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """A config saved as JSON (a workdir's config.json, or tune.py's best_config.json)."""
  if not os.path.exists(path):
    raise ConfigError(f"{path} not found")
  with open(path) as f:
    try:
      raw = json.load(f)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(raw, dict):
    raise ConfigError(f"{path} does not hold a config (a JSON object)")
  config = ml_collections.ConfigDict(_tuples(raw))
  check_renamed(_keys(config), path)
  return with_defaults(config)


def with_defaults(config) -> ml_collections.ConfigDict:
  """`config` with every key it lacks filled in with its default: the schema's, and each loss
  term's options from the term's signature. A config saved before a key was added (an old
  workdir's config.json) so reads as the config it was, since every new key's default keeps
  the earlier behaviour."""
  from mscross.methods import registry

  full = base_config()
  with full.unlocked():
    _merge(full, config)
    for name in full.loss.keys():
      try:
        full.loss[name] = registry.complete_options(name, full.loss[name])
      except ConfigError:
        pass  # an unknown term or option: the plan names it, in one line
  return full


def _merge(into, config) -> None:
  for key, value in config.items():
    if dotted.is_node(value) and key in into and dotted.is_node(into[key]) and len(into[key]):
      _merge(into[key], value)
    else:
      into[key] = value.to_dict() if hasattr(value, "to_dict") else value


def _tuples(value):
  # JSON has no tuples; the config's sequences are tuples.
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value
