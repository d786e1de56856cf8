"""The configuration schema: defaults, the one validation of a config, and the resolved config
written to (and read back from) `WORKDIR/config.json`.

`configs/default.py` builds a config with `presets.build(method, dataset)` from these defaults;
`train.py` overrides any key from the command line (`--config.optim.lr=1e-4`).
"""

from __future__ import annotations

import json
import os

import ml_collections

from mscross.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "acmr"
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

  c.model = ml_collections.ConfigDict()
  # Hidden widths of each modality-specific encoder; `model.encoders.<modality>` overrides them
  # for one modality. Every encoder ends in a layer of `model.width` units.
  c.model.encoder_layers = (256,)
  c.model.encoders = ml_collections.ConfigDict()
  c.model.width = 64
  # The common sub-network, ONE set of weights applied to every modality (its last width is the
  # common embedding's); empty: the encoders' outputs are the common embeddings.
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

  # One entry per loss term: {weight, options...}; see mscross/loss_terms.py.
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
  # The step cap; with `patience` a run usually stops earlier, once validation stops improving.
  c.train.steps = 2000
  c.train.eval_every = 200
  # Evaluations without a better validation score after which a member stops; 0: never.
  c.train.patience = 0
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 2
  # Consecutive non-finite steps tolerated before a member stops at its last good state.
  c.train.max_nonfinite = 20

  # Populations (mscross/population.py): `size` members trained in one program, vmapped over a
  # leading axis of the train state. Members differ by seed (seed + m) unless `vary_seed` is
  # off, and by the continuous hyperparameters listed in `hparams`, a JSON object of
  # {"dotted.key": [one value per member]}, e.g. '{"optim.lr": [1e-4, 3e-4, 1e-3]}'.
  c.population = ml_collections.ConfigDict()
  c.population.size = 1
  c.population.vary_seed = True
  c.population.hparams = ""

  # Data parallelism (mscross/parallel.py): the global batch train.batch_size is split evenly over
  # the devices and every batch-level loss term sees the whole global batch.
  c.parallel = ml_collections.ConfigDict()
  # 0: every device (of every process under train.py --multihost); n: the first n devices.
  c.parallel.num_devices = 0
  # "device": the whole training split on every device, batches gathered inside the step;
  # "host": each process gathers the rows of its own devices on the host, `host_steps` steps per
  # transfer; "auto": "device" in one process, "host" with several.
  c.parallel.feed = "auto"
  c.parallel.host_steps = 50

  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (1, 5, 10, 50, 100)
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


def validate(config, modalities=None, *, labelled: bool = True) -> None:
  """Every check of a config, in one place; raises ConfigError with one line.

  Args:
    config: the config to check.
    modalities: the dataset's modality names, once known: the per-modality keys
      (`model.encoders`, `data.powers`) must name them. None skips those checks.
    labelled: whether the training data has class labels: loss terms that predict classes
      refuse unlabelled data.
  """
  # Imported here: the registries import this module's schema.
  from mscross import loss_terms, methods, population

  methods.get(config.method)
  terms = loss_terms.active_terms(config.loss)
  if not labelled:
    needy = sorted(name for name in terms if loss_terms.LOSS_TERMS[name].needs_labels)
    if needy:
      raise ConfigError(
        f"loss term(s) {', '.join(needy)} predict class labels, but the training data has none "
        f"(data.labels={config.data.labels}); set their weight to 0 or use labelled data"
      )
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

  m = config.model
  _widths("model.encoder_layers", tuple(m.encoder_layers), allow_empty=True)
  for name, layers in m.encoders.items():
    _widths(f"model.encoders.{name}", tuple(layers), allow_empty=True)
  if isinstance(m.width, bool) or not isinstance(m.width, int) or m.width < 1:
    raise ConfigError(f"config.model.width must be a positive integer, got {m.width!r}")
  _widths("model.shared_layers", tuple(m.shared_layers), allow_empty=True)
  _widths("disc.layers", tuple(config.disc.layers), allow_empty=True)
  _choice("model.activation", m.activation, ("tanh", "relu", "leaky_relu", "sigmoid", "none"))
  _choice("disc.activation", config.disc.activation, ("tanh", "relu", "leaky_relu", "sigmoid"))
  _choice("model.classifier_input", m.classifier_input, ("common", "concat"))
  _choice("model.retrieval", m.retrieval, ("common", "joint"))
  _choice("model.dtype", m.dtype, ("float32", "bfloat16"))

  a = config.adv
  _choice("adv.mode", a.mode, ("alternating", "reversal"))
  _choice("adv.schedule", a.schedule, ("dann", "constant"))
  _positive_ints(config, "adv", ("d_steps",))

  metric = config.eval.select_metric
  if not isinstance(metric, str) or "_" not in metric:
    raise ConfigError(f"config.eval.select_metric must look like avg_map, got {metric!r}")
  if config.eval.block_size < 0:
    raise ConfigError(f"config.eval.block_size must be >= 0, got {config.eval.block_size}")

  p = config.parallel
  if isinstance(p.num_devices, bool) or p.num_devices < 0:
    raise ConfigError(f"config.parallel.num_devices must be >= 0, got {p.num_devices}")
  _check_devices(config)
  _choice("parallel.feed", p.feed, ("auto", "device", "host"))
  _positive_ints(config, "parallel", ("host_steps",))
  _positive_ints(config, "population", ("size",))
  population.member_configs(config)  # checks population.hparams against the traced keys

  if modalities is not None:
    if len(modalities) < 2:
      raise ConfigError(f"cross-modal retrieval needs 2 or more modalities, got {modalities}")
    for section in ("model.encoders", "data.powers"):
      node = config.model.encoders if section == "model.encoders" else config.data.powers
      unknown = sorted(set(node.keys()) - set(modalities))
      if unknown:
        raise ConfigError(
          f"config.{section} names {', '.join(unknown)}, which the dataset "
          f"{config.data.name!r} does not have (its modalities: {', '.join(modalities)})"
        )
    prefix = metric.split("_", 1)[0]
    from mscross import metrics

    directions = [key for key, _, _ in metrics.direction_names(tuple(modalities))]
    if prefix != "avg" and prefix not in directions:
      raise ConfigError(
        f"config.eval.select_metric={metric!r}: its direction must be avg or one of "
        f"{', '.join(directions)}"
      )


def _check_devices(config) -> None:
  """The mesh's device count (parallel.num_devices, 0 = all) against the devices there are and
  the global batch, which it must divide."""
  import jax

  available, requested = jax.device_count(), int(config.parallel.num_devices)
  if jax.process_count() > 1 and requested not in (0, available):
    raise ConfigError(
      f"with {jax.process_count()} processes the mesh spans every device of every process: "
      f"set config.parallel.num_devices to 0 or {available}, not {requested}"
    )
  n = requested or available
  if n > available:
    raise ConfigError(f"config.parallel.num_devices={n}, but there are only {available} devices")
  if config.train.batch_size % n:
    raise ConfigError(
      f"config.train.batch_size={config.train.batch_size} (the global batch) is not divisible "
      f"by the {n} devices used; change the batch size or config.parallel.num_devices"
    )


def encoder_layers(config, modality: str) -> tuple[int, ...]:
  """The full widths of `modality`'s encoder: its hidden layers, then `model.width`."""
  hidden = config.model.encoders.get(modality, config.model.encoder_layers)
  return (*tuple(hidden), int(config.model.width))


def to_json(config) -> str:
  return config.to_json(indent=2, sort_keys=True)


def save_config(config, workdir: str) -> str:
  path = os.path.join(workdir, "config.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(to_json(config))
  # A crash mid-write must not leave a truncated config.json: the run's truth on resume.
  os.replace(tmp, path)
  return path


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
  return ml_collections.ConfigDict(_tuples(raw))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a training run wrote to `workdir/config.json`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{path} not found: is {workdir!r} a workdir written by train.py?")
  return load_config_file(path)


def _tuples(value):
  # JSON has no tuples; the config's sequences are tuples.
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def flatten(config, prefix: str = "") -> dict[str, object]:
  """{"a.b.c": value} for every leaf of a (nested) config."""
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict | dict):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def set_dotted(config, dotted: str, value) -> None:
  """Sets `config.<dotted>` as `--config.<dotted>=value` would; unknown keys are an error."""
  *path, last = dotted.split(".")
  node = config
  for key in path:
    if key not in node:
      raise ConfigError(f"unknown config key {dotted!r}")
    node = node[key]
  if last not in node:
    raise ConfigError(f"unknown config key {dotted!r}")
  node[last] = value
