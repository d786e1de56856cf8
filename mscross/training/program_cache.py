"""Traced training programs kept on disk, so a second run of the same shape skips tracing.

JAX's persistent compilation cache skips compiling a program seen before, but every run still
traces and lowers it first: for the training loop of a small preset on a CPU, about a second of
the few seconds before the first step. `exported` keeps the loop as a serialized `jax.export`
artefact (StableHLO) instead, keyed by everything that shapes the program: the mscross source,
the jax version and backend, the config minus the values the program takes as inputs (seeds,
traced hyperparameters, step counts, cadences), the data spec, and the shapes, dtypes, tree
structure and shardings of the arguments. A later run with the same key loads the artefact
(milliseconds) and compiles it, which the compilation cache then answers. A plan with a loss term
registered outside the package has no key (`plan._program_key`): its code is not in the digest.

The cache lives beside JAX's (`mscross.caches.programs()`), where train.py and tune.py ask for
it; a caller that names no directory, as in library use, keeps nothing and traces as usual.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import jax

from mscross import atomic

log = logging.getLogger(__name__)


@functools.cache
def source_digest() -> str:
  """A hash of every module of the package: any change of code invalidates every artefact."""
  h = hashlib.sha256()
  root = Path(__file__).resolve().parents[1]  # the mscross package
  for path in sorted(root.rglob("*.py")):
    h.update(str(path.relative_to(root)).encode())
    h.update(path.read_bytes())
  return h.hexdigest()


def _signature(args) -> str:
  leaves, treedef = jax.tree.flatten(args)
  parts = [str(treedef)]
  for x in leaves:
    sharding = getattr(x, "sharding", None)
    parts.append(f"{getattr(x, 'shape', ())}:{getattr(x, 'dtype', type(x))}:{sharding}")
  return "\n".join(parts)


def exported(jitted: Callable, key: str, directory: str, *args, donate_argnums=()) -> Callable:
  """A function equal to `jitted` on arguments shaped like `args`: loaded from `directory` when
  an artefact of this key and signature exists, else exported (traced once) and saved there.

  `jitted` must take and return flat lists/dicts of arrays (jax.export serializes only the
  standard containers). Falls back to `jitted` itself when the artefact cannot be written or
  read.
  """
  material = "\n".join(
    [
      key,
      source_digest(),
      jax.__version__,
      jax.default_backend(),
      str([d.device_kind for d in jax.devices()]),
      _signature(args),
    ]
  )
  path = os.path.join(directory, hashlib.sha256(material.encode()).hexdigest()[:32] + ".jaxexport")
  try:
    from jax import export as jax_export

    if os.path.exists(path):
      with open(path, "rb") as f:
        program = jax_export.deserialize(bytearray(f.read()))
    else:
      program = jax_export.export(jitted)(*args)
      os.makedirs(directory, exist_ok=True)
      atomic.write_bytes(path, program.serialize())
  except Exception as e:  # noqa: BLE001 - a cache must never stop a run: trace as usual
    log.debug("program cache unavailable (%s); tracing", e)
    return jitted
  return jax.jit(program.call, donate_argnums=donate_argnums)
