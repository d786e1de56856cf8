"""What train.py and eval.py share: logging set-up and turning errors into one line."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from mscross.errors import MscrossError

VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks and debug logging.")
COMPILATION_CACHE = flags.DEFINE_bool(
  "compilation_cache",
  True,
  "Keep compiled and traced programs on disk for the next run (JAX's cache and mscross's).",
)


class _JsonOrPythonConfigParser(flags.ArgumentParser):
  """config_flags' parser of config files, wrapped so that it also reads a resolved config
  saved as JSON (a workdir's config.json, tune.py's best_config.json)."""

  def __init__(self, python_parser):
    self._python = python_parser

  def parse(self, path):
    if isinstance(path, str) and path.split(":", 1)[0].endswith(".json"):
      from mscross import config as config_lib

      config = config_lib.load_config_file(path)
      config.lock()
      return config
    return self._python.parse(path)

  def flag_type(self):
    return self._python.flag_type()


def define_config_flag(default: str):
  """`config_flags.DEFINE_config_file("config", default, lock_config=True)` that also takes a
  `.json` config, and where a bad `--config.*` override (which config_flags reads from sys.argv
  right here) is one line on stderr and exit status 2 instead of a traceback."""
  try:
    holder = config_flags.DEFINE_config_file(
      "config", default, "Config file (.py with get_config, or a saved .json).", lock_config=True
    )
    flag = flags.FLAGS["config"]
    flag.parser = _JsonOrPythonConfigParser(flag.parser)
    return holder
  except Exception as e:  # noqa: BLE001 - config_flags raises whatever the config file raises
    _bad_command_line(_config_message(sys.argv, e))


def enable_compilation_cache(enabled: bool) -> str | None:
  """JAX's persistent compilation cache under the mscross cache directory: a second run of the
  same program shape (another seed, another learning rate) skips compiling it again. Returns
  the folder for traced programs (`train_and_evaluate(..., program_cache=)`), None when off."""
  if not enabled:
    return None
  import jax

  from mscross import caches

  jax.config.update("jax_compilation_cache_dir", str(caches.jax_dir()))
  # Every program counts: the small ones are what a run recompiles most.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return str(caches.programs())


def _config_message(argv, e: Exception) -> str:
  overrides = [a for a in argv[1:] if a.startswith("--config")]
  from mscross import config as config_lib
  from mscross.errors import ConfigError

  for override in overrides:
    key = override.split("=", 1)[0].removeprefix("--config").lstrip(".")
    try:
      config_lib.check_renamed([key], override.split("=", 1)[0])
    except ConfigError as renamed:
      return str(renamed)
  detail = str(e).strip("\"'") or type(e).__name__
  return f"cannot apply {' '.join(overrides) or 'the config file'}: {type(e).__name__}: {detail}"


def _bad_command_line(message: str):
  print(f"error: {message.splitlines()[0] if message else 'bad command line'}", file=sys.stderr)
  print(
    "       (--helpfull lists the flags; --config.* keys are those of the config file)",
    file=sys.stderr,
  )
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run(main, flags_parser=parse_flags)`: a bad flag, config file or `--config.*` override
  (an unknown key, a value of the wrong type) is one line on stderr and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _bad_command_line(str(e))
  except Exception as e:  # noqa: BLE001 - config_flags raises whatever the config file raises
    _bad_command_line(_config_message(argv, e))


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
