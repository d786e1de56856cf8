"""Training speed of mscross against a plain PyTorch reference, and against this CPU's roofline.

Run as `python bench/train_speed.py [--quick]`. Writes `bench/results/train_speed.{md,json}`.

1. The DSCMR-sized model of docs/methods.md (image 128 -> 2048, text 10 -> 2048,
   shared 2048 -> 1024, classifier 1024 -> 10, loss J1 + 1e-3 J2 + 1e-1 J3, Adam 1e-4
   (0.5, 0.999), batch 100) on random
   data of the Wikipedia shapes: compile times, steps/s of the jitted step in a Python loop, of the
   `make_train_chunk` device loop, and of an eager PyTorch implementation of the same model; the
   analytic FLOPs of one step and the roofline that the measured matmul rate implies.
2. Every method's Wikipedia preset: compile time and steps/s of the `make_train_chunk` loop.

The machine is shared with other work, so every figure is the median of several repeats, given
with its spread and with how busy the CPU was while it was measured. The repeats of the workloads
that are compared with each other are interleaved, so that a change in the background load hits
all of them rather than whichever happened to run at the time.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mscross import input_pipeline, models, presets, train_step

METHODS = ("acmr", "mnsgan", "ms2gan", "dscmr")
# The Wikipedia features as the dataset builder stores them: 128-d BoVW, 10-d LDA topics.
WIKI_D_IMG, WIKI_D_TXT, WIKI_CLASSES, NUM_PAIRS = 128, 10, 10, 2000
MAX_STEPS_PER_REPEAT = 200
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------------------------
# Machine and load
# ----------------------------------------------------------------------------------------------


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          flags = set(line.split(":", 1)[1].split())
          return sorted(x for x in flags if x.startswith(("avx", "fma", "amx")))
  except OSError:
    pass
  return []


def machine_info() -> dict:
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {
    "cpu_model": _cpu_model(),
    "cpu_flags": _cpu_flags(),
    "logical_cores": os.cpu_count(),
    "usable_cores": usable,
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jax_backend": jax.default_backend(),
    "jax_devices": [str(d) for d in jax.devices()],
    "flax": importlib.metadata.version("flax"),
    "optax": importlib.metadata.version("optax"),
    "torch": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "loadavg_at_start": list(os.getloadavg()),
  }


def _busy_cpu_seconds() -> float | None:
  """CPU seconds the whole machine has spent busy since boot (None off Linux)."""
  try:
    with open("/proc/stat") as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  # user nice system idle iowait irq softirq steal (guest time is already counted in user).
  busy = sum(fields[i] for i in (0, 1, 2, 5, 6, 7) if i < len(fields))
  return busy / os.sysconf("SC_CLK_TCK")


class CpuMeter:
  """How busy the CPU was over a `with` block: this process versus everything else.

  The load average alone cannot tell our own threads from the other work on the machine;
  /proc/stat minus this process's CPU time can.
  """

  def __enter__(self) -> CpuMeter:
    self.result: dict = {}
    self._start = (time.perf_counter(), _busy_cpu_seconds(), time.process_time())
    self._load_before = os.getloadavg()
    return self

  def __exit__(self, *exc) -> None:
    wall0, busy0, own0 = self._start
    wall = time.perf_counter() - wall0
    busy1, own = _busy_cpu_seconds(), time.process_time() - own0
    self.result = {
      "wall_s": wall,
      "loadavg_before": list(self._load_before),
      "loadavg_after": list(os.getloadavg()),
      "own_cores": own / wall,
    }
    if busy0 is not None and busy1 is not None:
      self.result["machine_busy_cores"] = (busy1 - busy0) / wall
      self.result["other_cores"] = max(busy1 - busy0 - own, 0.0) / wall

  def describe(self) -> str:
    r = self.result
    load = " ".join(f"{x:.2f}" for x in r["loadavg_after"])
    text = f"load average {load}; this process used {r['own_cores']:.2f} cores"
    if "other_cores" in r:
      text += f", other processes {r['other_cores']:.2f} cores"
    return text + f" (of {os.cpu_count()}, over {r['wall_s']:.0f} s)"


# ----------------------------------------------------------------------------------------------
# Workloads
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
  """Random paired data of fixed shapes: the speed of a step does not depend on the values."""

  image: np.ndarray  # [N, d_img] float32
  text: np.ndarray  # [N, d_txt] float32
  label: np.ndarray  # [N, C] one-hot float32

  @property
  def num_classes(self) -> int:
    return self.label.shape[1]


def random_problem(num_pairs: int, d_img: int, d_txt: int, num_classes: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return Problem(
    image=rng.normal(size=(num_pairs, d_img)).astype(np.float32),
    text=rng.normal(size=(num_pairs, d_txt)).astype(np.float32),
    label=np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, num_pairs)],
  )


@dataclasses.dataclass
class Runner:
  """A workload timed in repeats: `run(n)` does n units of work and returns once they are done."""

  name: str
  run: Callable[[int], None]
  compile_s: dict[str, float] = dataclasses.field(default_factory=dict)
  info: dict = dataclasses.field(default_factory=dict)


def _mscross_setup(config, problem: Problem):
  net, disc = models.build_models(config, problem.num_classes)
  txs = train_step.make_optimizers(config)
  d_img, d_txt = problem.image.shape[1], problem.text.shape[1]
  state = train_step.init_state(config, net, disc, d_img, d_txt, txs)
  step_fn = train_step.make_train_step(config, net, disc, txs, int(config.train.steps))
  return net, disc, state, step_fn


def _num_params(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def _first_batch(problem: Problem, batch_size: int) -> dict[str, np.ndarray]:
  return {
    "image": problem.image[:batch_size],
    "text": problem.text[:batch_size],
    "label": problem.label[:batch_size],
  }


def _aot_compile(jitted, *args) -> dict[str, float]:
  # Lowering and compiling ahead of time puts the executable in the cache that later calls of
  # `jitted` with the same argument types hit, so compilation stays out of the timed repeats.
  # CPU seconds beside wall seconds: on a shared machine the wall time mostly measures the load,
  # while compilation is largely single-threaded, so its CPU time is close to an idle machine's
  # wall time.
  t0, c0 = time.perf_counter(), time.process_time()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2, c2 = time.perf_counter(), time.process_time()
  out = {"trace_lower": t1 - t0, "compile": t2 - t1, "total": t2 - t0, "cpu": c2 - c0}
  try:
    out["xla_flops"] = float(compiled.cost_analysis()["flops"])
  except (KeyError, TypeError, IndexError, NotImplementedError):
    pass
  return out


def mscross_single_step(config, problem: Problem) -> Runner:
  """The jitted step called from a Python loop on one fixed device batch, state donated."""
  _, _, state, step_fn = _mscross_setup(config, problem)
  batch = jax.device_put(_first_batch(problem, int(config.train.batch_size)))
  jitted = jax.jit(step_fn, donate_argnums=0)
  compile_s = _aot_compile(jitted, state, batch)
  box = {"state": state}

  def run(n: int) -> None:
    st = box["state"]
    for _ in range(n):
      st, _ = jitted(st, batch)
    box["state"] = jax.block_until_ready(st)

  info = {"params": _num_params(state.params), "box": box}
  return Runner(f"{config.method}: jit step, Python loop", run, compile_s, info)


def mscross_chunk(config, problem: Problem) -> Runner:
  """`make_train_chunk`: n steps in one device loop, batches gathered on the device."""
  _, _, state, step_fn = _mscross_setup(config, problem)
  n = problem.image.shape[0]
  chunk = train_step.make_train_chunk(
    step_fn, jax.random.PRNGKey(1), n, int(config.train.batch_size)
  )
  arrays = jax.device_put({"image": problem.image, "text": problem.text, "label": problem.label})
  compile_s = _aot_compile(chunk, state, arrays, 1)
  box = {"state": state}

  def run(n: int) -> None:
    st, _ = chunk(box["state"], arrays, n)
    box["state"] = jax.block_until_ready(st)

  info = {"params": _num_params(state.params), "box": box}
  return Runner(f"{config.method}: make_train_chunk", run, compile_s, info)


def batch_index_loop(num_examples: int, batch_size: int) -> Runner:
  """Only the per-step index draw of `make_train_chunk`, in the same kind of device loop: what
  the chunk pays for its on-device batches beyond the step itself."""
  key = jax.random.PRNGKey(1)

  def loop(num_steps):
    def body(step, acc):
      idx = input_pipeline.batch_indices(key, step, num_examples, batch_size)
      # Consumed, so that XLA cannot drop the draw as dead code.
      return acc + idx[0]

    return jax.lax.fori_loop(0, num_steps, body, jnp.zeros((), jnp.int32))

  jitted = jax.jit(loop)
  compile_s = _aot_compile(jitted, 1)

  def run(n: int) -> None:
    jax.block_until_ready(jitted(n))

  name = f"batch_indices alone (N={num_examples}, B={batch_size})"
  return Runner(name, run, compile_s)


class TorchDSCMR(nn.Module):
  """DSCMR as docs/methods.md describes it: one ReLU layer per modality, a shared linear layer, and
  a shared linear classifier."""

  def __init__(self, d_img: int, d_txt: int, hidden: int, common: int, num_classes: int):
    super().__init__()
    self.img = nn.Linear(d_img, hidden)
    self.txt = nn.Linear(d_txt, hidden)
    self.shared = nn.Linear(hidden, common)
    self.classifier = nn.Linear(common, num_classes)

  def forward(self, x_img, x_txt):
    f_img = self.shared(F.relu(self.img(x_img)))
    f_txt = self.shared(F.relu(self.txt(x_txt)))
    return f_img, f_txt, self.classifier(f_img), self.classifier(f_txt)


def torch_dscmr_loss(f_img, f_txt, p_img, p_txt, labels, alpha: float, beta: float):
  """J1 + alpha J2 + beta J3 of docs/methods.md."""
  j1 = (p_img - labels).norm(dim=1).mean() + (p_txt - labels).norm(dim=1).mean()
  s = (labels @ labels.T > 0).to(f_img.dtype)

  def pair_term(u, v):
    t = F.normalize(u, dim=1) @ F.normalize(v, dim=1).T / 2
    return (F.softplus(t) - s * t).mean()

  j2 = pair_term(f_img, f_img) + pair_term(f_img, f_txt) + pair_term(f_txt, f_txt)
  j3 = (f_img - f_txt).norm(dim=1).mean()
  return j1 + alpha * j2 + beta * j3


def _torch_model(config, problem: Problem) -> TorchDSCMR:
  m = config.model
  return TorchDSCMR(
    problem.image.shape[1],
    problem.text.shape[1],
    m.img_layers[0],
    m.shared_layers[0],
    problem.num_classes,
  )


def _loss_weights(config) -> tuple[float, float]:
  return config.loss.dscmr_pairwise.weight, config.loss.dscmr_invariance.weight


def torch_step(config, problem: Problem, seed: int = 0, threads: int | None = None) -> Runner:
  """The eager PyTorch reference, timed like `mscross_single_step`: one fixed batch.

  `threads` pins torch's intra-op thread count while this runner runs (None: torch's default).
  """
  torch.manual_seed(seed)
  model = _torch_model(config, problem)
  o = config.optim
  opt = torch.optim.Adam(model.parameters(), lr=o.lr, betas=(o.b1, o.b2))
  alpha, beta = _loss_weights(config)
  batch = _first_batch(problem, int(config.train.batch_size))
  batch = {k: torch.from_numpy(v) for k, v in batch.items()}

  def steps(n: int) -> None:
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      out = model(batch["image"], batch["text"])
      loss = torch_dscmr_loss(*out, batch["label"], alpha, beta)
      loss.backward()
      opt.step()

  def run(n: int) -> None:
    if threads is None:
      return steps(n)
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
      steps(n)
    finally:
      torch.set_num_threads(default)

  info = {"params": sum(p.numel() for p in model.parameters()), "threads": threads}
  name = "PyTorch eager" + ("" if threads is None else f", {threads} thread(s)")
  return Runner(name, run, {}, info)


def loss_agreement(config, problem: Problem) -> dict[str, float]:
  """Both implementations' loss on the same weights and batch: they must time the same thing."""
  net, disc, state, _ = _mscross_setup(config, problem)
  batch_np = _first_batch(problem, int(config.train.batch_size))
  obj = train_step.make_objectives(config, net, disc)
  gen = state.params["gen"]
  # One jitted call: op-by-op dispatch would compile every primitive on its own, which is slower.
  _, (l_emb, _, _) = jax.jit(obj.generator)(
    gen, state.params["disc"], jax.device_put(batch_np), jax.random.PRNGKey(0), 0.0
  )
  model = _torch_model(config, problem)
  # Flax keeps Dense kernels as [in, out], torch Linear weights as [out, in].
  layers = {
    "img": gen["img_encoder"]["dense_0"],
    "txt": gen["txt_encoder"]["dense_0"],
    "shared": gen["common"]["dense_0"],
    "classifier": gen["classifier"],
  }
  with torch.no_grad():
    for name, p in layers.items():
      getattr(model, name).weight.copy_(torch.from_numpy(np.array(p["kernel"]).T.copy()))
      getattr(model, name).bias.copy_(torch.from_numpy(np.array(p["bias"])))
    batch = {k: torch.from_numpy(v) for k, v in batch_np.items()}
    out = model(batch["image"], batch["text"])
    l_torch = torch_dscmr_loss(*out, batch["label"], *_loss_weights(config)).item()
  return {"mscross": float(l_emb), "torch": l_torch, "abs_diff": abs(float(l_emb) - l_torch)}


def jax_matmul(size: int) -> Runner:
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.normal(size=(size, size)).astype(np.float32)) for _ in range(2))
  mm = jax.jit(jnp.matmul)
  compile_s = _aot_compile(mm, a, b)

  def run(n: int) -> None:
    jax.block_until_ready([mm(a, b) for _ in range(n)])

  return Runner(f"jax jit matmul {size}^3 float32", run, compile_s)


def torch_matmul(size: int) -> Runner:
  g = torch.Generator().manual_seed(0)
  a, b = (torch.randn(size, size, generator=g) for _ in range(2))

  def run(n: int) -> None:
    for _ in range(n):
      torch.matmul(a, b)

  return Runner(f"torch matmul {size}^3 float32", run)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def calibrate(runner: Runner, target_s: float, max_units: int) -> int:
  """Units of work per repeat so that one repeat lasts about `target_s`."""
  runner.run(1)
  t0 = time.perf_counter()
  runner.run(2)
  per_unit = (time.perf_counter() - t0) / 2
  return int(min(max(round(target_s / per_unit), 2), max_units))


def interleaved_repeats(
  runners: list[Runner], units: list[int], repeats: int
) -> list[list[tuple[float, float]]]:
  """(wall seconds, this process's CPU seconds) of each repeat, per runner. Round r starts at
  runner r mod k, so no workload always runs right after the same other one."""
  times: list[list[tuple[float, float]]] = [[] for _ in runners]
  k = len(runners)
  for r in range(repeats):
    for i in [(r + j) % k for j in range(k)]:
      # One untimed unit first: the other framework's thread pool may just have had the cores.
      runners[i].run(1)
      t0, c0 = time.perf_counter(), time.process_time()
      runners[i].run(units[i])
      times[i].append((time.perf_counter() - t0, time.process_time() - c0))
  return times


def summarise(units: int, times: list[tuple[float, float]], scale: float = 1.0) -> dict:
  """Rates (units/s times `scale`) of the repeats: median, min, max, relative spread, and the
  median rate per CPU second of this process, which depends less on the other work."""
  rates = [scale * units / wall for wall, _ in times]
  med = statistics.median(rates)
  return {
    "units_per_repeat": units,
    "repeats": len(rates),
    "rates": rates,
    "median": med,
    "min": min(rates),
    "max": max(rates),
    "spread": (max(rates) - min(rates)) / med,
    "per_cpu_s": statistics.median(scale * units / max(cpu, 1e-9) for _, cpu in times),
  }


# ----------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------


def dscmr_step_flops(batch: int, d_img: int, d_txt: int, hidden: int, common: int, classes: int):
  """Matmul FLOPs of one DSCMR training step, by part.

  A matmul [B, i] x [i, o] costs 2 B i o. Its backward pass costs twice that (the gradient of the
  weights and of the input), except for the first layer of each modality, whose input needs no
  gradient. The three B x B cosine matrices of J2 are counted too; elementwise work (ReLU, norms,
  Adam) is not.
  """
  b = batch
  parts = [
    # name, formula, forward FLOPs, backward FLOPs
    (f"image Linear {d_img}->{hidden}", f"2*{b}*{d_img}*{hidden}", 2 * b * d_img * hidden, 1),
    (f"text Linear {d_txt}->{hidden}", f"2*{b}*{d_txt}*{hidden}", 2 * b * d_txt * hidden, 1),
    (
      f"shared Linear {hidden}->{common}, both modalities",
      f"2 x 2*{b}*{hidden}*{common}",
      2 * 2 * b * hidden * common,
      2,
    ),
    (
      f"classifier {common}->{classes}, both modalities",
      f"2 x 2*{b}*{common}*{classes}",
      2 * 2 * b * common * classes,
      2,
    ),
    (
      "J2 cosine matrices (img-img, img-txt, txt-txt)",
      f"3 x 2*{b}*{b}*{common}",
      3 * 2 * b * b * common,
      2,
    ),
  ]
  rows = [
    {"part": name, "formula": formula, "forward": fwd, "backward": mult * fwd}
    for name, formula, fwd, mult in parts
  ]
  forward = sum(r["forward"] for r in rows)
  backward = sum(r["backward"] for r in rows)
  return {"rows": rows, "forward": forward, "backward": backward, "total": forward + backward}


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------


def check_dscmr_preset(config) -> list[str]:
  """Where `presets.build("dscmr", ...)` departs from docs/methods.md's DSCMR (empty if nowhere)."""
  expected = {
    "model.img_layers": (2048,),
    "model.txt_layers": (2048,),
    "model.shared_layers": (1024,),
    "model.activation": "relu",
    "model.activate_final": True,
    "model.shared_activate_final": False,
    "model.classifier_input": "common",
    "train.batch_size": 100,
    "adv.enabled": False,
    "optim.lr": 1e-4,
    "optim.b1": 0.5,
    "optim.b2": 0.999,
    "optim.grad_clip": 0.0,
    "loss.dscmr_label.weight": 1.0,
    "loss.dscmr_pairwise.weight": 1e-3,
    "loss.dscmr_invariance.weight": 1e-1,
  }
  problems = []
  for key, want in expected.items():
    got = config
    for part in key.split("."):
      got = got[part]
    if isinstance(want, tuple):
      got = tuple(got)
    if got != want:
      problems.append(f"{key} = {got!r}, docs/methods.md: {want!r}")
  # Configs from before mixed precision have no model.dtype; the roofline assumes float32.
  dtype = config.model.get("dtype", "float32")
  if dtype != "float32":
    problems.append(f"model.dtype = {dtype!r}, the roofline assumes 'float32'")
  if set(config.loss.keys()) != {"dscmr_label", "dscmr_pairwise", "dscmr_invariance"}:
    problems.append(f"loss terms {sorted(config.loss.keys())}")
  return problems


def _fmt_rate(s: dict) -> str:
  return (
    f"{s['median']:.2f} | {s['min']:.2f} | {s['max']:.2f} | {100 * s['spread']:.0f}% | "
    f"{s['per_cpu_s']:.2f}"
  )


def section_dscmr(args, problem: Problem, out: dict) -> tuple[list[str], Runner]:
  """Section 1; also returns the chunk runner, which section 2 reuses for its dscmr row."""
  config = presets.build("dscmr", "wikipedia")
  problems = check_dscmr_preset(config)
  if problems:
    raise SystemExit("the dscmr preset is not docs/methods.md's DSCMR: " + "; ".join(problems))
  b = int(config.train.batch_size)
  m = config.model
  flops = dscmr_step_flops(
    b, WIKI_D_IMG, WIKI_D_TXT, m.img_layers[0], m.shared_layers[0], WIKI_CLASSES
  )
  agreement = loss_agreement(config, problem)

  runners = {
    "mscross_single": mscross_single_step(config, problem),
    "mscross_chunk": mscross_chunk(config, problem),
    "torch": torch_step(config, problem),
    # Not the reference: shows how much of the gap is torch's OpenMP pool on busy cores.
    "torch_1thread": torch_step(config, problem, threads=1),
    "matmul_jax": jax_matmul(args.matmul_size),
    "matmul_torch": torch_matmul(args.matmul_size),
  }
  units = [calibrate(r, args.seconds, MAX_STEPS_PER_REPEAT) for r in runners.values()]
  with CpuMeter() as meter:
    seconds = interleaved_repeats(list(runners.values()), units, args.repeats)
  mm_gflop = 2 * args.matmul_size**3 / 1e9
  stats = {
    key: summarise(n, secs, mm_gflop if key.startswith("matmul") else 1.0)
    for key, n, secs in zip(runners, units, seconds, strict=True)
  }
  roofline = stats["matmul_jax"]["median"] * 1e9 / flops["total"]
  # The same bound per CPU second of this process: less sensitive to how much of the machine
  # the other work left us during each repeat.
  roofline_cpu = stats["matmul_jax"]["per_cpu_s"] * 1e9 / flops["total"]
  ratio = {
    f"{mine}/{ref}": stats[f"mscross_{mine}"]["median"] / stats[ref]["median"]
    for mine in ("single", "chunk")
    for ref in ("torch", "torch_1thread")
  }
  reached = max(ratio["single/torch"], ratio["chunk/torch"]) >= 4.0
  single, chunk = runners["mscross_single"], runners["mscross_chunk"]
  out["dscmr"] = {
    "preset_check": "ok",
    "batch_size": b,
    "params": {
      "mscross_gen": _num_params(single.info["box"]["state"].params["gen"]),
      "mscross_gen_and_disc": single.info["params"],
      "torch": runners["torch"].info["params"],
    },
    "loss_agreement": agreement,
    "flops": flops,
    "compile_s": {"single_step": single.compile_s, "chunk": chunk.compile_s},
    "steady_state": stats,
    "matmul_size": args.matmul_size,
    "roofline_steps_per_s": roofline,
    "roofline_steps_per_cpu_s": roofline_cpu,
    "ratio_mscross_over_torch": ratio,
    "target_4x_reached": reached,
    "cpu": meter.result,
  }

  lines = [
    f"## 1. DSCMR-sized model, batch {b}, random data of the Wikipedia shapes",
    "",
    f"- model: image {WIKI_D_IMG} -> {m.img_layers[0]} ReLU, text {WIKI_D_TXT} -> "
    f"{m.txt_layers[0]} ReLU, shared {m.img_layers[0]} -> {m.shared_layers[0]}, classifier "
    f"{m.shared_layers[0]} -> {WIKI_CLASSES}; loss J1 + 1e-3 J2 + 1e-1 J3; Adam 1e-4 (0.5, 0.999); "
    f"{problem.image.shape[0]} random pairs",
    '- `presets.build("dscmr", "wikipedia")` matches docs/methods.md (layers, activation, batch, '
    "optimiser, loss weights, adversary off)",
    f"- parameters: mscross generator {out['dscmr']['params']['mscross_gen']:,}, PyTorch "
    f"{out['dscmr']['params']['torch']:,}",
    f"- same weights, same batch: mscross loss {agreement['mscross']:.6f}, PyTorch loss "
    f"{agreement['torch']:.6f} (|diff| {agreement['abs_diff']:.1e})",
    "",
    "### FLOPs of one training step (analytic)",
    "",
    "| part | forward formula | forward MFLOP | backward MFLOP |",
    "| --- | --- | ---: | ---: |",
  ]
  for r in flops["rows"]:
    lines.append(
      f"| {r['part']} | {r['formula']} | {r['forward'] / 1e6:.1f} | {r['backward'] / 1e6:.1f} |"
    )
  lines += [
    f"| **total** | | {flops['forward'] / 1e6:.1f} | {flops['backward'] / 1e6:.1f} |",
    "",
    f"Train step = forward + backward = **{flops['total'] / 1e9:.3f} GFLOP** (backward = 2x "
    "forward, except the first layers, which need no input gradient; elementwise work not "
    "counted). XLA's cost analysis of the compiled mscross step: "
    f"{single.compile_s.get('xla_flops', float('nan')) / 1e9:.3f} GFLOP.",
    "",
    "### Compile (outside the timed repeats)",
    "",
    "| function | trace + lower s | XLA compile s | total wall s | total CPU s |",
    "| --- | ---: | ---: | ---: | ---: |",
  ]
  for name, c in (("jit(step_fn)", single.compile_s), ("make_train_chunk", chunk.compile_s)):
    lines.append(
      f"| {name} | {c['trace_lower']:.2f} | {c['compile']:.2f} | {c['total']:.2f} | "
      f"{c['cpu']:.2f} |"
    )
  mm = stats["matmul_jax"]["median"]
  lines += [
    "",
    f"### Steady state: {args.repeats} interleaved repeats of about {args.seconds:g} s each",
    "",
    f"Roofline = jitted matmul rate / FLOPs per step = {mm:.1f} GFLOP/s / "
    f"{flops['total'] / 1e9:.3f} GFLOP = **{roofline:.2f} steps/s**.",
    "",
    "| implementation | steps per repeat | steps/s median | min | max | spread "
    "| steps per CPU-s | fraction of roofline (wall) | (CPU-s) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  labels = {
    "mscross_single": "(b) mscross jit step, Python loop, fixed batch",
    "mscross_chunk": "(c) mscross make_train_chunk, one call per repeat",
    "torch": f"PyTorch eager, fixed batch, default threads ({torch.get_num_threads()})",
    "torch_1thread": "PyTorch eager, fixed batch, 1 thread (check, not the reference)",
  }
  for key, label in labels.items():
    s = stats[key]
    lines.append(
      f"| {label} | {s['units_per_repeat']} | {_fmt_rate(s)} | {s['median'] / roofline:.0%} | "
      f"{s['per_cpu_s'] / roofline_cpu:.0%} |"
    )
  lines += [
    "",
    "| matmul rate | matmuls per repeat | GFLOP/s median | min | max | spread | GFLOP per CPU-s |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for key in ("matmul_jax", "matmul_torch"):
    s = stats[key]
    lines.append(f"| {runners[key].name} | {s['units_per_repeat']} | {_fmt_rate(s)} |")
  lines += [
    "",
    f"mscross / PyTorch steps/s (medians): (b) **{ratio['single/torch']:.2f}x**, (c) "
    f"**{ratio['chunk/torch']:.2f}x**; against PyTorch on 1 thread (b) "
    f"{ratio['single/torch_1thread']:.2f}x, (c) {ratio['chunk/torch_1thread']:.2f}x. "
    f"Target (b) or (c) >= 4x the default-threads reference: **"
    f"{'reached' if reached else 'not reached'}**. The roofline caps the ratio at "
    f"{roofline / stats['torch']['median']:.2f}x against the default-threads reference and at "
    f"{roofline / stats['torch_1thread']['median']:.2f}x against the 1-thread one.",
    "",
    f"CPU during the repeats: {meter.describe()}.",
    "",
  ]
  return lines, chunk


def section_methods(args, problem: Problem, out: dict, reuse: dict[str, Runner]) -> list[str]:
  """Section 2; `reuse` maps a method to a chunk runner already built for its Wikipedia preset."""
  configs = {m: presets.build(m, "wikipedia") for m in args.methods}
  runners = [reuse.get(m) or mscross_chunk(configs[m], problem) for m in args.methods]
  small_batch = min(int(c.train.batch_size) for c in configs.values())
  index_runner = batch_index_loop(problem.image.shape[0], small_batch)
  runners.append(index_runner)
  units = [calibrate(r, args.seconds, MAX_STEPS_PER_REPEAT) for r in runners]
  with CpuMeter() as meter:
    seconds = interleaved_repeats(runners, units, args.method_repeats)
  index_stats = summarise(units.pop(), seconds.pop())
  runners.pop()
  rows = {}
  for method, runner, n, secs in zip(args.methods, runners, units, seconds, strict=True):
    c = configs[method]
    rows[method] = {
      "batch_size": int(c.train.batch_size),
      "adversary": bool(c.adv.enabled),
      "params": runner.info["params"],
      "compile_s": runner.compile_s,
      "steps_per_s": summarise(n, secs),
    }
  index_cpu_ms = 1e3 / index_stats["per_cpu_s"]
  out["methods"] = {
    "rows": rows,
    "batch_indices_alone": {"stats": index_stats, "cpu_ms_per_step": index_cpu_ms},
    "cpu": meter.result,
  }
  lines = [
    "## 2. Every method's Wikipedia preset: make_train_chunk loop, random data",
    "",
    "| method | batch | adversary | params | compile wall s | compile CPU s | steps per repeat "
    "| steps/s median | min | max | spread | steps per CPU-s |",
    "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for method, r in rows.items():
    s, c = r["steps_per_s"], r["compile_s"]
    lines.append(
      f"| {method} | {r['batch_size']} | {'on' if r['adversary'] else 'off'} | {r['params']:,} | "
      f"{c['total']:.2f} | {c['cpu']:.2f} | {s['units_per_repeat']} | {_fmt_rate(s)} |"
    )
  lines += [
    "",
    f"Drawing one step's batch indices as the chunk does ({index_runner.name}: a fresh "
    f"permutation of all pairs every step) takes {index_cpu_ms:.2f} CPU-ms, against "
    + ", ".join(f"{m} {1e3 / r['steps_per_s']['per_cpu_s']:.2f}" for m, r in rows.items())
    + " CPU-ms for a whole chunk step.",
    "",
    f"Params: generator and discriminator. {args.method_repeats} interleaved repeats of about "
    f"{args.seconds:g} s each. The dscmr row reuses section 1's compiled chunk function. CPU "
    f"during the repeats: {meter.describe()}.",
    "",
  ]
  return lines


def header_lines(info: dict, args) -> list[str]:
  load = " ".join(f"{x:.2f}" for x in info["loadavg_at_start"])
  return [
    "# mscross training speed (bench/train_speed.py)",
    "",
    f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; mode: {'quick' if args.quick else 'full'}",
    f"- CPU: {info['cpu_model']}, {info['logical_cores']} logical cores ({info['usable_cores']} "
    f"usable); SIMD: {' '.join(info['cpu_flags']) or 'n/a'}",
    f"- load average at start (1, 5, 15 min): {load}",
    f"- Python {info['python']}; jax {info['jax']} (backend {info['jax_backend']}, devices "
    f"{', '.join(info['jax_devices'])}); flax {info['flax']}; optax {info['optax']}",
    f"- torch {info['torch']}, torch.get_num_threads() = {info['torch_threads']} (default)",
    "",
  ]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="smoke run: few, short repeats")
  p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
  p.add_argument(
    "--methods",
    default=",".join(METHODS),
    help="comma-separated methods for section 2 (each costs a compilation of 5-15 CPU-s)",
  )
  args = p.parse_args(argv)
  args.methods = tuple(m for m in args.methods.split(",") if m)
  unknown = set(args.methods) - set(METHODS)
  if unknown:
    p.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
  if args.quick:
    args.repeats, args.method_repeats, args.seconds, args.matmul_size = 3, 2, 0.3, 1024
  else:
    args.repeats, args.method_repeats, args.seconds, args.matmul_size = 7, 5, 1.5, 2048
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  info = machine_info()
  out: dict = {
    "machine": info,
    "settings": {
      "quick": args.quick,
      "repeats": args.repeats,
      "method_repeats": args.method_repeats,
      "seconds_per_repeat": args.seconds,
      "matmul_size": args.matmul_size,
      "pairs": NUM_PAIRS,
      "methods": list(args.methods),
    },
  }
  lines = header_lines(info, args)
  print("\n".join(lines), flush=True)
  problem = random_problem(NUM_PAIRS, WIKI_D_IMG, WIKI_D_TXT, WIKI_CLASSES)
  with CpuMeter() as whole:
    part, dscmr_chunk = section_dscmr(args, problem, out)
    print("\n".join(part), flush=True)
    lines += part
    part = section_methods(args, problem, out, {"dscmr": dscmr_chunk})
    print("\n".join(part), flush=True)
    lines += part
  out["cpu_whole_run"] = whole.result
  tail = [f"Whole run: {whole.describe()}."]
  print("\n".join(tail), flush=True)
  lines += tail
  args.out_dir.mkdir(parents=True, exist_ok=True)
  (args.out_dir / "train_speed.md").write_text("\n".join(lines) + "\n")
  (args.out_dir / "train_speed.json").write_text(json.dumps(out, indent=2) + "\n")
  print(f"\nwrote {args.out_dir / 'train_speed.md'} and train_speed.json", file=sys.stderr)
  return out


if __name__ == "__main__":
  main()
