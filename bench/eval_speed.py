"""Evaluation speed and memory: `metrics.ranking_metrics` against a plain NumPy loop,
`metrics.instance_metrics` (unlabelled pairs) and `retrieval.Index.search`.

    python bench/eval_speed.py [--sizes 5000 20000 100000] [--quick] [--out-dir DIR]

For every size N: N random queries and N gallery items (d = 256, float32, 10 classes, one random
label each). `ranking_metrics` computes mAP@all, mAP@R, mAP@50 and P@{1,5,10,50,100} in one call;
its first call (compile plus one block of queries) is timed apart from the full, compiled run.
The reference is a plain NumPy loop: one argsort per query, mAP@all only (ties as scikit-learn).
It runs over every query up to --loop-full, over --loop-queries queries above that (the total is
extrapolated linearly and marked so), and not at all above --loop-max; once with one BLAS thread
and once with OpenBLAS's default threads, which spin on a busy machine and made each query's
small matrix-vector product several times slower here. Speed-ups are against the faster of the
two. `instance_metrics` (Recall@{1,5,10}, median and mean rank, MRR of N pairs, the i-th query's
pair being the i-th gallery item) is timed at the same sizes, first call apart, with the pair ranks
of a few queries checked against an argsort. Every measurement runs in its own subprocess, whose
peak RSS (getrusage ru_maxrss) is that measurement's alone. `Index.search` top-10 is timed on the
largest size.

The machine is shared: each figure comes with the load average and the CPU time this process
used, so that wall times taken under different load can be compared. Writes
eval_speed.{md,json} into --out-dir (default bench/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM, NUM_CLASSES, TOP_K = 256, 10, 10
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The targets this benchmark reports on.
TARGET_SIZE, TARGET_SECONDS, TARGET_SPEEDUP = 20_000, 20.0, 50.0
RSS_SIZE, RSS_LIMIT_GB = 100_000, 4.0


# ----------------------------------------------------------------------------------------------
# Measurements, each run in a child process


def problem(n: int, seed: int = 0):
  """Queries [n, DIM], gallery [n, DIM] (float32) and their class ids [n] (int64)."""
  rng = np.random.default_rng(seed)
  queries = rng.standard_normal((n, DIM), dtype=np.float32)
  gallery = rng.standard_normal((n, DIM), dtype=np.float32)
  return queries, gallery, rng.integers(0, NUM_CLASSES, n), rng.integers(0, NUM_CLASSES, n)


def one_hot(classes: np.ndarray) -> np.ndarray:
  return np.eye(NUM_CLASSES, dtype=np.float32)[classes]


class Clock:
  """Wall and CPU seconds (all threads of this process) over a `with` block."""

  def __enter__(self) -> Clock:
    self.load_before = os.getloadavg()
    self._t, self._c = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *exc) -> None:
    self.wall = time.perf_counter() - self._t
    self.cpu = time.process_time() - self._c
    self.load_after = os.getloadavg()

  def record(self) -> dict:
    return {
      "wall_s": self.wall,
      "cpu_s": self.cpu,
      "loadavg_before": [round(x, 2) for x in self.load_before],
      "loadavg_after": [round(x, 2) for x in self.load_after],
    }


def peak_rss_gb() -> float:
  # ru_maxrss is in KiB on Linux (bytes on macOS).
  scale = 1 if sys.platform == "darwin" else 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def child_metrics(n: int) -> dict:
  from mscross import metrics

  queries, gallery, q_classes, g_classes = problem(n)
  q_labels, g_labels = one_hot(q_classes), one_hot(g_classes)
  block = metrics.auto_block_size(n)
  # The same block and gallery shapes as the full run, so the full run compiles nothing.
  with Clock() as first:
    metrics.ranking_metrics(queries[:block], gallery, q_labels[:block], g_labels)
  with Clock() as full:
    result = metrics.ranking_metrics(queries, gallery, q_labels, g_labels)
  return {
    "block_size": block,
    "first_call": first.record(),
    "steady": full.record(),
    "map": result["map"],
    "map@R": result["map@R"],
    "p@10": result["p@10"],
    "peak_rss_gb": peak_rss_gb(),
  }


def child_instance(n: int) -> dict:
  from mscross import metrics

  queries, gallery, _, _ = problem(n)
  # Queries must pair with gallery rows one to one, so no smaller call compiles the full run's
  # shapes: the first call is a whole run, compile included, and the second the compiled one.
  with Clock() as first:
    metrics.instance_metrics(queries, gallery, ks=(1, 5, 10))
  with Clock() as full:
    result = metrics.instance_metrics(queries, gallery, ks=(1, 5, 10))
  # Spot check on the first pairs: the stable rank of every 16th pair from a direct argsort.
  m = min(n, 2048)
  ranks, _ = metrics.instance_ranks(queries[:m], gallery[:m])
  rows = np.arange(0, m, 16)
  q = queries[rows] / np.linalg.norm(queries[rows], axis=1, keepdims=True)
  g = gallery[:m] / np.linalg.norm(gallery[:m], axis=1, keepdims=True)
  order = np.argsort(-(q.astype(np.float64) @ g.T.astype(np.float64)), axis=1, kind="stable")
  expected = np.argmax(order == rows[:, None], axis=1) + 1
  return {
    "first_call": first.record(),
    "steady": full.record(),
    "r@1": result["r@1"],
    "r@10": result["r@10"],
    "median_rank": result["median_rank"],
    "mrr": result["mrr"],
    "spot_check_rows": len(rows),
    "spot_check_equal_fraction": float(np.mean(ranks[rows] == expected)),
    "peak_rss_gb": peak_rss_gb(),
  }


def numpy_loop_map(queries, gallery, q_classes, g_classes) -> np.ndarray:
  """AP@all of every query: one argsort per query; tied items share the precision at the end of
  their tie group, as in scikit-learn."""
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
  positions = np.arange(len(g))
  aps = np.empty(len(q))
  for i in range(len(q)):
    s = g @ q[i]
    order = np.argsort(-s, kind="stable")
    s, relevant = s[order], g_classes[order] == q_classes[i]
    hits = np.cumsum(relevant)
    group_ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    end = group_ends[np.searchsorted(group_ends, positions)]
    aps[i] = np.sum(hits[end][relevant] / (end[relevant] + 1)) / hits[-1]
  return aps


def child_loop(n: int, num_queries: int) -> dict:
  from mscross import metrics

  queries, gallery, q_classes, g_classes = problem(n)
  sub = slice(0, num_queries)
  with Clock() as loop:
    aps = numpy_loop_map(queries[sub], gallery, q_classes[sub], g_classes)
  # The same queries through ranking_metrics: the two must agree.
  check = metrics.ranking_metrics(
    queries[sub], gallery, one_hot(q_classes[sub]), one_hot(g_classes), ks=(1,), map_ks=(1,)
  )
  return {
    "queries_timed": num_queries,
    "timed": loop.record(),
    "map": float(np.mean(aps)),
    "map_ranking_metrics": check["map"],
    "peak_rss_gb": peak_rss_gb(),
  }


def child_search(n: int, k: int) -> dict:
  from mscross.retrieval.index import Index

  queries, gallery, _, _ = problem(n)
  with Clock() as build:
    index = Index.from_arrays(gallery)
  with Clock() as first:
    index.search(queries[:1024], k)
  with Clock() as full:
    scores, indices = index.search(queries, k)
  # Spot check against a direct argsort.
  rows = np.arange(0, n, max(1, n // 16))
  unit = index.embeddings
  q = queries[rows] / np.linalg.norm(queries[rows], axis=1, keepdims=True)
  expected = np.argsort(-(q.astype(np.float64) @ unit.T), axis=1, kind="stable")[:, :k]
  return {
    "k": k,
    "build": build.record(),
    "first_call": first.record(),
    "steady": full.record(),
    "spot_check_rows": len(rows),
    "spot_check_equal_fraction": float(np.mean(indices[rows] == expected)),
    "scores_descending": bool(np.all(np.diff(scores, axis=1) <= 0)),
    "peak_rss_gb": peak_rss_gb(),
  }


# ----------------------------------------------------------------------------------------------
# Driver


BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def run_child(*args: str, blas_threads: int | None = None) -> dict:
  cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
  env = dict(os.environ)
  if blas_threads is not None:
    env.update({name: str(blas_threads) for name in BLAS_THREAD_VARIABLES})
  prefix = "" if blas_threads is None else f"OPENBLAS_NUM_THREADS={blas_threads} ... "
  print(f"  $ {prefix}{' '.join(cmd[1:])}", flush=True)
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
  if proc.returncode != 0:
    raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
  import jax

  model = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {
    "cpu_model": model,
    "logical_cores": os.cpu_count(),
    "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    "python": platform.python_version(),
    "numpy": np.__version__,
    "jax": jax.__version__,
    "jax_backend": jax.default_backend(),
    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
  }


def _s(x: float | None) -> str:
  return "-" if x is None else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _load(record: dict) -> str:
  return f"{record['loadavg_before'][0]:.1f}->{record['loadavg_after'][0]:.1f}"


def summarise(report: dict) -> str:
  m = report["machine"]
  lines = [
    "# mscross evaluation speed (bench/eval_speed.py)",
    "",
    f"- date: {report['date']}; mode: {report['mode']}",
    f"- CPU: {m['cpu_model']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), "
    f"{m['memory_gb']} GiB",
    f"- Python {m['python']}, NumPy {m['numpy']}, jax {m['jax']} (backend {m['jax_backend']})",
    f"- load average at start (1, 5, 15 min): {' '.join(str(x) for x in m['loadavg_at_start'])}",
    f"- data: N queries x N gallery items, d = {DIM}, float32, {NUM_CLASSES} classes, one random "
    "label each; ranking_metrics computes mAP@all, mAP@R, mAP@50, P@{1,5,10,50,100} in one call "
    "(block_size=None, chosen from the memory budget); the NumPy loop computes mAP@all only",
    "- the machine is shared with other work: `load` is the 1-min load average before->after a "
    "measurement, and `CPU s` the CPU time of all this process's threads, comparable across "
    "loads where wall times are not",
    "",
    "| N | block | first call s (compile + 1 block) | full run s | full run CPU s | load | "
    "NumPy loop s, 1 / default BLAS threads | loop basis | speed-up | peak RSS GB | "
    "mAP metrics / loop (same queries) |",
    "| ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | --- |",
  ]
  for row in report["sizes"]:
    met, loop = row["metrics"], row.get("loop")
    if loop is None:
      loop_s, basis, speedup, maps = "-", "skipped (too slow)", "-", "-"
    else:
      loop_s = " / ".join(_s(v["total_s"]) for v in row["loops"].values())
      basis = (
        "all queries"
        if loop["queries_timed"] == row["n"]
        else f"EXTRAPOLATED from {loop['queries_timed']} queries"
      )
      speedup = f"{row['speedup']:.1f}x"
      maps = f"{loop['map_ranking_metrics']:.5f} / {loop['map']:.5f} ({loop['queries_timed']} q)"
    lines.append(
      f"| {row['n']} | {met['block_size']} | {_s(met['first_call']['wall_s'])} | "
      f"{_s(met['steady']['wall_s'])} | {_s(met['steady']['cpu_s'])} | {_load(met['steady'])} | "
      f"{loop_s} | {basis} | {speedup} | {met['peak_rss_gb']:.2f} | {maps} |"
    )
  lines += [
    "",
    "`instance_metrics`, unlabelled pairs (query i's only relevant item is gallery item i): "
    "Recall@{1,5,10}, median and mean rank, MRR in one call, block_size=None. Its first call is "
    "a whole run, compile included; the stable ranks of every 16th of the first 2048 pairs are "
    "checked against an argsort.",
    "",
    "| N | first call s (compile + full run) | full run s | full run CPU s | load | peak RSS GB | "
    "r@1 / r@10 / median rank | ranks equal to argsort |",
    "| ---: | ---: | ---: | ---: | --- | ---: | --- | ---: |",
  ]
  for row in report["sizes"]:
    inst = row.get("instance")
    if inst is None:
      continue
    lines.append(
      f"| {row['n']} | {_s(inst['first_call']['wall_s'])} | {_s(inst['steady']['wall_s'])} | "
      f"{_s(inst['steady']['cpu_s'])} | {_load(inst['steady'])} | {inst['peak_rss_gb']:.2f} | "
      f"{inst['r@1']:.4f} / {inst['r@10']:.4f} / {inst['median_rank']:g} | "
      f"{inst['spot_check_equal_fraction']:.0%} of {inst['spot_check_rows']} |"
    )
  search = report.get("search")
  if search:
    lines += [
      "",
      f"`Index.search` top-{search['k']}, {search['n']} queries x {search['n']} gallery items: "
      f"build {_s(search['build']['wall_s'])} s, first call (compile + 1024 queries) "
      f"{_s(search['first_call']['wall_s'])} s, full search {_s(search['steady']['wall_s'])} s "
      f"wall / {_s(search['steady']['cpu_s'])} CPU s (load {_load(search['steady'])}), peak RSS "
      f"{search['peak_rss_gb']:.2f} GB; {search['spot_check_rows']} rows checked against an "
      f"argsort: {search['spot_check_equal_fraction']:.0%} equal.",
    ]
  elif report.get("search_skipped"):
    lines += ["", f"`Index.search`: {report['search_skipped']}"]
  lines += ["", "## Targets", ""]
  for target in report["targets"]:
    lines.append(f"- {target['name']}: {target['verdict']} ({target['detail']})")
  return "\n".join(lines) + "\n"


def evaluate_targets(report: dict) -> list[dict]:
  by_n = {row["n"]: row for row in report["sizes"]}
  out = []
  row = by_n.get(TARGET_SIZE)
  if row:
    wall = row["metrics"]["steady"]["wall_s"]
    cpu = row["metrics"]["steady"]["cpu_s"]
    out.append(
      {
        "name": f"{TARGET_SIZE} x {TARGET_SIZE} mAP@all <= {TARGET_SECONDS:.0f} s",
        "met": wall <= TARGET_SECONDS,
        "detail": f"full run {wall:.1f} s wall, {cpu:.1f} CPU s, "
        f"load {_load(row['metrics']['steady'])}",
      }
    )
    if "speedup" in row:
      out.append(
        {
          "name": f">= {TARGET_SPEEDUP:.0f}x faster than the NumPy loop at {TARGET_SIZE}",
          "met": row["speedup"] >= TARGET_SPEEDUP,
          "detail": f"{row['speedup']:.1f}x against the faster loop, "
          f"{row['loop_total_s']:.0f} s (extrapolated)",
        }
      )
  row = by_n.get(RSS_SIZE)
  if row:
    rss = row["metrics"]["peak_rss_gb"]
    out.append(
      {
        "name": f"{RSS_SIZE} x {RSS_SIZE} completes with peak RSS < {RSS_LIMIT_GB:.0f} GB",
        "met": rss < RSS_LIMIT_GB,
        "detail": f"peak RSS {rss:.2f} GB, full run {row['metrics']['steady']['wall_s']:.0f} s",
      }
    )
  for target in out:
    target["verdict"] = "MET" if target["met"] else "NOT MET"
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=None)
  parser.add_argument("--quick", action="store_true", help="small sizes: checks the script runs")
  parser.add_argument("--loop-full", type=int, default=5000, help="loop over every query up to N")
  parser.add_argument("--loop-max", type=int, default=20000, help="no loop above this N")
  parser.add_argument("--loop-queries", type=int, default=1000, help="queries timed above that")
  parser.add_argument("--search-size", type=int, default=None, help="default: the largest size")
  parser.add_argument("--no-search", action="store_true")
  parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
  parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.child:
    kind, *rest = args.child
    fn = {
      "metrics": child_metrics,
      "instance": child_instance,
      "loop": child_loop,
      "search": child_search,
    }[kind]
    print(json.dumps(fn(*(int(x) for x in rest))))
    return

  sizes = args.sizes or ([1000, 3000] if args.quick else [5000, 20000, 100000])
  if args.quick:
    args.loop_full, args.loop_queries = min(args.loop_full, 1000), min(args.loop_queries, 200)
  report = {
    "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    "mode": "quick" if args.quick else "full",
    "machine": machine_info(),
    "sizes": [],
  }
  for n in sizes:
    print(f"N = {n}", flush=True)
    row = {
      "n": n,
      "metrics": run_child("metrics", str(n)),
      "instance": run_child("instance", str(n)),
    }
    if n <= args.loop_max:
      num = n if n <= args.loop_full else min(n, args.loop_queries)
      loops = {
        "1 BLAS thread": run_child("loop", str(n), str(num), blas_threads=1),
        "default BLAS threads": run_child("loop", str(n), str(num)),
      }
      for loop in loops.values():
        loop["total_s"] = loop["timed"]["wall_s"] * n / num
      row["loops"] = loops
      row["loop"] = min(loops.values(), key=lambda loop: loop["total_s"])
      row["loop_total_s"] = row["loop"]["total_s"]
      row["speedup"] = row["loop_total_s"] / row["metrics"]["steady"]["wall_s"]
    report["sizes"].append(row)
  if args.no_search:
    report["search_skipped"] = "not run (--no-search)"
  else:
    n = args.search_size or max(sizes)
    print(f"Index.search top-{TOP_K}, N = {n}", flush=True)
    report["search"] = {"n": n, **run_child("search", str(n), str(TOP_K))}
  report["targets"] = evaluate_targets(report)

  text = summarise(report)
  print()
  print(text)
  args.out_dir.mkdir(parents=True, exist_ok=True)
  (args.out_dir / "eval_speed.md").write_text(text)
  (args.out_dir / "eval_speed.json").write_text(json.dumps(report, indent=2) + "\n")
  print(f"wrote {args.out_dir / 'eval_speed.md'} and eval_speed.json")


if __name__ == "__main__":
  main()
