"""Traced programs kept on disk: a second loop of the same key loads the artefact instead of
tracing, and computes exactly what the traced loop computes."""

import jax
import numpy as np

from mscross import parallel, program_cache, train_step
from tests.test_train_step import _split, flat, setup, small_config, spec_of


def _loop(config, key, split):
  net, disc, txs, _ = setup(config, spec_of(), size=2)
  step_fn = train_step.make_step(config, net, disc, txs, 50, axis_name=parallel.AXIS)
  mesh = parallel.make_mesh(1)
  loop = parallel.TrainLoop(step_fn, mesh, len(split), 8, program_key=key)
  state = parallel.replicate(setup(config, spec_of(), size=2)[3], mesh)
  return loop, state


def test_a_second_run_loads_the_program_and_trains_identically(tmp_path, monkeypatch):
  config = small_config()
  config.population.size = 2
  split = _split()
  # Without a cache directory: traced as usual (the reference).
  monkeypatch.setattr(program_cache, "DIRECTORY", None)
  loop, state = _loop(config, "key", split)
  reference, ref_metrics = loop(state, loop.data(split), 7)

  monkeypatch.setattr(program_cache, "DIRECTORY", str(tmp_path))
  loop, state = _loop(config, "key", split)
  first, _ = loop(state, loop.data(split), 7)
  saved = list(tmp_path.iterdir())
  assert len(saved) == 1 and saved[0].suffix == ".jaxexport"

  # The second run must not trace: exporting again would mean the artefact was not used.
  def no_export(*args, **kwargs):
    raise AssertionError("traced again")

  monkeypatch.setattr(jax.export, "export", no_export)
  loop, state = _loop(config, "key", split)
  second, metrics = loop(state, loop.data(split), 7)
  for got in (first, second):
    np.testing.assert_array_equal(flat(got.params), flat(reference.params))
  for name, value in ref_metrics.items():
    np.testing.assert_array_equal(np.asarray(metrics[name]), np.asarray(value), err_msg=name)

  # Another key (another config) is another artefact, never the first one's program.
  monkeypatch.undo()
  monkeypatch.setattr(program_cache, "DIRECTORY", str(tmp_path))
  loop, state = _loop(config, "another key", split)
  loop(state, loop.data(split), 1)
  assert len(list(tmp_path.iterdir())) == 2
