"""The package's shape: no import cycle, the method interface, no method names outside methods/."""

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vosjax import methods
from vosjax.methods import interface

PACKAGE = Path(__file__).resolve().parents[1] / "vosjax"


def _module_name(path: Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
  """module -> the vosjax modules it imports, at any level (function-level imports included).

  `from a.b import c` counts as importing `a.b.c` when that is a module, else `a.b`.
  """
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          anchor = package.split(".")
          anchor = anchor[: len(anchor) - node.level + 1]
          base = ".".join(anchor + ([base] if base else []))
        targets = [
          f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
        ]
      else:
        continue
      edges.update(t for t in targets if t in modules and t != name)
    graph[name] = edges
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [m0, m1, ..., m0], or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt) :] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_cycle_finder_finds_a_planted_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert find_cycle(graph) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  assert len(graph) > 40 and graph["vosjax.train"] >= {"vosjax.evaluation", "vosjax.methods"}
  assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_layers_import_only_downwards():
  """core/ knows no method, evaluation never calls the loop, models are plain modules."""
  graph = import_graph()
  loop = {
    "vosjax.main",
    "vosjax.train",
    "vosjax.segment",
    "vosjax.evaluate",
    "vosjax.bench",
    "vosjax.propagate",
  }
  for name, edges in graph.items():
    if name.startswith("vosjax.core"):
      assert not {e for e in edges if not e.startswith("vosjax.core")}, (name, edges)
    if name.startswith(("vosjax.evaluation", "vosjax.methods", "vosjax.models", "vosjax.data")):
      assert not edges & loop, (name, edges & loop)
    if name.startswith(("vosjax.models", "vosjax.data")):
      assert not {e for e in edges if e.startswith(("vosjax.methods", "vosjax.evaluation"))}, name
    if name.startswith("vosjax.correspondence"):  # Flax-free propagation math
      assert not edges & loop and not {
        e for e in edges if e.startswith(("vosjax.methods", "vosjax.models", "vosjax.evaluation"))
      }, (name, edges)


@pytest.mark.parametrize("name", methods.available())
def test_every_method_satisfies_the_interface(name):
  method = importlib.import_module(f"vosjax.methods.{name}")
  assert isinstance(method, interface.Method)
  for protocol in (
    interface.Method,
    interface.OwnsExtraState,
    interface.PredictsFromFlow,
    interface.SegmentsVideos,
    interface.ImportsCheckpoints,
    interface.GrowsCapacity,
    interface.PredictsInChunks,
    interface.ProposesCandidates,
    interface.ProvidesDenseFeatures,
  ):
    if not isinstance(method, protocol):
      continue
    for function_name, declared in vars(protocol).items():
      if function_name.startswith("_") or not callable(declared):
        continue
      expected = list(inspect.signature(declared).parameters)[1:]  # without self
      actual = list(inspect.signature(getattr(method, function_name)).parameters)
      assert actual == expected, f"{name}.{function_name}{actual} != {expected}"
  if isinstance(method, interface.SegmentsVideos):
    assert method.SEGMENT_IDS in ("classes", "clusters")
  config = method.default_config()
  assert config.method == name
  # The data section comes from configs/ and the data code: a method's defaults import no reader.
  assert "data" not in config, f"{name}.default_config() carries a data section"


def test_capabilities_are_what_the_methods_provide():
  assert methods.with_capability(interface.PredictsFromFlow) == ["motion_grouping"]
  assert set(methods.with_capability(interface.SegmentsVideos)) >= {"betrayed", "motion_grouping"}
  assert methods.with_capability(interface.ImportsCheckpoints) == [
    "betrayed",
    "motion_grouping",
    "smtc",
  ]
  assert methods.with_capability(interface.GrowsCapacity) == ["betrayed"]
  assert methods.with_capability(interface.PredictsInChunks) == ["smtc"]
  assert methods.with_capability(interface.ProposesCandidates) == ["smtc"]
  assert methods.with_capability(interface.ProvidesDenseFeatures) == ["betrayed"]
  assert "smtc" in methods.with_capability(interface.SegmentsVideos)


def test_no_code_outside_methods_branches_on_a_method_name():
  names = set(methods.available())
  offenders = []
  for path in PACKAGE.rglob("*.py"):
    if "methods" in path.relative_to(PACKAGE).parts:
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        constants = {o.value for o in operands if isinstance(o, ast.Constant)}
        constants |= {
          e.value
          for o in operands
          if isinstance(o, (ast.Tuple, ast.List, ast.Set))
          for e in o.elts
          if isinstance(e, ast.Constant)
        }
        if constants & names:
          offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
  assert not offenders, offenders


TESTS = Path(__file__).resolve().parent
# An import of a test module or of conftest, as a statement or inside a child python's script.
_TEST_MODULE_IMPORT = re.compile(r"^\s*(?:from|import)\s+(?:tests\.)?(?:test_\w+|conftest)\b", re.M)


def test_no_test_module_imports_another_test_module():
  """What tests share lives in tests/helpers/ and tests/references/: a test module (or a child
  script it runs) never imports another test module or conftest."""
  offenders = [
    f"{path.relative_to(TESTS)}:{text[: match.start()].count(chr(10)) + 1}: {match.group().strip()}"
    for path in sorted(TESTS.rglob("*.py"))
    for text in [path.read_text()]
    for match in _TEST_MODULE_IMPORT.finditer(text)
  ]
  assert not offenders, offenders
  planted = "x = 1\n    from test_train import tiny_config\nimport conftest\n"
  assert len(_TEST_MODULE_IMPORT.findall(planted)) == 2


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for nxt in graph[todo.pop()] - seen:
      seen.add(nxt)
      todo.append(nxt)
  return seen


def test_segment_does_not_import_the_training_loop():
  """Inference restores params through `vosjax.methods.checkpoints`, not `vosjax.train`."""
  reachable = _reachable(import_graph(), "vosjax.segment")
  assert "vosjax.methods.checkpoints" in reachable
  assert "vosjax.train" not in reachable


@pytest.mark.parametrize(
  "module",
  [f"vosjax.methods.{name}" for name in methods.available()]
  + ["vosjax.segment", "vosjax.evaluate"],
)
def test_importing_loads_no_tensorflow(module):
  """Only the TFDS reader (`vosjax.data.movi`) imports TensorFlow (a large import): a method,
  the segment command and the evaluation command must not."""
  code = (
    f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('tensorflow')))"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=False
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "[]", f"{module} imports {result.stdout.strip()[:200]}"
