"""`features`: the user's own row-paired features, in plain NumPy or MATLAB files.

Layout of the data directory itself (train and test required, validation optional):

  manifest.json or manifest.toml   optional: {"modalities": [...], "class_names": [...]}
  train/                           one folder per split, holding
    <modality>.npy                   features [N, d] of one modality, one file per modality,
    <modality>.mat                   or MATLAB v5 with a variable named <modality> (or only one)
    labels.npy | labels.mat          optional labels
  train.npz                        or, instead of the folder, one .npz with arrays named by
                                   modality plus optionally "labels"
  validation/ | validation.npz     optional
  test/ | test.npz

Row i of every array of a split describes example i. For instance

  my_data/manifest.json      {"modalities": ["image", "text"], "class_names": ["cat", "dog"]}
  my_data/train/image.npy    float32 (5000, 2048)
  my_data/train/text.npy     float32 (5000, 300)
  my_data/train/labels.npy   int64 (5000,), values 0 and 1
  my_data/test.npz           arrays image (1000, 2048), text (1000, 300), labels (1000,)

is `load_split("features", "train", "my_data")`, with 10% of train carved as validation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from mscross.data import array_files, base, checks, labels
from mscross.data.splits import SPLITS, Split, carve_validation, class_name_range, row_ids
from mscross.errors import DataError

VALIDATION_FRACTION = 0.1
LABELS = "labels"
REQUIRED_SPLITS = ("train", "test")
# Names a validation split often goes by elsewhere; found alone, they are a naming mistake.
OTHER_VALIDATION_NAMES = ("valid", "val", "dev")


@dataclasses.dataclass(frozen=True)
class _SplitSource:
  """A split's folder (with its array files by stem) or its .npz file."""

  path: Path
  files: dict[str, Path]

  def load(self) -> dict[str, tuple[np.ndarray, str]]:
    """Every array of the split by name, with where it came from (for messages)."""
    if self.path.suffix == ".npz":
      arrays = array_files.load_npz(self.path)
      return {name: (array, f"{self.path} [{name}]") for name, array in arrays.items()}
    return {stem: array_files.load_array(path) for stem, path in self.files.items()}


def _split_source(folder: Path, split: str) -> _SplitSource | None:
  directory, archive = folder / split, folder / f"{split}.npz"
  if directory.is_dir() and archive.exists():
    raise DataError(f"{folder}: both {split}/ and {split}.npz; keep one")
  if archive.is_file():
    return _SplitSource(archive, {})
  if not directory.is_dir():
    return None
  files: dict[str, Path] = {}
  for path in sorted(directory.iterdir()):
    if path.suffix not in array_files.ARRAY_SUFFIXES or not path.is_file():
      continue
    if path.stem in files:
      raise DataError(f"{directory}: both {files[path.stem].name} and {path.name}; keep one")
    files[path.stem] = path
  return _SplitSource(directory, files)


def _split_sources(folder: Path) -> dict[str, _SplitSource]:
  """The split sources present; DataError if train or test is missing or validation misnamed."""
  if not folder.is_dir():
    raise DataError(f"{folder}: not a folder (expected train/ and test/ or train.npz, test.npz)")
  sources = {split: _split_source(folder, split) for split in SPLITS}
  for split in REQUIRED_SPLITS:
    if sources[split] is None:
      raise DataError(
        f"{folder}: no {split} split; expected a folder {split}/ holding <modality>.npy or "
        f"<modality>.mat per modality (and optionally labels.npy), or a file {split}.npz"
      )
  if sources["validation"] is None:
    for name in OTHER_VALIDATION_NAMES:
      for candidate in (folder / name, folder / f"{name}.npz"):
        if candidate.exists():
          raise DataError(
            f"{candidate}: a validation split must be named validation/ or validation.npz"
          )
  return {split: source for split, source in sources.items() if source is not None}


class UserFeatures(base.PairedBuilder, skip_registration=True):
  """The user's own row-paired features of K >= 2 modalities, labels optional.

  Files, in the data directory itself, for each split train, test and optionally validation:
  EITHER a folder <split>/ holding <modality>.npy or <modality>.mat (the variable named
  <modality>, or the file's only variable) per modality and optionally labels.npy or
  labels.mat, OR one file <split>.npz holding arrays named by modality and optionally `labels`.
  Features are real-valued [N, d_m] arrays, d_m the same in every split.

  Optional manifest.json or manifest.toml (TOML needs Python 3.11+), both keys optional:
    {"modalities": ["image", "text"], "class_names": ["cat", "dog"]}
  `modalities` picks and orders the modalities (other arrays are ignored); without it the
  modalities are all arrays but labels, in sorted name order, the same in every split.
  Modality names use letters, digits and underscores, and are not "label" or "id".

  Labels, the same form in every split: class ids (a vector or [N, 1] of integers, 0-based;
  C = len(class_names), else the largest id + 1, at most 10 x the number of labelled examples
  and 65,536) or multi-hot 0/1 rows [N, C] (C = len(class_names), else the width). With no
  labels file in any split the dataset is unlabelled (label None, no class names); labels in
  some splits only are an error. Classes are named by `class_names`, else "0".."C-1".

  Without a validation split, a seeded (seed 0) 10% of train becomes validation: class-
  stratified for single-label data, plain random otherwise. Ids are the example's row within
  its split's files.
  """

  NAME = "features"
  SOURCE_SUBDIR = ""
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Pass as data_dir a folder with train/ and test/ (optionally validation/), each holding "
    "<modality>.npy or .mat per modality and optionally labels.npy, or train.npz and test.npz "
    "with arrays named by modality and 'labels'; optionally manifest.json."
  )

  @classmethod
  def source_files(cls, source_dir: Path | None, config_name: str | None) -> list[Path]:
    del config_name
    folder = Path(source_dir)
    sources = _split_sources(folder)
    manifest = array_files.find_manifest(folder)
    paths = [manifest] if manifest is not None else []
    for source in sources.values():
      paths += list(source.files.values()) if source.files else [source.path]
    return paths

  def read_source(self) -> dict[str, Split]:
    folder = self._source_dir
    manifest = array_files.read_manifest(folder)
    sources = _split_sources(folder)
    arrays = {split: source.load() for split, source in sources.items()}
    label_arrays = {split: found.pop(LABELS, None) for split, found in arrays.items()}
    modalities = manifest.modalities
    if modalities is None:
      modalities = base.check_modalities(sorted(arrays["train"]), str(sources["train"].path))
    named_in = f" named in {manifest.path}" if manifest.path is not None else ""
    for split, found in arrays.items():
      missing = [name for name in modalities if name not in found]
      if missing:
        raise DataError(
          f"{sources[split].path}: no array for modality '{missing[0]}'{named_in} "
          f"(found: {', '.join(found) or 'none'})"
        )
      extra = sorted(set(found) - set(modalities))
      if extra and manifest.modalities is None:
        raise DataError(
          f"{sources[split].path}: array '{extra[0]}' is not in {sources['train'].path}; "
          "every split needs the same modalities"
        )
    features = self._features(arrays, modalities)
    multi_hot = self._labels(label_arrays, features, manifest, str(folder))

    splits = {}
    for split, by_name in features.items():
      counts = {arrays[split][name][1]: len(by_name[name]) for name in modalities}
      if multi_hot is not None:
        counts[label_arrays[split][1]] = len(multi_hot[split])
      num_examples = checks.same_count(counts)
      checks.nonempty(num_examples, str(sources[split].path), split)
      class_names = () if multi_hot is None else self._class_names(manifest, multi_hot)
      splits[split] = Split(
        features=by_name,
        label=None if multi_hot is None else multi_hot[split],
        ids=row_ids(num_examples),
        class_names=class_names,
      )
    if "validation" not in splits:
      splits["train"], splits["validation"] = carve_validation(
        splits["train"], VALIDATION_FRACTION, str(sources["train"].path)
      )
    return splits

  @staticmethod
  def _features(
    arrays: dict[str, dict[str, tuple[np.ndarray, str]]], modalities: tuple[str, ...]
  ) -> dict[str, dict[str, np.ndarray]]:
    """Checked float32 features per split and modality, one width per modality."""
    features: dict[str, dict[str, np.ndarray]] = {}
    for split, found in arrays.items():
      features[split] = {}
      for name in modalities:
        array, where = found[name]
        features[split][name] = checks.features(array, where)
        train_where = arrays["train"][name][1]
        width, train_width = features[split][name].shape[1], features["train"][name].shape[1]
        if width != train_width:
          raise DataError(
            f"{where}: {width} feature columns, but {train_width} in {train_where}; a "
            "modality has one feature dimension in every split"
          )
    return features

  @staticmethod
  def _labels(
    label_arrays: dict[str, tuple[np.ndarray, str] | None],
    features: dict[str, dict[str, np.ndarray]],
    manifest: array_files.Manifest,
    folder: str,
  ) -> dict[str, np.ndarray] | None:
    """Multi-hot labels per split, or None for an unlabelled dataset."""
    with_labels = [split for split, found in label_arrays.items() if found is not None]
    without = [split for split, found in label_arrays.items() if found is None]
    if not with_labels:
      if manifest.class_names is not None:
        raise DataError(f"{manifest.path}: class_names given, but no split has labels")
      return None
    if without:
      raise DataError(
        f"labels in {', '.join(label_arrays[s][1] for s in with_labels)} but none for the "
        f"{' and '.join(without)} split; give labels for every split or for none"
      )
    counts = {split: len(next(iter(features[split].values()))) for split in features}
    return labels.to_multi_hot(
      {split: found[0] for split, found in label_arrays.items()},
      counts,
      {split: found[1] for split, found in label_arrays.items()},
      first_index=0,
      class_names=manifest.class_names,
      folder=folder,
    )

  @staticmethod
  def _class_names(manifest: array_files.Manifest, multi_hot: dict[str, np.ndarray]):
    if manifest.class_names is not None:
      return manifest.class_names
    return class_name_range(multi_hot["train"].shape[1])
