"""Trained models by workdir, as `mscross.load` and eval.py give them: one population member, or
an ensemble of every member of one or several runs (`mscross.retrieval.ensemble`), and their
scores, embeddings, report and top-k files on a split."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from mscross import data, metrics
from mscross.data import export
from mscross.errors import ConfigError, DataError
from mscross.retrieval import index as index_lib
from mscross.retrieval.ensemble import Ensemble
from mscross.retrieval.trained import TrainedModel, Workdir
from mscross.runs import layout

ENSEMBLE = "ensemble"


def load(workdir: str | Sequence[str], member: int | str | None = None) -> TrainedModel | Ensemble:
  """The best-on-validation model of `workdir`: population member `member` (default 0), or with
  `member="ensemble"` every member as one model. Several workdirs load as one ensemble of every
  member of each."""
  paths = [workdir] if isinstance(workdir, str | os.PathLike) else list(workdir)
  if not paths:
    raise ConfigError("mscross.load needs a workdir")
  if len(paths) > 1 and member not in (None, ENSEMBLE):
    raise ConfigError(
      f"member={member!r} picks a member of one workdir; several workdirs load as one "
      f"ensemble (member={ENSEMBLE!r})"
    )
  if len(paths) == 1 and member != ENSEMBLE:
    if isinstance(member, str):
      raise ConfigError(f"member must be a member's number or {ENSEMBLE!r}, got {member!r}")
    return Workdir(str(paths[0])).member(member or 0)
  return _every_member([Workdir(str(p)) for p in paths])


def evaluate_workdir(
  path: str | Sequence[str],
  *,
  split: str = "test",
  member: int | None = None,
  ensemble: bool = False,
  export_dir: str | None = None,
  report: bool = False,
  topk: int | None = None,
) -> tuple[dict, list[str]]:
  """What `eval.py` does: the metrics of the best checkpoint on `split`, for one member (or
  every member when `member` is None and the population has several), or with `ensemble` of
  every member of the workdir(s) `path` as one model, plus the optional embedding export,
  report and top-k files (written into the first workdir). Returns (result, notes)."""
  paths = [path] if isinstance(path, str) else list(path)
  if len(paths) > 1 and not ensemble:
    raise ConfigError("several workdirs are evaluated as one model: add --ensemble")
  if ensemble and member is not None:
    raise ConfigError("--member picks one model; --ensemble evaluates every member as one")
  workdirs = [Workdir(p) for p in paths]
  notes = [_training_note(wd) for wd in workdirs if wd.in_training]
  first = workdirs[0]
  header = {"method": first.config.method, "dataset": first.config.data.name, "split": split}
  if ensemble:
    model = _every_member(workdirs)
    part, embeddings = model.split_embeddings(split)
    scores = first.evaluation.metrics(_stacked(part, embeddings), part)
    members = [
      {"workdir": m.workdir.path, "member": m.member, "step": m.step} for m in model.members
    ]
    result = {**header, "ensemble": members, **scores}
    title = f"an ensemble of {len(model)} models"
    suffix, game = "_ensemble", None
  else:
    part = first.split(split)
    chosen = [member] if member is not None else list(range(first.size))
    results = []
    for m in chosen:
      one = first.member(m)
      results.append({**header, "member": m, "step": one.step, **one.metrics(part)})
    if len(results) == 1:
      result = results[0]
    else:
      numeric = [{k: v for k, v in r.items() if isinstance(v, float)} for r in results]
      mean, std = metrics.mean_and_std(numeric)
      result = {**header, "members": results, "mean": mean, "std": std}
    model = first.member(chosen[0])
    scores = {k: v for k, v in results[0].items() if k not in (*header, "member", "step")}
    title = f"best checkpoint of member {model.member}, step {model.step}"
    suffix = "" if first.size == 1 else f"_member{model.member}"
    embeddings = model.embed(part) if export_dir or report or topk else None
    game = layout.game_state(first.path, model.member, model.step)
  if export_dir:
    notes.append(f"embeddings: {export.write_embeddings(export_dir, embeddings, part)}")
  if report:
    from mscross.retrieval import report as report_lib

    out = report_lib.write_report(
      os.path.join(first.path, f"report_{split}{suffix}"),
      title=f"{first.config.method} on {first.config.data.name}, {split} split ({title})",
      split=part,
      embeddings=embeddings,
      summary=scores,
      block_size=first.evaluation.block_size,
      raw_items=_raw_items(first.config, notes),
      game=game,
    )
    notes.append(f"report: {out}")
  if topk:
    out = os.path.join(first.path, f"topk_{split}{suffix}")
    index_lib.write_topk_files(out, embeddings, part.ids, topk)
    notes.append(f"top-{topk} neighbours: {out}")
  return result, notes


def _every_member(workdirs: Sequence[Workdir]) -> Ensemble:
  return Ensemble([wd.member(m) for wd in workdirs for m in range(wd.size)])


def _stacked(split: data.Split, embeddings: dict) -> np.ndarray:
  return np.stack([embeddings[k] for k in split.modalities])


def _training_note(wd: Workdir) -> str:
  holder = f"process {wd.trainer_pid}" if wd.trainer_pid else "another process"
  return (
    f"{wd.path} is being trained by {holder}; evaluating its newest complete best checkpoint "
    f"(step {wd.step})"
  )


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
