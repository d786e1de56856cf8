"""What a benchmark result file records about where it came from: the commit (and whether the
tree was clean), package versions, Python, the CPU and its load, and the command."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "scikit-learn", "tokenizers", "pillow", "torch")


def git(*args: str) -> str:
  return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.machine()


def provenance(script: str, argv: list[str], packages=PACKAGES) -> dict:
  versions = {}
  for pkg in packages:
    try:
      versions[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      pass
  return {
    "commit": git("rev-parse", "HEAD"),
    # Result files are what a resumed benchmark rewrites as it goes; they cannot change a
    # figure, so only a change elsewhere makes the tree unclean.
    "tree_clean": git(
      "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results"
    )
    == "",
    "versions": versions,
    "python": sys.version.split()[0],
    "cpu": cpu_name(),
    "cores": os.cpu_count(),
    "load_average": [round(x, 2) for x in os.getloadavg()],
    "command": " ".join(["python", script, *argv]),
  }


def header(prov: dict) -> str:
  """The provenance as the opening lines of a Markdown report."""
  clean = "" if prov["tree_clean"] else " (with uncommitted changes)"
  versions = ", ".join(f"{k} {v}" for k, v in prov["versions"].items())
  return (
    f"Commit `{prov['commit'][:12]}`{clean}; `{prov['command']}`.\n"
    f"{prov['cpu']}, {prov['cores']} cores, load average {prov['load_average']} at the start; "
    f"Python {prov['python']}; {versions}.\n"
  )


def write_results(out: str, results: dict, markdown: str) -> None:
  """`<out>.json` and `<out>.md` of a benchmark, and the Markdown on standard output."""
  with open(out + ".json", "w") as f:
    json.dump(results, f, indent=1)
  with open(out + ".md", "w") as f:
    f.write(markdown)
  print(markdown)
