"""Traced programs kept on disk: a second loop of the same key loads the artefact instead of
tracing, and computes exactly what the traced loop computes."""

import jax
import numpy as np
from helpers import flat, program_of, small_config, spec_of, synthetic_split

from mscross.training import loop


def _loop(config, key, split, cache_dir):
  prog = program_of(config, spec_of(), len(split))
  # The same loop under another program key stands for another config's program.
  train_loop = loop.TrainLoop(
    prog.step,
    prog.mesh,
    len(split),
    8,
    metric_names=prog.metric_names,
    program_key=key,
    cache_dir=cache_dir,
  )
  return train_loop, loop.replicate(prog.init_state(), prog.mesh)


def test_a_second_run_loads_the_program_and_trains_identically(tmp_path, monkeypatch):
  config = small_config()
  config.population.size = 2
  split = synthetic_split(40, seed=1)
  # Without a cache directory: traced as usual (the reference).
  loop, state = _loop(config, "key", split, None)
  reference, ref_metrics = loop(state, loop.data(split), 7)

  loop, state = _loop(config, "key", split, str(tmp_path))
  first, _ = loop(state, loop.data(split), 7)
  saved = list(tmp_path.iterdir())
  assert len(saved) == 1 and saved[0].suffix == ".jaxexport"

  # The second run must not trace: exporting again would mean the artefact was not used.
  def no_export(*args, **kwargs):
    raise AssertionError("traced again")

  monkeypatch.setattr(jax.export, "export", no_export)
  loop, state = _loop(config, "key", split, str(tmp_path))
  second, metrics = loop(state, loop.data(split), 7)
  for got in (first, second):
    np.testing.assert_array_equal(flat(got.params), flat(reference.params))
  for name, value in ref_metrics.items():
    np.testing.assert_array_equal(np.asarray(metrics[name]), np.asarray(value), err_msg=name)

  # Another key (another config) is another artefact, never the first one's program.
  monkeypatch.undo()
  loop, state = _loop(config, "another key", split, str(tmp_path))
  loop(state, loop.data(split), 1)
  assert len(list(tmp_path.iterdir())) == 2
