"""From a dataset to a network's inputs: the data a run names, loaded once, and the input transform.

Input transform: per modality, a signed power map, then per-feature standardisation with
statistics of the TRAINING split (never of test). The fitted transform is saved in the workdir
(`input_transform.npz`), so a trained model encodes new vectors exactly as it saw its training
data, without the training data.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mscross import atomic, data
from mscross.errors import DataError
from mscross.methods.models import DataSpec


def signed_power(x: np.ndarray, power: float) -> np.ndarray:
  """sign(x) |x|^power: power 0.5 on bag-of-words histograms is the Hellinger map, which damps
  bursty words/visual words (Perronnin et al., ECCV 2010)."""
  if power == 1.0:
    return x
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    return (np.sign(x) * np.abs(x) ** power).astype(np.float32)


# Without standardisation, inputs beyond this size saturate every activation of the encoders.
UNSCALED_LIMIT = 1e8


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Per modality: signed power map, then (x - mean) / std with training-split statistics."""

  power: dict[str, float]
  mean: dict[str, np.ndarray]
  std: dict[str, np.ndarray]
  # The config key each modality's power came from ("data.power" or "data.powers.<modality>"),
  # for the message when the power map makes data non-finite.
  power_key: dict[str, str] = dataclasses.field(default_factory=dict)

  @classmethod
  def fit(cls, split: data.Split, *, standardize: bool, power: float, powers) -> Normalizer:
    keys = {m: f"data.powers.{m}" if m in powers else "data.power" for m in split.modalities}
    powers = {m: float(powers.get(m, power)) for m in split.modalities}
    mean, std = {}, {}
    for m, x in split.features.items():
      _finite(x, m, None, "train")
      x = _finite(signed_power(x, powers[m]), m, f"{keys[m]}={powers[m]:g}", "train")
      if standardize:
        # In float64: squares of float32 features beyond ~1e19 overflow float32, and the
        # statistics then turn every such feature into noise without an error.
        wide = x.astype(np.float64)
        s = wide.std(axis=0)
        # Constant features (common in BoVW histograms) would divide by zero; "constant" is
        # relative to the feature's magnitude, so features far from 1 in scale are judged alike.
        scale = np.abs(wide).max(axis=0)
        mean[m], std[m] = wide.mean(axis=0), np.where(s > 1e-8 * scale, s, 1.0)
      else:
        largest = float(np.abs(x).max(initial=0.0))
        if largest > UNSCALED_LIMIT:
          raise DataError(
            f"modality {m!r} has training features as large as {largest:.3g} and "
            "data.standardize is off: the network would see them unscaled; set "
            "data.standardize=true or rescale the features"
          )
        mean[m], std[m] = np.zeros(x.shape[1]), np.ones(x.shape[1])
      mean[m], std[m] = mean[m].astype(np.float32), std[m].astype(np.float32)
    return cls(powers, mean, std, keys)

  def transform(self, modality: str, x: np.ndarray, where: str = "input") -> np.ndarray:
    """[N, d] raw features of `modality` -> the network's input; DataError when non-finite."""
    if modality not in self.mean:
      raise DataError(f"unknown modality {modality!r}; the model has {', '.join(self.mean)}")
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != self.mean[modality].shape[0]:
      raise DataError(
        f"{modality} features must be [N, {self.mean[modality].shape[0]}], got {x.shape}"
      )
    p = self.power[modality]
    _finite(x, modality, None, where)
    key = self.power_key.get(modality, "data.power")
    x = _finite(signed_power(x, p), modality, f"{key}={p:g}", where)
    out = (x - self.mean[modality]) / self.std[modality]
    return _finite(out.astype(np.float32), modality, "standardisation", where)

  def __call__(self, split: data.Split, where: str = "split") -> data.Split:
    features = {m: self.transform(m, x, where) for m, x in split.features.items()}
    return dataclasses.replace(split, features=features)

  def save(self, path: str) -> None:
    arrays = {}
    for m in self.mean:
      arrays[f"mean/{m}"], arrays[f"std/{m}"] = self.mean[m], self.std[m]
      arrays[f"power/{m}"] = np.float64(self.power[m])
      arrays[f"power_key/{m}"] = np.str_(self.power_key.get(m, "data.power"))
    with atomic.replacing(path, suffix=".npz") as tmp:
      np.savez(tmp, **arrays)

  @classmethod
  def load(cls, path: str) -> Normalizer:
    with np.load(path) as f:
      names = [k.split("/", 1)[1] for k in f.files if k.startswith("mean/")]
      return cls(
        {m: float(f[f"power/{m}"]) for m in names},
        {m: f[f"mean/{m}"] for m in names},
        {m: f[f"std/{m}"] for m in names},
        # Absent from transforms saved before the key was recorded.
        {m: str(f[f"power_key/{m}"]) for m in names if f"power_key/{m}" in f.files},
      )


def _finite(x: np.ndarray, modality: str, step: str | None, where: str) -> np.ndarray:
  """`x` if every value is finite; else a DataError naming the transform `step` that made it
  non-finite (None: `x` is the untransformed input, which is then what the message names)."""
  bad = ~np.isfinite(x)
  if bad.any():
    rows, cols = np.nonzero(bad)
    if step is None:
      raise DataError(
        f"{int(bad.sum())} value(s) of modality {modality!r} in the {where} data are non-finite "
        f"before any transform (first: row {rows[0]}, feature {cols[0]}); fix the input"
      )
    if step.startswith("data.power"):
      key = step.split("=", 1)[0]
      hint = f"a negative power of a zero feature is the usual cause: choose another {key}"
    else:
      hint = "the features overflow float32: rescale them"
    raise DataError(
      f"the input transform {step} made {int(bad.sum())} value(s) of modality {modality!r} "
      f"non-finite in the {where} data (first: row {rows[0]}, feature {cols[0]}); {hint}"
    )
  return x


@dataclasses.dataclass(frozen=True)
class DataSource:
  """The data a config's `data` section names, and how its features become a network's inputs;
  read from the config once (`of`)."""

  name: str
  data_dir: str | None  # None: no folder needed (an embedded dataset) or given
  labels: bool  # False drops the class labels: instance-level retrieval
  options: data.Options  # how raw items become features
  validation: str  # the validation protocol (`data.validation`)
  standardize: bool
  power: float
  powers: dict[str, float]

  @classmethod
  def of(cls, config) -> DataSource:
    d = config.data
    return cls(
      name=d.name,
      data_dir=data.resolve_data_dir(d.data_dir or None),
      labels=bool(d.labels),
      options=data.Options(
        extractors=dict(d.extractors), bad_input=d.bad_input, batch_size=int(d.extract_batch)
      ),
      validation=d.validation,
      standardize=bool(d.standardize),
      power=float(d.power),
      powers={m: float(p) for m, p in d.powers.items()},
    )

  def load(self, splits=data.SPLITS) -> tuple[dict[str, data.Split], list[data.Problem]]:
    """The named splits (labels dropped when `labels` is off; train and validation as the
    validation protocol draws them) and the raw items skipped or converted when the dataset was
    prepared: one look at the source for all of them."""
    prepared = data.prepare(self.name, self.data_dir, self.options)
    out = {name: prepared.split(name) for name in splits}
    if self.validation == "novel" and {"train", "validation"} & set(splits):
      both = {n: out[n] if n in out else prepared.split(n) for n in ("train", "validation")}
      both["train"], both["validation"] = data.splits.move_near_duplicates(
        both["train"], both["validation"], where=f"{self.name} (data.validation=novel)"
      )
      out.update({name: both[name] for name in out if name in both})
    if not self.labels:
      out = {
        name: dataclasses.replace(split, label=None, class_names=())
        if split.label is not None
        else split
        for name, split in out.items()
      }
    return out, prepared.problems()

  def fit(self, train: data.Split) -> Normalizer:
    """The input transform of this data, fitted on the training split."""
    return Normalizer.fit(train, standardize=self.standardize, power=self.power, powers=self.powers)


def spec_of(split: data.Split) -> DataSpec:
  """The data spec (modalities, widths, classes) of a split."""
  return DataSpec(
    modalities=split.modalities,
    dims=tuple(int(x.shape[1]) for x in split.features.values()),
    num_classes=0 if split.label is None else int(split.label.shape[1]),
    class_names=tuple(split.class_names),
  )
