"""mscross: supervised cross-modal retrieval with adversarial training in JAX/Flax."""

__version__ = "0.2.0"


def load(workdir, member=None):
  """The best-on-validation model of a training workdir (population member `member`, default
  0), or with `member="ensemble"`, or given several workdirs, every member as one model; see
  `mscross.retrieval.evaluate.load`."""
  # Imported on use: `import mscross` stays cheap for code that only needs a submodule.
  from mscross.retrieval import evaluate

  return evaluate.load(workdir, member)
