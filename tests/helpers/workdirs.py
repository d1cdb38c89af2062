"""Reading a training workdir: its checkpoints' states and metadata, snapshots of its files."""

import glob
import json
import os
import warnings

from helpers.training_runs import flat_params


def checkpoint_state(workdir, step: int) -> dict:
  """The train state saved at `step` (params, optimizer state, step), flattened to numpy arrays."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "sharding info not provided": read as saved, on 1 device
    tree = ocp.PyTreeCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state")
    )
  return flat_params(tree)


def checkpoint_meta(workdir, step: int) -> dict:
  with open(os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")) as f:
    return json.load(f)


def folder_snapshot(folder) -> dict:
  return {
    os.path.relpath(p, folder): (os.path.getsize(p), os.stat(p).st_mtime_ns)
    for p in glob.glob(os.path.join(folder, "**"), recursive=True)
    if os.path.isfile(p)
  }
