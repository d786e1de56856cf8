"""Sections 3 and 4 of bench/train_speed.py: whole train.py processes, timed from outside.

3. Time to a finished model: the whole `train.py` process (start-up, compilation, training,
   validation, final scoring) for a fixed step count, one seed against several
   (`--config.population.size`), and the PyTorch DSCMR reference training as many steps, one run
   and several runs one after the other.
4. Start-up: `train.py` run twice on the same preset with the same persistent compilation cache
   (empty, then filled by the first run), and once with `--nocompilation_cache`.

The processes are too long to repeat; each comes with the load it ran under.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import speed_dscmr as dscmr
from speed_timing import CpuMeter, describe_cpu
from speed_workloads import WIKI_CLASSES, WIKI_D_IMG, WIKI_D_TXT

from mscross import methods, presets
from mscross.data import Split
from mscross.runs import inputs, layout  # noqa: E402

# The synthetic stand-in's split sizes: the `features` builder carves 10% of train as validation,
# which leaves Wikipedia's 1955 train, 218 validation and 693 test pairs.
WIKI_TRAIN, WIKI_TEST = 2173, 693
# The Wikipedia preset's evaluation and checkpoint periods, given explicitly to every train.py
# run so the synthetic dataset's generic preset evaluates as often.
EVAL_EVERY, CHECKPOINT_EVERY = 100, 300
REPO = Path(__file__).resolve().parents[1]
TRAIN_PY = REPO / "train.py"
CONFIG_PY = REPO / "configs" / "default.py"

# Targets, as stated in the report.
TARGET_GAN_SEEDS = "5 seeds of a Wikipedia GAN preset finish in <= 2x the wall time of one seed"
TARGET_DSCMR_ONE = "DSCMR: one run >= 2x the PyTorch reference's steps/s"
TARGET_DSCMR_FIVE = "DSCMR: 5 seeds >= 4x five sequential PyTorch runs"
TARGET_STARTUP = "a second train.py of the same preset reaches its first step in <= 3 s"


def _target(name: str, met: bool | None, figure: str) -> dict:
  return {"target": name, "met": met, "figure": figure}


@dataclasses.dataclass(frozen=True)
class RunData:
  """The dataset that the train.py runs train on."""

  name: str  # the `dataset=` of configs/default.py
  flags: tuple[str, ...]  # extra train.py flags
  description: str


def write_synthetic_features(folder: Path, seed: int = 0) -> None:
  """Random features of the Wikipedia shapes in the `features` builder's layout."""
  rng = np.random.default_rng(seed)
  for split, n in (("train", WIKI_TRAIN), ("test", WIKI_TEST)):
    d = folder / split
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "image.npy", rng.random((n, WIKI_D_IMG), dtype=np.float32))
    np.save(d / "text.npy", rng.random((n, WIKI_D_TXT), dtype=np.float32))
    np.save(d / "labels.npy", rng.integers(0, WIKI_CLASSES, n))


def run_data(tmp: Path) -> RunData:
  """The real Wikipedia preset when $MSCROSS_DATA_DIR holds wikipedia/, else random features of
  the same shapes through the `features` builder."""
  data_dir = os.environ.get("MSCROSS_DATA_DIR")
  if data_dir and (Path(data_dir) / "wikipedia").is_dir():
    return RunData("wikipedia", (), f"the Wikipedia preset ({data_dir}/wikipedia)")
  folder = tmp / "synthetic_features"
  write_synthetic_features(folder)
  return RunData(
    "features",
    (f"--config.data.data_dir={folder}", "--config.train.patience=0"),
    f"random features of the Wikipedia shapes ({WIKI_TRAIN} train, {WIKI_TEST} test, 10% of "
    "train carved as validation) through the `features` builder: no wikipedia/ under "
    "$MSCROSS_DATA_DIR",
  )


def run_config(method: str, data: RunData):
  """The config train.py builds for `method` on `data` (used for shapes and the reference)."""
  config = presets.build(method, data.name)
  for flag in data.flags:
    key, value = flag.removeprefix("--config.").split("=", 1)
    if key == "data.data_dir":
      config.data.data_dir = value
  return config


def prepared_train_split(config) -> Split:
  """The normalised training split of `config`, prepared once here, so that no timed train.py
  pays for building the dataset cache."""
  source = inputs.DataSource.of(config)
  raw, _ = source.load(("train",))
  return source.fit(raw["train"])(raw["train"], "train")


def train_py(
  method: str,
  data: RunData,
  *,
  steps: int,
  population_size: int,
  workdir: Path,
  jax_cache: Path,
  compilation_cache: bool = True,
  extra_flags: tuple[str, ...] = (),
) -> dict:
  """Runs train.py to the end in a fresh workdir; its wall and CPU time and metrics.json's
  start-up and training seconds."""
  cmd = [
    sys.executable,
    str(TRAIN_PY),
    f"--config={CONFIG_PY}:method={method},dataset={data.name}",
    f"--workdir={workdir}",
    f"--config.train.steps={steps}",
    f"--config.train.eval_every={min(EVAL_EVERY, steps)}",
    f"--config.train.checkpoint_every={min(CHECKPOINT_EVERY, steps)}",
    f"--config.population.size={population_size}",
    *data.flags,
    *extra_flags,
  ]
  if not compilation_cache:
    cmd.append("--nocompilation_cache")
  env = dict(os.environ, MSCROSS_JAX_CACHE_DIR=str(jax_cache))
  log = workdir.parent / f"{workdir.name}.log"
  with open(log, "w") as out, CpuMeter("children") as meter:
    rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
  if rc:
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise RuntimeError(f"{' '.join(cmd)} exited with {rc}; the end of {log}:\n{tail}")
  metrics = json.loads(Path(layout.path(str(workdir), layout.METRICS)).read_text())
  return {
    "method": method,
    "population": population_size,
    "steps": int(metrics["steps"]),
    "compilation_cache": compilation_cache,
    "wall_s": meter.result["wall_s"],
    "cpu_s": meter.result["cpu_s"],
    "startup_s": metrics["startup_seconds"],
    "train_s": metrics["train_seconds"],
    "test_avg_map": metrics.get("test", {}).get("avg_map"),
    "cpu": meter.result,
  }


def python_c(code: str) -> dict:
  """Wall and CPU seconds of `python -c code`: the floor under a process's start-up."""
  with CpuMeter("children") as meter:
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
  return {"code": code, "wall_s": meter.result["wall_s"], "cpu_s": meter.result["cpu_s"]}


def section_time_to_model(args, out: dict, data: RunData, tmp: Path) -> tuple[list[str], list]:
  """Section 3: whole train.py processes, 1 seed and 5; the PyTorch DSCMR reference."""
  runs = []
  for i, method in enumerate(args.methods):
    steps = args.dscmr_steps if method == "dscmr" else args.gan_steps
    # Alternate which size runs first, so that a drift in the load does not always favour one.
    sizes = (1, args.seeds) if i % 2 == 0 else (args.seeds, 1)
    for size in sizes:
      tag = f"{method}_p{size}"
      print(f"  train.py {method} population {size}, {steps} steps ...", flush=True)
      runs.append(
        train_py(
          method,
          data,
          steps=steps,
          population_size=size,
          workdir=tmp / f"s3_{tag}",
          jax_cache=tmp / f"s3_jax_{tag}",
        )
      )
  by = {(r["method"], r["population"]): r for r in runs}
  reference = None
  if dscmr.torch is not None and "dscmr" in args.methods:
    config = run_config("dscmr", data)
    train = prepared_train_split(config)
    print(f"  PyTorch DSCMR reference, {args.dscmr_steps} steps x {args.seeds} runs ...")
    five = dscmr.torch_reference_runs(config, train, args.dscmr_steps, list(range(args.seeds)))
    reference = {"sequential": five, "torch_threads": dscmr.torch.get_num_threads()}
    reference["import_torch"] = python_c("import torch")

  targets = []
  lines = [
    f"## 3. Time to a finished model: whole train.py processes, 1 seed and {args.seeds} seeds",
    "",
    f"Data: {data.description}. Each run: a fresh workdir and an empty persistent compilation "
    f"cache (a first run), evaluation every {EVAL_EVERY} steps and at the end, then the final "
    "validation and test scoring of every member. Wall = the whole process; start-up = "
    "metrics.json's `startup_seconds` (process start to the first trained step); train = its "
    "`train_seconds` (first step's compilation, training and evaluations). Steps/s end to end = "
    "members x steps / wall.",
    "",
    "| method | seeds | steps | wall s | CPU s | start-up s | train s | model-steps/s end to end "
    "| test avg mAP (mean) | load after | other cores |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in runs:
    r["model_steps_per_s"] = r["population"] * r["steps"] / r["wall_s"]
    amap = "n/a" if r["test_avg_map"] is None else f"{r['test_avg_map']:.4f}"
    lines.append(
      f"| {r['method']} | {r['population']} | {r['steps']} | {r['wall_s']:.1f} | "
      f"{r['cpu_s']:.1f} | {r['startup_s']:.1f} | {r['train_s']:.1f} | "
      f"{r['model_steps_per_s']:.1f} | {amap} | {r['cpu']['loadavg_after'][0]:.2f} | "
      f"{r['cpu'].get('other_cores', float('nan')):.2f} |"
    )
  lines += ["", f"### {args.seeds} seeds against 1: wall-time ratio", ""]
  lines += [
    f"| method | wall {args.seeds} seeds / 1 seed | CPU {args.seeds} seeds / 1 seed | saving "
    f"over {args.seeds} one-seed runs one after the other (wall) |",
    "| --- | ---: | ---: | ---: |",
  ]
  for method in args.methods:
    one, many = by[(method, 1)], by[(method, args.seeds)]
    ratio = many["wall_s"] / one["wall_s"]
    lines.append(
      f"| {method} | {ratio:.2f}x | {many['cpu_s'] / one['cpu_s']:.2f}x | "
      f"{args.seeds * one['wall_s'] / many['wall_s']:.2f}x |"
    )
    if methods.get(method).adversarial and args.seeds == 5:
      targets.append(
        _target(
          f"{TARGET_GAN_SEEDS} ({method}, {one['steps']} steps)",
          ratio <= 2.0,
          f"{ratio:.2f}x ({many['wall_s']:.1f} s / {one['wall_s']:.1f} s)",
        )
      )
  lines.append("")
  if reference is not None:
    five = reference["sequential"]
    steps = args.dscmr_steps
    t_one, t_five = five["walls_s"][0], sum(five["walls_s"])
    mine_one, mine_five = by[("dscmr", 1)], by[("dscmr", args.seeds)]
    r_one = t_one / mine_one["wall_s"]
    r_five = t_five / mine_five["wall_s"]
    reference.update({"ratio_one": r_one, "ratio_five": r_five})
    lines += [
      f"### DSCMR against the PyTorch reference, {steps} steps, batch "
      f"{int(run_config('dscmr', data).train.batch_size)}",
      "",
      "The PyTorch reference runs in this process, torch already imported, with "
      f"{reference['torch_threads']} threads (the default): per run it builds the model and "
      "Adam, then trains on shuffled batches of the same training split; the 1-run figure is "
      f"the first of the {args.seeds} runs. It does no evaluation. "
      f"A separate `python -c 'import torch'` took {reference['import_torch']['wall_s']:.1f} s, "
      "which a PyTorch script would add once per process.",
      "",
      "| run | wall s | steps/s | mscross wall s | mscross model-steps/s | mscross / PyTorch |",
      "| --- | ---: | ---: | ---: | ---: | ---: |",
      f"| 1 run | {t_one:.1f} | {steps / t_one:.2f} | {mine_one['wall_s']:.1f} | "
      f"{mine_one['model_steps_per_s']:.2f} | **{r_one:.2f}x** |",
      f"| {args.seeds} runs one after the other vs {args.seeds} seeds | {t_five:.1f} | "
      f"{args.seeds * steps / t_five:.2f} | {mine_five['wall_s']:.1f} | "
      f"{mine_five['model_steps_per_s']:.2f} | **{r_five:.2f}x** |",
      "",
      f"PyTorch per-run walls: {', '.join(f'{w:.1f}' for w in five['walls_s'])} s; CPU during "
      f"the {args.seeds} runs: {describe_cpu(five['cpu'])}.",
      "",
    ]
    steady = _steady_dscmr(out, args.seeds)
    if steady:
      lines += [
        "Training alone, start-up excluded (the device loop of sections 1-2, random data): "
        + ", ".join(f"P={p} {rate:.2f} model-steps/s" for p, rate in steady.items())
        + f", against {args.seeds * steps / t_five:.2f} steps/s for these PyTorch runs.",
        "",
      ]
    if 1 in steady and args.seeds in steady:
      # What a full-length run would take: the measured process plus the remaining steps at
      # the steady-state rates (the extra evaluations are left out), against PyTorch's rate.
      full = int(presets.build("dscmr", "wikipedia").train.steps)
      rest = max(full - steps, 0)
      m1 = mine_one["wall_s"] + rest / steady[1]
      m5 = mine_five["wall_s"] + rest * args.seeds / steady[args.seeds]
      p1, p5 = t_one * full / steps, t_five * full / steps
      reference["projected_full_length"] = {
        "steps": full,
        "mscross_one_s": m1,
        "mscross_seeds_s": m5,
        "torch_one_s": p1,
        "torch_sequential_s": p5,
      }
      lines += [
        f"Projected to the preset's {full} steps (the measured runs plus the remaining steps at "
        f"those rates, evaluations left out): 1 run mscross {m1:.0f} s vs PyTorch {p1:.0f} s "
        f"({p1 / m1:.2f}x); {args.seeds} seeds {m5:.0f} s vs {args.seeds} PyTorch runs "
        f"{p5:.0f} s ({p5 / m5:.2f}x).",
        "",
      ]
    targets.append(
      _target(
        f"{TARGET_DSCMR_ONE} ({steps} steps, whole process)",
        r_one >= 2.0,
        f"{r_one:.2f}x (mscross {mine_one['model_steps_per_s']:.2f} vs PyTorch "
        f"{steps / t_one:.2f} steps/s)",
      )
    )
    if args.seeds == 5:
      targets.append(
        _target(
          f"{TARGET_DSCMR_FIVE} ({steps} steps each, whole process)",
          r_five >= 4.0,
          f"{r_five:.2f}x (mscross {mine_five['wall_s']:.1f} s vs PyTorch {t_five:.1f} s)",
        )
      )
  elif "dscmr" in args.methods:
    lines += ["PyTorch is not installed: no reference runs.", ""]
  out["time_to_model"] = {
    "data": dataclasses.asdict(data),
    "gan_steps": args.gan_steps,
    "dscmr_steps": args.dscmr_steps,
    "runs": runs,
    "torch_reference": reference,
  }
  return lines, targets


def _steady_dscmr(out: dict, seeds: int) -> dict[int, float]:
  """DSCMR's steady-state model-steps/s by population size from sections 1 and 2, if they ran."""
  rates = {}
  loop = out.get("dscmr", {}).get("steady_state", {}).get("mscross_loop")
  if loop:
    rates[1] = loop["median"]
  for row in out.get("populations", {}).get("rows", {}).values():
    if row["method"] == "dscmr" and row["population"] in (1, seeds):
      rates[row["population"]] = row["model_steps_per_s"]["median"]
  return dict(sorted(rates.items()))


def section_startup(args, out: dict, data: RunData, tmp: Path) -> tuple[list[str], list]:
  """Section 4: the same preset started cold, warm and without the compilation cache."""
  method, steps = args.startup_method, args.startup_steps
  cache = tmp / "s4_jax_cache"
  runs = {}
  for name, flag in (("cold", True), ("warm", True), ("no cache", False)):
    print(f"  train.py {method} ({name}) ...", flush=True)
    runs[name] = train_py(
      method,
      data,
      steps=steps,
      population_size=1,
      workdir=tmp / f"s4_{name.replace(' ', '_')}",
      jax_cache=cache if flag else tmp / "s4_unused_cache",
      compilation_cache=flag,
    )
  entries = sum(1 for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0
  # tensorboardX, which the trainer imports before the first step, imports torch when it is
  # installed (the bench extra installs it).
  floors = [
    python_c("import jax"),
    python_c("from mscross.training import trainer"),
    python_c("import tensorboardX"),
  ]
  warm = runs["warm"]["startup_s"]
  target = _target(
    f"{TARGET_STARTUP} ({method})",
    warm <= 3.0,
    f"{warm:.1f} s (cold {runs['cold']['startup_s']:.1f} s)",
  )
  out["startup"] = {
    "method": method,
    "steps": steps,
    "runs": runs,
    "cache_files_after": entries,
    "import_floors": floors,
  }
  lines = [
    f"## 4. Start-up: train.py {method}, {steps} steps, population 1",
    "",
    f"Data: {data.description}. Cold: an empty persistent compilation cache "
    "(`MSCROSS_JAX_CACHE_DIR`); warm: the same command again (new workdir), with the cache the "
    "cold run filled; no cache: `--nocompilation_cache`.",
    "",
    "| run | start-up s (to first step) | process wall s | process CPU s | train s | load after "
    "| other cores |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for name, r in runs.items():
    lines.append(
      f"| {name} | {r['startup_s']:.2f} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
      f"{r['train_s']:.2f} | {r['cpu']['loadavg_after'][0]:.2f} | "
      f"{r['cpu'].get('other_cores', float('nan')):.2f} |"
    )
  lines += [
    "",
    f"The cold run left {entries} files in the cache. Floors under any start-up: "
    + "; ".join(f"`python -c '{f['code']}'` {f['wall_s']:.2f} s wall" for f in floors)
    + (
      " (torch is installed here, and tensorboardX imports it)."
      if dscmr.torch is not None
      else " (torch is not installed)."
    ),
    "",
  ]
  return lines, [target]
