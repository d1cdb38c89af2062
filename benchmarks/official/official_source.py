"""What the drivers in this folder share: finding the official code in the folder given by
`--official`, and reading functions by name from an official file that cannot be imported as a
whole (its module-level imports, e.g. tensorboard or a CUDA-only setup, play no part in them).

Every refusal is one line naming the folder or file and what was expected, not a traceback.
"""

import ast
import importlib
import os
import sys


def official_source(official: str, marker: str, repository: str, subfolder: str = "src") -> str:
  """`<official>/<subfolder>`, put first on sys.path, after checking that `marker` (a path under
  it) exists; else exit naming the folder and the expected `repository`."""
  source = os.path.join(os.path.abspath(official), subfolder)
  if not os.path.isfile(os.path.join(source, marker)):
    raise SystemExit(
      f"no {subfolder}/{marker} in {official}: is --official an export of {repository}? "
      "(docs/benchmarks_official.md fetches it)"
    )
  sys.path.insert(0, source)
  return source


def require_modules(names: tuple[str, ...], hint: str) -> None:
  """Exit with one line naming the first module of `names` that cannot be imported, and `hint`."""
  for name in names:
    try:
      importlib.import_module(name)
    except ImportError as error:
      raise SystemExit(f"cannot import {name} ({error}); {hint}") from None


def official_functions(path: str, names: tuple[str, ...], namespace: dict) -> dict:
  """The top-level functions `names` of the Python file `path`, executed in `namespace` (which
  supplies the modules they use), without running the rest of the file."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
  missing = set(names) - {n.name for n in found}
  if missing:
    raise SystemExit(f"{path} has no function(s) {sorted(missing)}: is --official the right code?")
  exec(compile(ast.Module(body=found, type_ignores=[]), path, "exec"), namespace)  # pylint: disable=exec-used
  return namespace
