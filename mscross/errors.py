"""The project's own error types.

Everything a user can get wrong (data, config, checkpoints) raises a subclass of `MscrossError`
with a one-line message; the command-line entry points print that line and exit non-zero.
"""


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
