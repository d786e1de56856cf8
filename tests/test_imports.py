"""The package's rooms import one way: no module imports a room above its own, and no import
circle exists between modules (function-level imports included). Read from the source with
`ast`, so the check sees every import, whichever runs first."""

import ast
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "mscross"
# Lowest first: a room may import its own level and those below it, never one above.
LEVELS = [
  {"mscross.errors", "mscross.dotted", "mscross.atomic", "mscross.caches"},
  {"mscross.extractors"},
  {"mscross.data", "mscross.metrics"},
  {"mscross.methods"},
  {"mscross.config", "mscross.presets"},
  # What training and inference both need: the workdir, checkpoints, inputs, embedding.
  {"mscross.runs"},
  {"mscross.training", "mscross.retrieval", "mscross.baselines"},
  {"mscross.tuning", "mscross.cli", "mscross"},
]
# Rooms of one level that never import each other: inference stands apart from training.
APART = [("mscross.retrieval", "mscross.training"), ("mscross.baselines", "mscross.training")]
# Scripts that use a trained model or only data, never the training machinery.
WITHOUT_TRAINING = ("eval.py", "extract.py")


def _module_name(path: Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
  """The mscross modules `path` imports, anywhere in the file."""
  package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.split(".")[0] == "mscross"}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
      if base.split(".")[0] != "mscross":
        continue
      for alias in node.names:
        # `from mscross import data` imports the module mscross.data; `from x import name` x.
        candidate = f"{base}.{alias.name}"
        found.add(candidate if _exists(candidate) else base)
  return {m.rstrip(".") for m in found} - {name}


def _exists(name: str) -> bool:
  path = REPO.joinpath(*name.split("."))
  return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  return {name: _imports(path, name) & set(modules) for name, path in modules.items()}


def _room(module: str) -> str:
  for level in LEVELS:
    for room in sorted(level, key=len, reverse=True):
      if module == room or module.startswith(room + "."):
        return room
  raise AssertionError(f"{module} is in no room of LEVELS")


def _level(module: str) -> int:
  room = _room(module)
  return next(i for i, level in enumerate(LEVELS) if room in level)


def test_every_module_is_in_a_room():
  for module in _graph():
    _room(module)


def test_no_module_imports_a_room_above_its_own():
  upward = [
    f"{a} (level {_level(a)}) imports {b} (level {_level(b)})"
    for a, targets in _graph().items()
    for b in targets
    if _level(b) > _level(a)
  ]
  assert not upward, upward


def test_inference_and_data_jobs_never_import_training():
  graph = _graph()
  crossing = [
    f"{a} imports {b}"
    for a, targets in graph.items()
    for b in targets
    for x, y in APART
    if {_room(a), _room(b)} == {x, y}
  ]
  for script in WITHOUT_TRAINING:
    crossing += [
      f"{script} imports {b}"
      for b in _imports(REPO / script, script[:-3])
      if b == "mscross.training" or b.startswith("mscross.training.")
    ]
  assert not crossing, crossing


def test_no_import_circle():
  graph = _graph()
  state: dict[str, int] = {}  # 1: on the current path, 2: done

  def visit(node, path):
    state[node] = 1
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        raise AssertionError(" -> ".join([*path[path.index(nxt) :], nxt]))
      if nxt not in state:
        visit(nxt, [*path, nxt])
    state[node] = 2

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
  # A module of the methods room that reaches up into training twice: it must be caught.
  path = tmp_path / "example.py"
  path.write_text(
    "from ..metrics import similarity\n\ndef f():\n  from mscross.training import trainer\n"
  )
  found = _imports(path, "mscross.methods.example")
  assert found == {"mscross.metrics.similarity", "mscross.training.trainer"}
  assert _level("mscross.training.trainer") > _level("mscross.methods.example")
