"""The project's own error types.

Everything a user can get wrong (data, config, checkpoints) raises a subclass of `MscrossError`
with a one-line message; the command-line entry points print that line and exit non-zero.
"""

import reprlib


class MscrossError(Exception):
  """Base class of every error mscross raises on bad input."""


class DataError(MscrossError):
  """A data file is missing, malformed or inconsistent."""


class ConfigError(MscrossError):
  """A configuration key or value is unknown or invalid."""


class CheckpointError(MscrossError):
  """A checkpoint is missing, corrupted or belongs to another architecture."""


def one_line(exc: BaseException) -> str:
  """The exception text squeezed onto one line, for embedding in a one-line error message."""
  return " ".join(str(exc).split()) or type(exc).__name__


def _short_repr(limit: int) -> reprlib.Repr:
  r = reprlib.Repr()
  r.maxstring = r.maxother = max(limit, 8)
  r.maxlevel, r.maxtuple, r.maxlist, r.maxdict, r.maxset = 2, 4, 4, 4, 4
  return r


def shown(value, limit: int = 60) -> str:
  """A repr of an untrusted `value` for an error message, in bounded time and length: strings
  cut to about `limit` characters, containers to a few items, control characters escaped."""
  try:
    text = _short_repr(limit).repr(value)
  except Exception:  # noqa: BLE001 - a repr that fails (an integer too long to print) says its type
    text = f"<{type(value).__name__}>"
  return printable(text, 2 * limit + 20)


def printable(text: str, limit: int = 400) -> str:
  """`text` on one line, its control and other non-printable characters escaped (an ANSI
  escape from a file never reaches the terminal), cut to `limit` characters."""
  out = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text[: limit + 1])
  return out if len(out) <= limit else out[: limit - 1] + "…"
