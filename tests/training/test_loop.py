"""Data parallelism: N devices and one device at the same global batch and seed train the same
model (both adversarial modes, random and all-pairs negatives, device- and host-fed batches,
populations on the data mesh);
the trainer on 8 devices writes checkpoints that one device resumes; two processes on localhost
train like one; the non-finite guard holds on every replica; bfloat16 compute.

Fake CPU devices need the device count set before JAX starts, and this pytest process has already
started JAX, so the multi-device checks run this file as a script in a subprocess
(`python tests/training/test_loop.py <command> <devices>`, with tests/ on PYTHONPATH), which
prints its measurements as JSON.
Steps on fake devices are fetched one at a time: all-gather steps dispatched back to back can
deadlock there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
  REPO,
  TINY_FLAGS,
  flat,
  free_port,
  member,
  program_of,
  small_config,
  spec_of,
  synthetic_split,
)

from mscross import config as config_lib
from mscross import data, presets
from mscross.errors import ConfigError
from mscross.training import batches, loop
from mscross.training import plan as plan_lib

N_EXAMPLES, BATCH, STEPS = 64, 16, 20
SPEC = spec_of(("image", "text"))


def loop_config(method="acmr", mode="alternating", size=1):
  """The small config of `method` (a large reg weight makes a mis-scaled reg gradient visible;
  ACMR draws random negatives), members differing in learning rate."""
  c = small_config(
    method,
    {"adv.mode": mode, "loss.reg.weight": 1e-2, "train.batch_size": BATCH, "population.size": size},
  )
  if size > 1:
    c.population.hparams = json.dumps({"optim.lr": [1e-3 * (i + 1) for i in range(size)]})
  return c


def setup(config, num_devices, feed="device"):
  config.parallel.num_devices, config.parallel.feed, config.parallel.host_steps = (
    num_devices,
    feed,
    8,
  )
  prog = program_of(config, SPEC, N_EXAMPLES)
  return prog.loop, loop.replicate(prog.init_state(), prog.mesh)


# --- run in a subprocess with fake CPU devices ------------------------------------------------

# (method, adversarial mode, devices, feed, population); each is compared with the same
# population on a mesh of one device.
CASES = [
  ("acmr", "alternating", 8, "device", 1),  # random negatives: the same draws on every device
  ("mnsgan", "alternating", 8, "device", 1),  # all-pairs negatives over the global batch
  ("mnsgan", "reversal", 8, "device", 1),
  ("mnsgan", "alternating", 4, "device", 3),  # population axis x data axis
  ("acmr", "alternating", 2, "host", 2),
]


def _train(config, split, num_devices, feed):
  train_loop, state = setup(config, num_devices, feed)
  data_ = train_loop.data(split)
  history = []
  for _ in range(STEPS):
    state, m = train_loop(state, data_, 1)
    history.append({k: np.asarray(v, np.float64).tolist() for k, v in loop.to_host(m).items()})
  return state, history


def _replicas_identical(state) -> bool:
  def same(x):
    first = np.asarray(x.addressable_shards[0].data)
    return all(np.array_equal(np.asarray(s.data), first) for s in x.addressable_shards)

  return all(same(x) for x in jax.tree.leaves(state))


def _nonfinite_guard(split):
  """A NaN in ONE device's rows at step 0: every replica skips the step and stays identical."""
  config = loop_config("mnsgan")
  train_loop, state = setup(config, 8)
  key = loop.to_host(state.data_key)[0]
  first = np.asarray(batches.batch_indices(key, 0, N_EXAMPLES, BATCH))
  image = split.features["image"].copy()
  image[int(first[BATCH - 1]), 0] = np.nan  # the last device's last row
  bad = data.Split({"image": image, "text": split.features["text"]}, split.label, split.ids, ())
  before = flat(loop.to_host(state.params))
  state, _ = train_loop(state, train_loop.data(bad), 1)
  host = loop.to_host(state)
  return {
    "skipped": int(host.skipped[0]),
    "nonfinite_run": int(host.nonfinite_run[0]),
    "params_unchanged": bool(np.array_equal(flat(host.params), before)),
    "replicas_identical": _replicas_identical(state),
  }


def _equivalence():
  split, cases, singles = synthetic_split(N_EXAMPLES, ("image", "text")), {}, {}
  for method, mode, num_devices, feed, size in CASES:
    config = loop_config(method, mode, size)
    t0 = time.perf_counter()
    if (method, mode, size) not in singles:
      singles[method, mode, size] = _train(config, split, 1, "device")
    single, h1 = singles[method, mode, size]
    multi, hn = _train(config, split, num_devices, feed)
    p1, pn = flat(loop.to_host(single.params)), flat(loop.to_host(multi.params))
    start = flat(loop.to_host(setup(config, 1)[1].params))
    cases[f"{method}-{mode}-{num_devices}-{feed}-{size}"] = {
      "param_max_abs_diff": float(np.max(np.abs(p1 - pn))),
      "moved": float(np.max(np.abs(p1 - start))),
      "metrics": {k: [[a[k] for a in h1], [b[k] for b in hn]] for k in h1[0]},
      "replicas_identical": _replicas_identical(multi),
      "steps": int(loop.to_host(multi.step)[0]),
      "seconds": time.perf_counter() - t0,
    }
  return {"cases": cases, "guard": _nonfinite_guard(split), "device_checks": _device_checks()}


def _device_checks():
  """The device-count messages, with the 8 fake devices of this process."""
  out = {}
  for name, devices, batch in (("divisible", 3, BATCH), ("too_many", 9, 18), ("all", 0, BATCH)):
    c = loop_config()
    c.parallel.num_devices, c.train.batch_size = devices, batch
    try:
      out[name] = loop.resolve_num_devices(plan_lib.resolve(c).feed)
    except ConfigError as e:
      out[name] = str(e)
  return out


def _bfloat16():
  """bf16 compute next to float32 on the same params, then 5 bf16 training steps."""
  c32, c16 = loop_config("mnsgan"), loop_config("mnsgan")
  c16.model.dtype = "bfloat16"
  prog16, prog32 = program_of(c16, SPEC, N_EXAMPLES), program_of(c32, SPEC, N_EXAMPLES)
  net16, disc16, net32 = prog16.net, prog16.disc, prog32.net
  state = member(prog16.init_state())
  split = synthetic_split(N_EXAMPLES, ("image", "text"))
  batch = {
    "inputs": {m: jnp.asarray(x[:BATCH]) for m, x in split.features.items()},
    "label": jnp.asarray(split.label[:BATCH]),
  }
  out16 = net16.apply({"params": state.params["gen"]}, batch["inputs"])
  out32 = net32.apply({"params": state.params["gen"]}, batch["inputs"])
  logits = disc16.apply({"params": state.params["disc"]}, out16["emb"])
  before = flat(state.params)
  step = jax.jit(prog16.member_step())
  finite = True
  for _ in range(5):
    state, m = step(state, batch)
    finite &= all(np.isfinite(float(v)) for v in m.values())
  leaves = [x for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim]
  return {
    "output_dtypes": sorted({str(x.dtype) for x in [*out16.values(), logits]}),
    "output_diff": {
      k: [float(jnp.max(jnp.abs(out16[k] - out32[k]))), float(jnp.max(jnp.abs(out32[k])))]
      for k in out32
    },
    "finite": bool(finite),
    "skipped": int(state.skipped),
    "moved": float(np.max(np.abs(flat(state.params) - before))),
    "state_dtypes": sorted({str(x.dtype) for x in leaves}),
  }


def tiny_trainer_config(steps=20):
  """configs/default.py with test_cli's TINY overrides (so train.py can run the same)."""
  c = presets.build("mnsgan", "digits")
  c.model.encoder_layers = (32,)
  c.model.encoder_width = 16
  c.train.steps = steps
  c.train.eval_every = 10
  c.train.checkpoint_every = 10
  return c


def _trainer(workdir):
  from mscross.retrieval import evaluate
  from mscross.training import trainer

  wd8, wd1 = os.path.join(workdir, "eight"), os.path.join(workdir, "one")
  config = tiny_trainer_config()
  config.parallel.num_devices = 8
  result = trainer.train_and_evaluate(config, wd8)
  # evaluate_workdir restores onto one device.
  restored, _ = evaluate.evaluate_workdir(wd8, split="test")
  # Resume the 8-device run's step-20 checkpoint on ONE device, 10 more steps.
  shutil.copytree(wd8, wd1)
  os.remove(os.path.join(wd1, "metrics.json"))
  config = tiny_trainer_config(steps=30)
  config.parallel.num_devices = 1
  resumed = trainer.train_and_evaluate(config, wd1)
  with open(os.path.join(wd1, "history.jsonl")) as f:
    records = [json.loads(line) for line in f]
  steps = [r["step"] for r in records if "config_change" not in r]
  changes = [r["config_change"] for r in records if "config_change" in r]
  return {
    "eight": result,
    "restored": restored,
    "resumed": resumed,
    "resumed_steps": steps,
    "changes": changes,
  }


def _main(argv):
  command, num_devices = argv[0], int(argv[1])
  jax.config.update("jax_num_cpu_devices", num_devices)
  if command == "equivalence":
    result = {**_equivalence(), "bf16": _bfloat16()}
  elif command == "trainer":
    result = _trainer(argv[2])
  else:
    raise SystemExit(f"unknown command {command!r}")
  print(json.dumps(result))


if __name__ == "__main__":
  _main(sys.argv[1:])


# --- the tests ----------------------------------------------------------------------------------

# XLA's CPU backend optimisations cost most of these tiny programs' compile time (20 s -> 7 s per
# train chunk here) and buy nothing at this size; both sides of every comparison use them alike.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _env(**extra):
  flags = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
  # The scripts import the shared test builders (tests/helpers.py).
  path = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
  env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_FLAGS": flags, "PYTHONPATH": path}
  return {**env, **extra}


def _subprocess(*args, timeout=600):
  proc = subprocess.run(
    [sys.executable, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=_env(),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _script(*args):
  proc = _subprocess(str(Path(__file__).resolve()), *args)
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def equivalence():
  return _script("equivalence", "8")


@pytest.mark.parametrize("case", ["-".join(map(str, c)) for c in CASES])
def test_data_parallel_trains_like_one_device(equivalence, case):
  r = equivalence["cases"][case]
  assert r["steps"] == STEPS
  assert r["moved"] > 1e-3  # the comparison is not vacuous: training moved the weights
  assert r["param_max_abs_diff"] < 1e-5, r["param_max_abs_diff"]
  for name, (one, many) in r["metrics"].items():
    np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("case", ["-".join(map(str, c)) for c in CASES])
def test_gradients_are_the_single_device_gradients(equivalence, case):
  # Adam hides a uniform gradient factor (it normalises by the gradient's scale), so a wrong
  # all-gather/pmean scaling would hardly show in the weights: compare the gradient norms.
  r = equivalence["cases"][case]
  for name in ("grad_norm_gen", "grad_norm_disc"):
    one, many = r["metrics"][name]
    assert np.min(one) > 0 or name == "grad_norm_disc"
    np.testing.assert_allclose(many, one, rtol=1e-5, err_msg=name)
  # The Frobenius regulariser (a parameter-only term) is part of the generator's loss here.
  assert np.min(r["metrics"]["loss_reg"][0]) > 0


def test_replicas_never_diverge(equivalence):
  assert all(r["replicas_identical"] for r in equivalence["cases"].values())


def test_nonfinite_rows_on_one_device_skip_the_step_everywhere(equivalence):
  g = equivalence["guard"]
  assert g == {
    "skipped": 1,
    "nonfinite_run": 1,
    "params_unchanged": True,
    "replicas_identical": True,
  }


@pytest.fixture(scope="module")
def eight_device_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("dp")
  return workdir, _script("trainer", "8", str(workdir))


@pytest.mark.slow
def test_trainer_checkpoint_from_eight_devices_restores_on_one(eight_device_run):
  workdir, r = eight_device_run
  with open(workdir / "eight" / "metrics.json") as f:
    on_disk = json.load(f)
  assert on_disk["test"]["avg_map"] > 0.1
  for key, value in r["eight"]["test"].items():
    assert r["restored"][key] == pytest.approx(value, abs=1e-6), key
  assert r["resumed_steps"] == [10, 20, 30]  # resumed at 20 on one device
  # Safe changes need no flag, and are recorded all the same.
  assert r["changes"] == [{"parallel.num_devices": [8, 1], "train.steps": [20, 30]}]
  assert r["resumed"]["steps"] == 30 and r["resumed"]["members"][0]["skipped_steps"] == 0


@pytest.mark.slow
def test_two_processes_train_like_eight_devices(eight_device_run, tmp_path):
  """train.py --multihost, 2 processes x 2 CPU devices on localhost (gloo collectives): the
  same history as the 8-device run, written once, by process 0."""
  workdir, r = eight_device_run
  run_dir, port = tmp_path / "run", free_port()
  tiny = list(TINY_FLAGS)
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "train.py",
        "--multihost",
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        "--config=configs/default.py",
        f"--workdir={run_dir}",
        *tiny,
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=_env(JAX_NUM_CPU_DEVICES="2"),
    )
    for i in range(2)
  ]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=600))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-3000:]
  # Only process 0 prints the result line.
  assert outs[0][0].strip().splitlines()[-1].startswith("{")
  assert not any(line.startswith("{") for line in outs[1][0].splitlines())

  def history(path):
    with open(path) as f:
      return [json.loads(line) for line in f]

  two, eight = history(run_dir / "history.jsonl"), history(workdir / "eight" / "history.jsonl")
  assert [h["step"] for h in two] == [10, 20]  # written once, not once per process
  for a, b in zip(two, eight, strict=True):
    for key in b:
      assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
  with open(run_dir / "metrics.json") as f:
    metrics = json.load(f)
  assert metrics["test"]["avg_map"] == pytest.approx(r["eight"]["test"]["avg_map"], abs=1e-4)


# --- in this process (one device) ---------------------------------------------------------------


def test_global_batch_must_divide_over_the_devices(equivalence):
  checks = equivalence["device_checks"]
  assert "not divisible by the 3 devices" in checks["divisible"]
  assert "only 8 devices" in checks["too_many"]
  assert checks["all"] == 8
  c = loop_config()
  c.parallel.num_devices = jax.device_count() + 1
  with pytest.raises(ConfigError, match="only"):
    loop.resolve_num_devices(plan_lib.resolve(c).feed)


def test_bfloat16_trains_with_float32_params_and_close_outputs(equivalence):
  r = equivalence["bf16"]
  assert r["output_dtypes"] == ["float32"]  # the losses see float32
  for name, (diff, scale) in r["output_diff"].items():
    assert diff < 0.05 * (1 + scale), (name, diff)
  # The Dense layers really computed in bfloat16 (about 3 significant digits), not float32.
  assert r["output_diff"]["emb"][0] > 1e-5
  assert r["finite"] and r["skipped"] == 0 and r["moved"] > 1e-4
  assert r["state_dtypes"] == ["float32"]  # params and Adam moments


def test_unknown_dtype_is_a_config_error():
  c = loop_config()
  c.model.dtype = "float16"
  with pytest.raises(ConfigError, match="model.dtype"):
    config_lib.validate(c)
