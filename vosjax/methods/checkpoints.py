"""`config.init.checkpoint`: the parameters a fresh run starts from, for every method.

The loop (`vosjax.train.create_train_state`) starts from them instead of the method's
initialisation; a run that resumes from its own workdir keeps its own checkpoint, and `--mode eval`
and `vosjax.segment` use them when the workdir has none. `config.init.checkpoint` is one of:

  * a directory: a vosjax workdir or its `checkpoints/` folder. The params of its newest readable
    step (a run of the same method and model, e.g. to fine-tune it); its optimizer state and step
    are not taken.
  * a file: the authors' PyTorch checkpoint (.pth, .pt, ...; torch needed) or its tensors as
    `.safetensors` / `.npz` (written by `python -m vosjax.convert`; NumPy suffices), imported by the
    method's `interface.ImportsCheckpoints.import_params` (the official names and layouts).

Both are strict: a missing, unexpected or wrongly shaped tensor is a `CheckpointError` listing them
all (the official SSL-UVOS training code loads with `strict=False` and ignores mismatches silently).
"""

from __future__ import annotations

import logging
from typing import Any

from etils import epath
import flax
import ml_collections
import numpy as np

from vosjax.core import checkpoint as checkpoint_lib
from vosjax.methods import interface
from vosjax.models import state_dicts
from vosjax.models.state_dicts import CheckpointError


def _vosjax_workdir(path: epath.Path) -> epath.Path | None:
  """The workdir of a vosjax checkpoint directory (the workdir itself or its checkpoints/)."""
  if (path / "checkpoints").is_dir():
    return path
  if path.name == "checkpoints":
    return path.parent
  return None


def read_vosjax_params(path: str, template: Any) -> Any:
  """The params of the newest readable checkpoint under `path` (a vosjax workdir or its
  checkpoints/), checked leaf by leaf against `template` (arrays or `jax.ShapeDtypeStruct`)."""
  workdir = _vosjax_workdir(epath.Path(path))
  if workdir is None:
    raise CheckpointError(
      f"{path}: a directory, but not a vosjax workdir (no checkpoints/ in it); "
      "config.init.checkpoint takes a workdir, its checkpoints/ folder or a "
      "checkpoint file."
    )
  manager = checkpoint_lib.CheckpointManager(str(workdir))
  try:
    restored = manager.restore_latest_saved()
  finally:
    manager.close()
  if restored is None or "params" not in restored.state:
    raise CheckpointError(f"{path}: no readable vosjax train state in {manager.directory}")
  saved = flax.traverse_util.flatten_dict(restored.state["params"])
  expected = flax.traverse_util.flatten_dict(template)
  missing = ["/".join(k) for k in expected if k not in saved]
  unexpected = ["/".join(k) for k in saved if k not in expected]
  wrong_shapes = {
    "/".join(k): (tuple(np.shape(saved[k])), tuple(v.shape))
    for k, v in expected.items()
    if k in saved and np.shape(saved[k]) != v.shape
  }
  if missing or unexpected or wrong_shapes:
    raise CheckpointError(
      state_dicts.mismatch_report(
        f"{path} (step {restored.meta.get('step')})", missing, unexpected, wrong_shapes
      )
    )
  logging.info("Imported the params of %s step %s.", manager.directory, restored.meta.get("step"))
  return flax.traverse_util.unflatten_dict(
    {k: np.asarray(saved[k], expected[k].dtype) for k in expected}
  )


def import_checkpoint(
  method, config: ml_collections.ConfigDict, template: Any, path: str | None = None
) -> Any:
  """The params in `path` (default `config.init.checkpoint`), with the structure and shapes of
  `template`; see the module docstring."""
  path = str(path or config.init.checkpoint)
  if epath.Path(path).is_dir():
    return read_vosjax_params(path, template)
  if not isinstance(method, interface.ImportsCheckpoints):
    raise CheckpointError(
      f"config.init.checkpoint={path}: config.method={config.method!r} imports no PyTorch "
      "checkpoints (no interface.ImportsCheckpoints); pass a vosjax workdir instead."
    )
  state = state_dicts.read_state_dict(path)
  try:
    params = method.import_params(state, template, config)
  except CheckpointError as error:
    raise CheckpointError(f"config.init.checkpoint={path}: {error}") from None
  logging.info("Imported %s into the %s params.", path, config.method)
  return params


def initial_params(method, config: ml_collections.ConfigDict, template: Any) -> Any | None:
  """The imported params of `config.init.checkpoint`, or None when it is not set."""
  if not config.init.checkpoint:
    return None
  return import_checkpoint(method, config, template)
