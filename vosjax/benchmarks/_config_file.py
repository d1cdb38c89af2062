"""Config files for the benchmarks: `get_config()` of a path, with `KEY=VALUE` overrides."""

from __future__ import annotations

import ast
import importlib.util

import ml_collections


def load_config(path: str, overrides: list[str]) -> ml_collections.ConfigDict:
  """Config file `path` (`get_config()`), with `KEY=VALUE` overrides (values as Python literals,
  else strings); an unknown key is an error naming it, but in an empty section (a free-form mapping
  such as `backbone.arch_overrides`) new keys are set."""
  spec = importlib.util.spec_from_file_location("vosjax_bench_config", path)
  if spec is None:
    raise FileNotFoundError(f"{path}: not a Python config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  free_form = _empty_sections(config)
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"--set expects KEY=VALUE, got {item!r}.")
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      if name not in node:
        raise ValueError(f"--set {key}: no such config key ({name!r}).")
      node = node[name]
    if leaf not in node and tuple(parents) not in free_form:
      raise ValueError(f"--set {key}: no such config key.")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node[leaf] = value
  return config


def _empty_sections(config, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
  """Paths of the sections that the config file leaves empty (free-form mappings)."""
  found = set() if len(config) else {path}
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      found |= _empty_sections(value, path + (name,))
  return found
