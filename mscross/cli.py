"""What train.py and eval.py share: logging set-up and turning errors into one line."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable

from absl import flags
from absl import logging as absl_logging

from mscross.errors import MscrossError

VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks and debug logging.")


def run(fn: Callable[[], int | None]) -> int:
  """Calls `fn`; a MscrossError becomes `error: <message>` on stderr and exit status 2."""
  verbose = VERBOSE.value
  logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
  logging.getLogger("mscross").setLevel(logging.DEBUG if verbose else logging.INFO)
  # Orbax and JAX log through absl at INFO/WARNING about things that are not the user's concern
  # (no TPU on a CPU machine, a read-only checkpoint directory during eval).
  absl_logging.set_verbosity(absl_logging.DEBUG if verbose else absl_logging.ERROR)
  try:
    return fn() or 0
  except MscrossError as e:
    if VERBOSE.value:
      traceback.print_exc()
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(
      "interrupted: the latest state is saved; rerun the same command to resume", file=sys.stderr
    )
    return 130
