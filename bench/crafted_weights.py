"""What each crafted weight file of tests/extractors/torch_files.py costs the reader: wall seconds,
the peak memory it adds, and how it ends. Each file is read in a process of its own, under a
memory cap and a time limit, so a reader that does not hold can be measured too.

  python bench/crafted_weights.py                        # this checkout's reader
  python bench/crafted_weights.py --reader old.py        # another copy of torch_pickle.py, e.g.
      git show 4a2e371:mscross/extractors/torch_pickle.py > /tmp/old_reader.py

Writes bench/results/crafted_weights.{md,json} (with --out, elsewhere). The targets: one
DataError line in under 2 s and under 200 MB of added peak memory for every file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from provenance import ROOT, header, provenance

sys.path.insert(0, os.path.join(ROOT, "tests", "extractors"))
import torch_files  # noqa: E402 - the crafted files live with the tests that use them

READER = os.path.join(ROOT, "mscross", "extractors", "torch_pickle.py")
SECONDS_TARGET, MB_TARGET = 2.0, 200.0

# Runs in the child: import the reader, note the peak resident memory, read the file, report.
CHILD = r"""
import importlib.util, json, resource, sys, time
spec = importlib.util.spec_from_file_location("reader", sys.argv[1])
reader = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reader)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
  reader.load(sys.argv[2])
  outcome, kind = "loaded without an error", "none"
except BaseException as exc:
  outcome, kind = str(exc), type(exc).__name__
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "added_mb": (peak - before) / 1024, "error": kind,
                  "lines": len(outcome.splitlines()), "printable": outcome.isprintable(),
                  "message": outcome[:300]}))
"""


def measure(reader: str, path: Path, cap_gb: float, timeout: float) -> dict:
  cap = int(cap_gb * (1 << 30))

  def limit():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

  try:
    proc = subprocess.run(
      [sys.executable, "-c", CHILD, reader, str(path)],
      capture_output=True,
      text=True,
      timeout=timeout,
      preexec_fn=limit,
      cwd=ROOT,
    )
  except subprocess.TimeoutExpired:
    return {"seconds": timeout, "error": "timeout", "message": f"still running after {timeout} s"}
  lines = proc.stdout.strip().splitlines()
  if proc.returncode or not lines:
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return {"seconds": None, "error": f"exit {proc.returncode}", "message": tail[:300]}
  return json.loads(lines[-1])


def verdict(row: dict) -> str:
  ok = (
    row.get("error") == "DataError"
    and row.get("lines") == 1
    and row.get("printable")
    and row["seconds"] < SECONDS_TARGET
    and row["added_mb"] < MB_TARGET
  )
  return "yes" if ok else "no"


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--reader", default=READER, help="the torch_pickle.py to measure")
  p.add_argument("--cap-gb", type=float, default=8.0, help="address-space cap of each reader")
  p.add_argument("--timeout", type=float, default=120.0, help="seconds before a read is stopped")
  p.add_argument("--only", default="", help="the files whose description holds this text")
  p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "crafted_weights"))
  args = p.parse_args(argv)
  prov = provenance("bench/crafted_weights.py", sys.argv[1:] if argv is None else argv)
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for name, build in torch_files.CRAFTED.items():
      if args.only not in name:
        continue
      path = build(Path(folder))
      row = {
        "file": name,
        "bytes": path.stat().st_size,
        **measure(args.reader, path, args.cap_gb, args.timeout),
      }
      row["meets_targets"] = verdict(row)
      rows.append(row)
      path.unlink()
      seconds = "-" if row["seconds"] is None else f"{row['seconds']:.3f} s"
      added = f"{row['added_mb']:.1f} MB" if "added_mb" in row else "-"
      print(f"{name}: {seconds}, {added}, {row['error']}: {row['message'][:120]}", flush=True)
  table = [
    "| crafted file | bytes | seconds | added peak memory | ends in | one printable line | "
    "within 2 s and 200 MB |",
    "| --- | ---: | ---: | ---: | --- | --- | --- |",
  ]
  for r in rows:
    seconds = "-" if r["seconds"] is None else f"{r['seconds']:.3f}"
    added = f"{r['added_mb']:.1f} MB" if "added_mb" in r else "-"
    line = "yes" if r.get("lines") == 1 and r.get("printable") else "no"
    table.append(
      f"| {r['file']} | {r['bytes']:,} | {seconds} | {added} | {r['error']} | {line} | "
      f"{r['meets_targets']} |"
    )
  reader = os.path.relpath(args.reader, ROOT)
  report = (
    f"# Crafted weight files\n\n{header(prov)}\nReader: `{reader}`; each file read in its own "
    f"process, address space capped at {args.cap_gb:g} GB, stopped after {args.timeout:g} s. "
    "Added peak memory: the reader process's peak resident set after the read, less its peak "
    "before it.\n\n" + "\n".join(table) + "\n"
  )
  print("\n" + report)
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(f"{args.out}.md").write_text(report)
  Path(f"{args.out}.json").write_text(json.dumps({"provenance": prov, "rows": rows}, indent=1))
  return 0 if all(r["meets_targets"] == "yes" for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
