"""Where a run's parameters come from, for every method: its train state, `config.init.checkpoint`,
and the one way inference restores them (`restore_for_inference`: `--mode eval` and
`vosjax.segment`).

`config.init.checkpoint`: the loop (`vosjax.train.create_train_state`) starts from it instead of the
method's initialisation; a run that resumes from its own workdir keeps its own checkpoint, and
inference uses it when the workdir has none. `config.init.checkpoint` is one of:

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

import dataclasses
import logging
from typing import Any, Callable

from etils import epath
import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np

from vosjax.core import checkpoint as checkpoint_lib
from vosjax.methods import interface
from vosjax.models import state_dicts
from vosjax.models.state_dicts import CheckpointError


@flax.struct.dataclass
class TrainState:
  """What a checkpoint holds: everything that a resumed run needs besides the data position (saved
  in checkpoint metadata)."""

  step: jax.Array  # int32 []
  params: Any
  opt_state: Any
  extra: Any  # method-owned state (`interface.OwnsExtraState`, e.g. an EMA teacher); {} if none


def train_state_builders(
  method, model, config: ml_collections.ConfigDict, tx, batch: dict | None = None
) -> tuple[Callable[[jax.Array], TrainState], Callable[[Any], TrainState]]:
  """`(init, state_from)`: a fresh `TrainState` from an rng (the method's initialisation) or from
  given params (the optimizer and extra state start fresh). `batch` gives the input shapes;
  default: the method's `example_batch(config)`."""
  batch = method.example_batch(config) if batch is None else batch
  init_extra, _ = interface.extra_state_hooks(method)

  def state_from(params) -> TrainState:
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      extra=init_extra(params, config),
    )

  def init(rng) -> TrainState:
    return state_from(method.init_params(model, config, rng, batch))

  return init, state_from


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


def checkpoint_folder(config: ml_collections.ConfigDict, workdir: str) -> epath.Path | None:
  """`workdir`'s checkpoints/ folder, None when there is none; fails when there is neither it nor
  `config.init.checkpoint`, so that a command can check before it builds a model."""
  folder = epath.Path(workdir) / "checkpoints"
  if folder.is_dir():  # checked, not created: a checkpoint manager would create it
    return folder
  if not config.init.checkpoint:
    raise FileNotFoundError(
      f"No checkpoint folder {folder}: train first (python -m vosjax.main --config CONFIG "
      f"--workdir {workdir}) or import parameters (--config.init.checkpoint=PATH)."
    )
  return None


@dataclasses.dataclass
class InferenceParams:
  """What `restore_for_inference` found."""

  params: Any  # replicated over the mesh
  step: int  # the checkpoint's training step; 0 for imported params
  source: str  # where they came from, for people


def restore_for_inference(
  method, model, config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh
) -> InferenceParams:
  """The params to run inference with: those of the newest readable checkpoint of `workdir` that
  fits the model of `config`, else (no checkpoint there) those of `config.init.checkpoint`.

  Only shapes are traced: nothing is initialised, and the import is not read when the workdir has a
  checkpoint.

  Raises:
    FileNotFoundError: no checkpoint in `workdir` and no `config.init.checkpoint`.
    CheckpointMismatchError: checkpoints exist but none reads into the model of `config`.
    CheckpointError: `config.init.checkpoint` does not fit the model.
  """
  folder = checkpoint_folder(config, workdir)
  imported = config.init.checkpoint
  replicated = NamedSharding(mesh, P())
  init, _ = train_state_builders(method, model, config, method.make_optimizer(config))
  abstract = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
    jax.eval_shape(init, jax.random.key(config.seed)),
  )
  if folder is not None:
    manager = checkpoint_lib.CheckpointManager(str(workdir), max_to_keep=config.max_to_keep)
    try:
      restored = manager.restore_latest(abstract)
    finally:
      manager.close()
    if restored is not None:
      step = int(restored.state.step)
      return InferenceParams(
        restored.state.params, step, f"checkpoint step {step} from {manager.directory}"
      )
    if not imported:
      raise FileNotFoundError(
        f"No checkpoint in {folder}: train first (python -m vosjax.main --config CONFIG "
        f"--workdir {workdir}) or import parameters (--config.init.checkpoint=PATH)."
      )
  logging.info("No checkpoint in %s: using the imported %s.", workdir, imported)
  params = import_checkpoint(method, config, abstract.params)
  dtypes = jax.tree.map(lambda s: s.dtype, abstract.params)
  params = jax.jit(
    lambda p: jax.tree.map(lambda x, dtype: jnp.asarray(x, dtype), p, dtypes),
    out_shardings=replicated,
  )(params)
  return InferenceParams(params, 0, f"imported {imported}")
