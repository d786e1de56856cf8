"""Section 2 of bench/train_speed.py: populations. Every method's Wikipedia preset at several
population sizes, the members of different seeds trained in one device loop: model-steps/s
(members x steps / s) and the speed-up over one member.
"""

from __future__ import annotations

import numpy as np
import speed_workloads as workloads
from speed_timing import Runner, fmt_rate, summarise, time_runners
from speed_workloads import Problem


def section_populations(
  args, problem: Problem, out: dict, reuse: dict[tuple[str, int], Runner]
) -> list[str]:
  """Section 2; `reuse` maps (method, P) to a loop runner already built for that preset."""
  configs = {m: workloads.preset(m) for m in args.methods}
  keys = [(m, p) for m in args.methods for p in args.sizes]
  runners = [reuse.get(k) or workloads.mscross_loop(configs[k[0]], problem, k[1]) for k in keys]
  # One member's step is the same program whatever P is: one estimate per method.
  flops = {}
  for (method, _), runner in zip(keys, runners, strict=True):
    if method not in flops:
      flops[method] = workloads.step_cost_analysis(runner.info["program"], problem)
  # No warm-up unit: nothing else competes for the threads here, and time is short.
  units, seconds, meter = time_runners(
    runners, args.seconds, workloads.MAX_STEPS_PER_REPEAT, args.method_repeats, warmup=False
  )
  rows = {}
  for (method, size), runner, n, secs in zip(keys, runners, units, seconds, strict=True):
    c = configs[method]
    rows[f"{method}/P={size}"] = {
      "method": method,
      "population": size,
      "batch_size": int(c.train.batch_size),
      "adversary": bool(c.adv.enabled),
      "params_per_member": runner.info["params_per_member"],
      "compile_s": runner.compile_s,
      "steps_per_s": summarise(n, secs),
      "model_steps_per_s": summarise(n, secs, scale=size),
      "xla_flops_per_member_step": flops[method],
    }
  for row, runner in zip(rows.values(), runners, strict=True):
    # A check that the loop trained every member as often as it was asked to.
    row["member_steps"] = np.asarray(runner.info["box"]["state"].step).tolist()
  for row in rows.values():
    one = rows.get(f"{row['method']}/P=1")
    if one is not None:
      row["speedup_over_p1"] = row["model_steps_per_s"]["median"] / one["steps_per_s"]["median"]
      row["speedup_over_p1_per_cpu_s"] = (
        row["model_steps_per_s"]["per_cpu_s"] / one["steps_per_s"]["per_cpu_s"]
      )
  out["populations"] = {"sizes": list(args.sizes), "rows": rows, "cpu": meter.result}
  section1 = out.get("dscmr", {})
  matmul = section1.get("steady_state", {}).get("matmul_jax", {}).get("median")
  lines = [
    "## 2. Populations: each Wikipedia preset's TrainLoop at population sizes "
    + ", ".join(map(str, args.sizes))
    + ", random data",
    "",
    "Members differ by seed (seed, seed + 1, ...). A model-step is one step of one member: "
    "model-steps/s = P x steps/s.",
    "",
    "| method | P | batch | adversary | params per member | compile wall s | compile CPU s "
    "| steps per repeat | steps/s median | model-steps/s median | min | max | spread "
    "| model-steps per CPU-s | speed-up over P=1 (wall) | (CPU-s) | XLA GFLOP/s |",
    "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
    "| ---: | ---: | ---: | ---: |",
  ]
  for r in rows.values():
    s, ms, c = r["steps_per_s"], r["model_steps_per_s"], r["compile_s"]
    speed = r.get("speedup_over_p1")
    speed_cpu = r.get("speedup_over_p1_per_cpu_s")
    f = r["xla_flops_per_member_step"]
    lines.append(
      f"| {r['method']} | {r['population']} | {r['batch_size']} | "
      f"{'on' if r['adversary'] else 'off'} | {r['params_per_member']:,} | {c['wall']:.2f} | "
      f"{c['cpu']:.2f} | {s['units_per_repeat']} | {s['median']:.2f} | {fmt_rate(ms)} | "
      + ("n/a | n/a |" if speed is None else f"{speed:.2f}x | {speed_cpu:.2f}x |")
      + (" n/a |" if f is None else f" {f * ms['median'] / 1e9:.1f} |")
    )
  lines += [
    "",
    "XLA GFLOP/s = XLA's FLOP estimate of one member's step ("
    + ", ".join(
      f"{m} {f / 1e6:.1f} MFLOP" if f is not None else f"{m} n/a" for m, f in flops.items()
    )
    + ") x model-steps/s"
    + ("." if matmul is None else f", against {matmul:.1f} GFLOP/s for section 1's matmul."),
  ]
  dscmr = [r for r in rows.values() if r["method"] == "dscmr"]
  roofline = section1.get("roofline_steps_per_s")
  lines.append("")
  if dscmr and roofline:
    lines.append(
      f"DSCMR model-steps/s against section 1's roofline ({roofline:.2f} steps/s): "
      + ", ".join(
        f"P={r['population']} {r['model_steps_per_s']['median'] / roofline:.0%}" for r in dscmr
      )
      + "."
    )
    lines.append("")
  reused = " The dscmr P=1 row reuses section 1's compiled loop." if ("dscmr", 1) in reuse else ""
  lines += [
    f"Params: generator and discriminator. Compile: the first call of the loop (zero steps). "
    f"{args.method_repeats} interleaved repeats of about {args.seconds:g} s each.{reused} CPU "
    f"during the repeats: {meter.describe()}.",
    "",
  ]
  return lines
