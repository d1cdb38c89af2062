"""The methods, one package each; `config.method` names it. The interface is
`vosjax.methods.interface.Method` (plus optional capabilities there)."""

from __future__ import annotations

import importlib
import pkgutil

import ml_collections


def available() -> list[str]:
  """Names of the method packages."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg)


def load_method(config: ml_collections.ConfigDict):
  """Imports `vosjax.methods.<config.method>`, with an error listing the methods that exist."""
  names = available()
  if config.method not in names:
    raise ValueError(
      f"Unknown method config.method={config.method!r}; available: {names}. "
      "Set --config.method to one of them."
    )
  return importlib.import_module(f"{__name__}.{config.method}")


def with_capability(capability: type) -> list[str]:
  """Names of the methods whose package satisfies `capability` (a protocol of `interface`)."""
  return [
    name
    for name in available()
    if isinstance(importlib.import_module(f"{__name__}.{name}"), capability)
  ]
