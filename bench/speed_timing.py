"""Timing on a shared machine, for bench/train_speed.py: the machine and its load, workloads timed
in interleaved repeats, and the summaries of their rates.

The machine is shared with other work, so a rate is the median of several repeats, given with
its spread and with how busy the CPU was while it was measured. The repeats of workloads that
are compared with each other are interleaved, so that a change in the background load hits all of
them rather than whichever happened to run at the time.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

import jax


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


def machine_info(torch=None) -> dict:
  """The CPU, the package versions and the load at start; `torch`: the module, if installed."""
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
    "torch": None if torch is None else torch.__version__,
    "torch_threads": None if torch is None else torch.get_num_threads(),
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


def _children_cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


class CpuMeter:
  """How busy the CPU was over a `with` block: the measured work versus everything else.

  The load average alone cannot tell our own threads from the other work on the machine;
  /proc/stat minus the measured work's CPU time can. The measured work is `of`: "self" (this
  process), "children" (the child processes that finished inside the block, such as a
  `subprocess.run`) or "both".
  """

  def __init__(self, of: str = "self"):
    self._own = {
      "self": time.process_time,
      "children": _children_cpu_seconds,
      "both": lambda: time.process_time() + _children_cpu_seconds(),
    }[of]

  def __enter__(self) -> CpuMeter:
    self.result: dict = {}
    self._start = (time.perf_counter(), _busy_cpu_seconds(), self._own())
    self._load_before = os.getloadavg()
    return self

  def __exit__(self, *exc) -> None:
    wall0, busy0, own0 = self._start
    wall = time.perf_counter() - wall0
    busy1, own = _busy_cpu_seconds(), self._own() - own0
    self.result = {
      "wall_s": wall,
      "cpu_s": own,
      "loadavg_before": list(self._load_before),
      "loadavg_after": list(os.getloadavg()),
      "own_cores": own / wall,
    }
    if busy0 is not None and busy1 is not None:
      self.result["machine_busy_cores"] = (busy1 - busy0) / wall
      self.result["other_cores"] = max(busy1 - busy0 - own, 0.0) / wall

  def describe(self) -> str:
    return describe_cpu(self.result)


def describe_cpu(r: dict) -> str:
  load = " ".join(f"{x:.2f}" for x in r["loadavg_after"])
  text = f"load average {load}; the measured work used {r['own_cores']:.2f} cores"
  if "other_cores" in r:
    text += f", other processes {r['other_cores']:.2f} cores"
  return text + f" (of {os.cpu_count()}, over {r['wall_s']:.0f} s)"


@dataclasses.dataclass
class Runner:
  """A workload timed in repeats: `run(n)` does n units of work and returns once they are done."""

  name: str
  run: Callable[[int], None]
  compile_s: dict[str, float] = dataclasses.field(default_factory=dict)
  info: dict = dataclasses.field(default_factory=dict)


def timed(fn: Callable[[], object]) -> tuple[object, dict[str, float]]:
  """`fn()` and its {"wall", "cpu"} seconds."""
  # CPU seconds beside wall seconds: on a shared machine the wall time mostly measures the load,
  # while compilation is largely single-threaded, so its CPU time is close to an idle machine's
  # wall time.
  t0, c0 = time.perf_counter(), time.process_time()
  out = fn()
  return out, {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}


def calibrate(runner: Runner, target_s: float, max_units: int) -> int:
  """Units of work per repeat so that one repeat lasts about `target_s`."""
  runner.run(1)
  t0 = time.perf_counter()
  runner.run(2)
  per_unit = (time.perf_counter() - t0) / 2
  return int(min(max(round(target_s / per_unit), 2), max_units))


def interleaved_repeats(
  runners: list[Runner], units: list[int], repeats: int, warmup: bool = True
) -> list[list[tuple[float, float]]]:
  """(wall seconds, this process's CPU seconds) of each repeat, per runner. Round r starts at
  runner r mod k, so no workload always runs right after the same other one."""
  times: list[list[tuple[float, float]]] = [[] for _ in runners]
  k = len(runners)
  for r in range(repeats):
    for i in [(r + j) % k for j in range(k)]:
      if warmup:
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


def time_runners(runners: list[Runner], seconds: float, max_units: int, repeats: int, **kw):
  """Calibrates each runner to repeats of about `seconds`, then times them interleaved: the units
  per repeat, the times of `interleaved_repeats` and the CPU meter of the repeats."""
  units = [calibrate(r, seconds, max_units) for r in runners]
  with CpuMeter() as meter:
    times = interleaved_repeats(runners, units, repeats, **kw)
  return units, times, meter


def fmt_rate(s: dict) -> str:
  """The table cells median | min | max | spread | per CPU-s of a `summarise` result."""
  return (
    f"{s['median']:.2f} | {s['min']:.2f} | {s['max']:.2f} | {100 * s['spread']:.0f}% | "
    f"{s['per_cpu_s']:.2f}"
  )
