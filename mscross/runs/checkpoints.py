"""Orbax checkpoints of the train state: the latest ones (for resuming) and the best one on
validation (for evaluation), each with a small JSON record beside it.

Layout under the workdir::

    checkpoints/latest/<step>/   the last `keep` saves; a rerun of train.py resumes from these
    checkpoints/best/<step>/     the state with the best validation score so far

Restoring walks the saved steps newest first and skips one that cannot be read (a save cut off by
a crash, a damaged file), so one bad save costs at most `checkpoint_every` steps.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np

from mscross.errors import CheckpointError
from mscross.methods import models
from mscross.runs import layout

log = logging.getLogger(__name__)


def _ocp():
  # Imported on first use: Orbax takes a fifth of a second to import, and a fresh run has
  # nothing to restore before its first step.
  import orbax.checkpoint as ocp

  return ocp


class _Expected(logging.Filter):
  """Drops the checkpoint library's warning that a directory opened read-only is read-only:
  `mscross.load` and eval.py ask for exactly that, and a user's script would see it on every
  load. Every other warning still shows."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Given directory is read only")


def _manager(directory: str, keep: int, read_only: bool):
  ocp = _ocp()
  opts = ocp.CheckpointManagerOptions(
    preservation_policy=ocp.checkpoint_managers.LatestN(keep),
    create=not read_only,
    read_only=read_only,
    # A read-only manager saves nothing; said explicitly, the library has nothing to correct.
    save_interval_steps=0 if read_only else 1,
    # Synchronous saves: the train state is donated to the next step, so its buffers must be on
    # the host before training continues; these states are small.
    enable_async_checkpointing=False,
  )
  # Handlers named up front: reading a step's metadata then needs no guess (and no warning).
  handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  absl_logger, expected = logging.getLogger("absl"), _Expected()
  absl_logger.addFilter(expected)
  try:
    return ocp.CheckpointManager(os.path.abspath(directory), options=opts, item_handlers=handlers)
  finally:
    absl_logger.removeFilter(expected)


class CheckpointStore:
  """The `latest` and `best` checkpoint managers of one workdir."""

  def __init__(self, workdir: str, *, keep: int = 2, read_only: bool = False):
    root = layout.path(workdir, layout.CHECKPOINTS)
    if read_only and not os.path.isdir(root):
      raise CheckpointError(f"no checkpoints in {workdir!r}: run train.py with this workdir first")
    self._dirs = {"latest": os.path.join(root, "latest"), "best": os.path.join(root, "best")}
    self._keep = {"latest": keep, "best": 1}
    self._read_only = read_only
    self._managers = {}

  def _get(self, which: str):
    if which not in self._managers:
      self._managers[which] = _manager(self._dirs[which], self._keep[which], self._read_only)
    return self._managers[which]

  @property
  def latest(self):
    return self._get("latest")

  @property
  def best(self):
    return self._get("best")

  def _empty(self, which: str) -> bool:
    folder = self._dirs[which]
    return which not in self._managers and not (os.path.isdir(folder) and os.listdir(folder))

  def close(self) -> None:
    for mngr in self._managers.values():
      mngr.close()
    self._managers = {}

  def __enter__(self) -> CheckpointStore:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  @staticmethod
  def _save(mngr, step: int, state: Any, meta: dict) -> None:
    ocp = _ocp()
    mngr.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True,
    )
    mngr.wait_until_finished()

  def save_latest(self, step: int, state: Any, meta: dict) -> None:
    if step in self.latest.all_steps():
      return
    self._save(self.latest, step, state, meta)

  def save_best(self, step: int, state: Any, meta: dict) -> None:
    for old in self.best.all_steps():
      if old == step:
        return
    self._save(self.best, step, state, meta)

  @staticmethod
  def _restore(mngr, target: Any, which: str):
    ocp = _ocp()
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    want = _shapes(target)
    errors = []
    for step in steps:
      stored = _stored_shapes(mngr, step)
      if stored is not None and stored != want:
        # Checked before reading: a restore of mismatched arrays fails deep in Orbax, noisily.
        # An older save may still match (this one damaged): try it before giving up.
        errors.append((step, CheckpointError(_mismatch(which, step, stored, want))))
        continue
      try:
        restored = mngr.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
          ),
        )
      except Exception as e:  # noqa: BLE001 - any failure to read means "try the previous one"
        errors.append((step, e))
        log.warning("checkpoint %s/%d cannot be restored (%s); trying an older one", which, step, e)
        continue
      _check_structure(restored.state, target, which, step)
      return step, restored.state, dict(restored.meta)
    mismatches = [e for _, e in errors if isinstance(e, CheckpointError)]
    if len(mismatches) == len(errors):
      raise mismatches[0]  # every save is of another architecture: say so in our words
    step, err = errors[0]
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    raise CheckpointError(
      f"no {which} checkpoint could be restored (newest: step {step}: {msg}); "
      "was it written by a different model configuration?"
    )

  def restore_latest(self, target: Any):
    """(step, state, meta) of the newest readable `latest` checkpoint, or None if there is none."""
    return None if self._empty("latest") else self._restore(self.latest, target, "latest")

  def restore_best(self, target: Any):
    """(step, state, meta) of the best-on-validation checkpoint, or None if there is none."""
    return None if self._empty("best") else self._restore(self.best, target, "best")


def _check_structure(restored: Any, target: Any, which: str, step: int) -> None:
  got = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), restored)
  want = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), target)
  if got != want:
    raise CheckpointError(
      f"{which} checkpoint at step {step} does not match the model built from the config "
      "(different layer sizes or dataset?)"
    )


def _path_name(path) -> str:
  return ".".join(str(_key(k)) for k in path)


def _key(k):
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return k


def _shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_name(path): tuple(x.shape) for path, x in leaves}


def _stored_shapes(mngr, step: int) -> dict[str, tuple] | None:
  """{leaf path: shape} of a saved state, from its metadata alone (None if unreadable: the
  restore then tries, and falls back as for any damaged save)."""
  try:
    meta = mngr.item_metadata(step)["state"]
    tree = getattr(meta, "item_metadata", meta)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_name(path): tuple(x.shape) for path, x in leaves}
  except Exception:  # noqa: BLE001 - any unreadable metadata means "let the restore decide"
    return None


def _mismatch(which: str, step: int, stored: dict, want: dict) -> str:
  missing = sorted(set(want) - set(stored))
  extra = sorted(set(stored) - set(want))
  differ = sorted(k for k in set(want) & set(stored) if want[k] != stored[k])
  if differ:
    k = differ[0]
    detail = f"{k} has shape {stored[k]} in the checkpoint, {want[k]} in the model"
  elif missing:
    detail = f"the checkpoint lacks {missing[0]}"
  else:
    detail = f"the checkpoint has {extra[0]}, which the model lacks"
  return (
    f"{which} checkpoint at step {step} does not match the model built from the config "
    f"({detail}): was it written with other layer sizes, population size or dataset?"
  )


def restore_best_generator(workdir: str, net, spec, size: int) -> tuple[int, Any, dict]:
  """(step, generator params [size, ...], meta) of the workdir's best-on-validation checkpoint:
  what inference needs of a run, no optimiser and no discriminator."""
  one = jax.eval_shape(lambda: models.init_generator(net, spec))
  target = {"gen": jax.tree.map(lambda s: np.zeros((size, *s.shape), s.dtype), one)}
  with CheckpointStore(workdir, read_only=True) as store:
    restored = store.restore_best(target)
  if restored is None:
    raise CheckpointError(f"no best checkpoint in {workdir!r}: training has not evaluated yet")
  step, tree, meta = restored
  return step, tree["gen"], meta
