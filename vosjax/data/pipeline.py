"""Which input pipeline a config reads: MOVi-format TFDS datasets (default) or DAVIS-layout folders.

All yield host-local numpy batches of `config.batch_size // jax.process_count()` examples; the
training loop turns them into global arrays. `config.data.source` picks the readers from `SOURCES`.
Evaluation in training (every `eval_every_steps` and at the end) runs for every source: the TFDS
evaluation split through `make_eval_iterator`, the folder sources through `vosjax.evaluation`
(`davis_flows`, `frame_folders`), which read their folders themselves.

Data shards: the training stream of a TFDS dataset is split into `config.data.num_shards` shards
(default: one per process). Each shard yields `batch_size // num_shards` examples per step and
process p reads the contiguous shards p*k .. p*k+k-1 (k = num_shards // process_count), so the
global batch of a step is the same whatever the number of processes: fix `num_shards` and a run can
move between 1 and many hosts (or be compared across them) and see the same data.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np


def _frame_clips(config: ml_collections.ConfigDict, start_step: int) -> Iterator[dict]:
  from vosjax.data import davis  # pylint: disable=g-import-not-at-top

  return davis.make_clip_iterator(
    config.data.root,
    config.data.sequences,
    config.data.resolution,
    config.batch_size // jax.process_count(),
    seed=config.seed + jax.process_index(),
    start_step=start_step,
    clip_length=config.data.clip_length,
    frame_gap=config.data.frame_gap,
    quality=config.data.quality,
    gap_shrink=config.data.gap_shrink,
  )


def _davis_flow_pairs(config: ml_collections.ConfigDict, start_step: int) -> Iterator[dict]:
  from vosjax.data import davis  # pylint: disable=g-import-not-at-top

  return davis.make_flow_pair_iterator(
    config.data.root,
    config.data.sequences or davis.list_sequences(config.data.root),
    config.data.resolution,
    config.batch_size // jax.process_count(),
    seed=config.seed + jax.process_index(),
    start_step=start_step,
    flow_cache_dir=config.data.flow_cache_dir,
    gaps=tuple(config.data.gaps),
    raft_flow_root=config.data.raft_flow_root,
    raft_res=config.data.raft_res,
  )


def _tfds_train(config: ml_collections.ConfigDict, start_step: int) -> Iterator[dict]:
  from vosjax.data import movi  # pylint: disable=g-import-not-at-top

  num_shards = config.data.num_shards or jax.process_count()
  if num_shards % jax.process_count() or config.batch_size % num_shards:
    raise ValueError(
      f"config.data.num_shards={num_shards} must be a multiple of the process count "
      f"({jax.process_count()}) and divide config.batch_size={config.batch_size}."
    )
  per_process = num_shards // jax.process_count()
  shards = [
    movi.make_train_iterator(
      config.data,
      config.batch_size,
      seed=config.seed,
      start_step=start_step,
      process_index=shard,
      process_count=num_shards,
    )
    for shard in range(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
  ]
  if len(shards) == 1:
    return shards[0]
  return (jax.tree.map(lambda *parts: np.concatenate(parts), *batches) for batches in zip(*shards))


def _tfds_check(config: ml_collections.ConfigDict) -> None:
  from vosjax.data import movi  # pylint: disable=g-import-not-at-top

  movi.check_split(config.data, "train_split")
  movi.check_split(config.data, "eval_split")


def _tfds_eval(config: ml_collections.ConfigDict) -> Iterator[dict]:
  from vosjax.data import movi  # pylint: disable=g-import-not-at-top

  return movi.make_eval_iterator(
    config.data,
    config.eval_batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


@dataclasses.dataclass(frozen=True)
class Source:
  """The readers of one `config.data.source` (each imports its module, e.g. TensorFlow, on use)."""

  train_iterator: Callable[[ml_collections.ConfigDict, int], Iterator[dict]]
  # Fails before any training when the training or evaluation data cannot be read; None: checked
  # when read.
  check_data: Callable[[ml_collections.ConfigDict], None] | None
  # One pass over the evaluation split for `vosjax.evaluation.videos`; None: the source's folders
  # are evaluated by `vosjax.evaluation` itself (davis_flows, frame_folders), at the end of training
  # and every `eval_every_steps`.
  eval_iterator: Callable[[ml_collections.ConfigDict], Iterator[dict]] | None


# tfds: MOVi-format TFDS datasets; davis: Motion Grouping flow pairs from DAVIS-layout folders;
# frame_clips: RGB clips from frame folders (YouTube-VIS / DAVIS layout). The one table that says
# what each source reads (`vosjax.evaluation.evaluate` keeps the matching one for evaluation).
SOURCES = {
  "tfds": Source(_tfds_train, _tfds_check, _tfds_eval),
  "davis": Source(_davis_flow_pairs, None, None),
  "frame_clips": Source(_frame_clips, None, None),
}


def source(config: ml_collections.ConfigDict) -> str:
  """`config.data.source`, checked: the name of its entry in `SOURCES`."""
  if "source" not in config.data:
    raise KeyError(f"config.data has no `source`; set it to one of {tuple(SOURCES)}.")
  if config.data.source not in SOURCES:
    raise ValueError(
      f"Unknown config.data.source={config.data.source!r}; use one of {tuple(SOURCES)}."
    )
  return config.data.source


def make_train_iterator(
  config: ml_collections.ConfigDict, *, start_step: int = 0
) -> Iterator[dict]:
  """Infinite, deterministic training batches; `start_step` resumes the exact sequence."""
  return SOURCES[source(config)].train_iterator(config, start_step)


def check_data(config: ml_collections.ConfigDict) -> None:
  """Fails now (before any training, before a checkpoint folder is made) if the training or the
  evaluation split cannot be read (TFDS source only)."""
  check = SOURCES[source(config)].check_data
  if check is not None:
    check(config)


def make_eval_iterator(config: ml_collections.ConfigDict) -> Iterator[dict]:
  """One finite pass over the TFDS evaluation split, full videos, last batch padded (`valid`)."""
  name = source(config)
  if SOURCES[name].eval_iterator is None:
    raise ValueError(
      f"config.data.source={name!r} has no evaluation split to iterate: its folders are evaluated "
      "by vosjax.evaluation.evaluate (in training and with --mode eval) and by vosjax.evaluate."
    )
  return SOURCES[name].eval_iterator(config)
