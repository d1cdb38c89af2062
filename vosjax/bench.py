"""Benchmarks: `python -m vosjax.bench NAME [options]`.

NAME is one of the modules of `vosjax/benchmarks/` (all, backbone, clustering, data, evaluate,
flow_error, forward, keyframes, mg_recipes, propagate, tpu, train).

Each benchmark lives in `vosjax/benchmarks/<name>.py` and exposes `main(argv)`.
"""

import importlib
import pkgutil
import sys

import vosjax.benchmarks
from vosjax.core import host_memory


def available():
  """Benchmark names: the modules of vosjax/benchmarks/ but the helpers (`_name`) and the NumPy
  reference the clustering benchmark compares against."""
  return sorted(
    m.name
    for m in pkgutil.iter_modules(vosjax.benchmarks.__path__)
    if not m.name.startswith("_") and m.name != "reference_clustering"
  )


def main(argv=None):
  host_memory.reexec_with_huge_pages()  # process setup: `python -m vosjax.bench` only
  argv = sys.argv[1:] if argv is None else argv
  names = available()
  if not argv or argv[0] not in names:
    print(f"usage: python -m vosjax.bench {{{','.join(names)}}} [options]", file=sys.stderr)
    print(f"host memory: {host_memory.describe()}", file=sys.stderr)
    return 2
  module = importlib.import_module(f"vosjax.benchmarks.{argv[0]}")
  return module.main(argv[1:]) or 0


if __name__ == "__main__":
  sys.exit(main())
