"""mscross: supervised cross-modal retrieval with adversarial training in JAX/Flax."""

__version__ = "0.2.0"


def load(workdir: str, member: int = 0):
  """The best-on-validation model of a training workdir; see `mscross.retrieval.trained`."""
  # Imported on use: `import mscross` stays cheap for code that only needs a submodule.
  from mscross.retrieval import trained

  return trained.load(workdir, member)
