"""Orbax checkpoints: atomic periodic saves, automatic resume, fallback past a corrupt latest step.

Layout: `WORKDIR/checkpoints/<step>/{state,meta}`. Orbax writes each step into a temporary directory
and renames it when complete, so a save interrupted by SIGKILL leaves no half-written `<step>`
directory behind; a directory that is damaged afterwards (truncated files) is skipped on restore
with a warning and the previous step is used instead; when the resumed run reaches that step again,
the damaged directory is replaced by the new save.

`meta` is JSON holding the step and the data position (number of batches consumed), so a resumed run
continues with the exact batch an uninterrupted run would have seen next.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from etils import epath
import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(RuntimeError):
  """Checkpoints exist in the workdir but none fits the state of this run."""


@dataclasses.dataclass
class Restored:
  """What `CheckpointManager.restore_latest` found: the state and its metadata."""

  state: Any
  meta: dict


class CheckpointManager:
  """A thin wrapper of `orbax.checkpoint.CheckpointManager` for one train state pytree."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, asynchronous: bool = False):
    # epath: local paths and bucket paths (gs://) alike, so every host of a pod can share WORKDIR.
    workdir = epath.Path(workdir)
    self.directory = str((workdir if "://" in str(workdir) else workdir.resolve()) / "checkpoints")
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=True,
      cleanup_tmp_directories=True,  # leftovers of a save killed mid-write
      enable_async_checkpointing=asynchronous,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    # Steps newer than the one `restore_latest` resumed from that failed to read (damaged files).
    self._unreadable: set[int] = set()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, *, force: bool = True) -> None:
    """Saves `state` (any pytree of jax arrays) and the JSON `meta` at `step`, atomically.

    An existing readable checkpoint of `step` is kept as it is; a damaged one (skipped by
    `restore_latest`) is deleted and written again, so the resumed run's result is not lost.
    """
    if step in self._unreadable:
      logging.warning("Replacing the unreadable checkpoint %s/%d.", self.directory, step)
      self._manager.delete(step)
      self._unreadable.discard(step)
    elif step in self._manager.all_steps():
      return
    self._manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=force,
    )

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore_latest(self, abstract_state: Any) -> Restored | None:
    """Restores the newest readable checkpoint into the shardings of `abstract_state`.

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` (with `.sharding`) or arrays, giving the
        structure, shapes and target shardings; the device count may differ from the one that saved.

    Returns:
      `Restored` or None when there is no checkpoint. A checkpoint that fails to read is skipped
      (logged), and the next older one is tried.

    Raises:
      CheckpointMismatchError: there are checkpoints but none reads into `abstract_state` (e.g. the
        model config changed). Starting from scratch instead would let `max_to_keep` delete them.
    """
    target = jax.tree.map(_as_abstract, abstract_state)
    unreadable = set()
    first_error = None
    steps = self.all_steps()
    for step in reversed(steps):
      try:
        restored = self._manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
          ),
        )
      except Exception as e:  # pylint: disable=broad-except
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        logging.warning(
          "Checkpoint %s/%d is unreadable (%s); trying the previous one.",
          self.directory,
          step,
          error,
        )
        unreadable.add(step)
        first_error = first_error or error
        continue
      # Only once an older step read fine into this state are the newer failures damage (and not a
      # different model config): only then may `save` replace them.
      self._unreadable = unreadable
      return Restored(state=restored["state"], meta=dict(restored["meta"]))
    if steps:
      raise CheckpointMismatchError(
        f"None of the checkpoints {steps} in {self.directory} can be restored into this run's "
        f"state (newest: {first_error}). If the config changed (model size, optimizer), rerun "
        "with the config that wrote them, or use a new --workdir; nothing was deleted."
      )
    return None

  def restore_latest_saved(self) -> Restored | None:
    """The newest readable checkpoint as it was saved, without a target structure: nested dicts of
    arrays (a train state's fields by name), for reading a part of it (e.g. the params) into a run
    whose other state (optimizer) differs. None when there is no readable checkpoint."""
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
        )
      except Exception as e:  # pylint: disable=broad-except
        logging.warning(
          "Checkpoint %s/%d is unreadable (%s: %s); trying the previous one.",
          self.directory,
          step,
          type(e).__name__,
          str(e).splitlines()[0][:300],
        )
        continue
      return Restored(state=restored["state"], meta=dict(restored["meta"]))
    return None

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _as_abstract(x: Any) -> Any:
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
