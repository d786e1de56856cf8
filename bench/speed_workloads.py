"""The mscross workloads that bench/train_speed.py times: random data of the Wikipedia shapes, and
the training program that train.py runs, built by `mscross.training.program` from the resolved
run plan, so the benchmark times what the trainer trains.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from speed_timing import Runner, timed

from mscross import presets
from mscross.data import Split
from mscross.methods.models import DataSpec
from mscross.runs import inputs
from mscross.training import loop
from mscross.training import plan as plan_lib
from mscross.training import program as program_lib

# The Wikipedia features as the dataset builder stores them: 128-d BoVW, 10-d LDA topics.
WIKI_D_IMG, WIKI_D_TXT, WIKI_CLASSES = 128, 10, 10
MAX_STEPS_PER_REPEAT = 200


@dataclasses.dataclass(frozen=True)
class Problem:
  """Random paired data of fixed shapes: the speed of a step does not depend on the values."""

  image: np.ndarray  # [N, d_img] float32
  text: np.ndarray  # [N, d_txt] float32
  label: np.ndarray  # [N, C] one-hot float32

  @property
  def num_classes(self) -> int:
    return self.label.shape[1]

  def split(self) -> Split:
    n = len(self.label)
    return Split(
      features={"image": self.image, "text": self.text},
      label=self.label,
      ids=np.asarray([str(i) for i in range(n)]),
      class_names=tuple(str(c) for c in range(self.num_classes)),
    )

  def spec(self) -> DataSpec:
    return inputs.spec_of(self.split())

  def first_batch(self, batch_size: int) -> dict:
    return {
      "inputs": {"image": self.image[:batch_size], "text": self.text[:batch_size]},
      "label": self.label[:batch_size],
    }


def random_problem(num_pairs: int, d_img: int, d_txt: int, num_classes: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return Problem(
    image=rng.normal(size=(num_pairs, d_img)).astype(np.float32),
    text=rng.normal(size=(num_pairs, d_txt)).astype(np.float32),
    label=np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, num_pairs)],
  )


def preset(method: str):
  """The Wikipedia preset of `method`, which sections 1 and 2 time (tests swap in tiny ones)."""
  return presets.build(method, "wikipedia")


def build_program(config, problem: Problem, size: int) -> program_lib.Program:
  """The program train.py builds for `config` with a population of `size` members (seeds seed,
  seed + 1, ...) on `problem`, on one device fed from device memory."""
  config = config.copy_and_resolve_references()
  config.population.size = size
  # Pinned rather than left to "every device" and "auto": the rates of a single-process CPU run
  # are what the report compares, whatever devices a host happens to expose.
  config.parallel.num_devices = 1
  config.parallel.feed = "device"
  plan = plan_lib.resolve(config, problem.spec())
  # Never from or to the on-disk program cache: the first call's compile time is reported.
  return program_lib.build(plan, len(problem.label))


def num_params(tree) -> int:
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def step_cost_analysis(prog: program_lib.Program, problem: Problem) -> float | None:
  """XLA's FLOP estimate of one member's step, from the lowered program (no compilation)."""
  batch = problem.first_batch(prog.plan.feed.batch_size)
  try:
    lowered = jax.jit(prog.member_step()).lower(prog.member_shapes(), batch)
    return float(lowered.cost_analysis()["flops"])
  except (KeyError, TypeError, IndexError, NotImplementedError):
    return None


def mscross_loop(config, problem: Problem, size: int = 1) -> Runner:
  """The program's device loop as train.py runs it: a population of `size` members, one loop
  call per `run`, the state donated. A unit of work is one step of every member."""
  prog = build_program(config, problem, size)
  data = prog.loop.data(problem.split())
  box = {"state": loop.replicate(prog.init_state(), prog.mesh)}

  def first_call():
    # Zero steps: the loop's trip count is traced, so this compiles the program that every
    # later call runs, and trains nothing.
    st, _ = prog.loop(box["state"], data, 0)
    box["state"] = jax.block_until_ready(st)

  _, compile_s = timed(first_call)

  def run(n: int) -> None:
    st, _ = prog.loop(box["state"], data, n)
    box["state"] = jax.block_until_ready(st)

  info = {
    "params_per_member": num_params(prog.member_shapes().params),
    "population": size,
    "box": box,
    "program": prog,
  }
  return Runner(f"{config.method} P={size}: TrainLoop", run, compile_s, info)
