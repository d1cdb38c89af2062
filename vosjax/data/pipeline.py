"""Which input pipeline a config reads: MOVi-format TFDS datasets (default) or DAVIS-layout folders.

Both yield host-local numpy batches of `config.batch_size // jax.process_count()` examples; the
training loop turns them into global arrays. `config.data.source` picks the reader.
"""
from __future__ import annotations

from typing import Iterator

import jax
import ml_collections

SOURCES = ("tfds", "davis")


def _source(config: ml_collections.ConfigDict) -> str:
  source = config.data.get("source", "tfds")
  if source not in SOURCES:
    raise ValueError(f"Unknown config.data.source={source!r}; use one of {SOURCES}.")
  return source


def make_train_iterator(config: ml_collections.ConfigDict, *, start_step: int = 0) -> Iterator[dict]:
  """Infinite, deterministic training batches; `start_step` resumes the exact sequence."""
  if _source(config) == "davis":
    from vosjax.data import davis  # pylint: disable=g-import-not-at-top
    return davis.make_flow_pair_iterator(
        config.data.root, config.data.sequences, config.data.resolution,
        config.batch_size // jax.process_count(), seed=config.seed + jax.process_index(),
        start_step=start_step, flow_cache_dir=config.data.flow_cache_dir,
        gaps=tuple(config.data.gaps))
  from vosjax.data import movi  # pylint: disable=g-import-not-at-top
  return movi.make_train_iterator(
      config.data, config.batch_size, seed=config.seed, start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count())


def make_eval_iterator(config: ml_collections.ConfigDict) -> Iterator[dict]:
  """One finite pass over the evaluation split, full videos, last batch padded (`valid`)."""
  if _source(config) == "davis":
    raise ValueError("DAVIS evaluation runs through `vosjax.evaluate` / the segment command, "
                     "not the in-training evaluation; set --config.eval_every_steps=0.")
  from vosjax.data import movi  # pylint: disable=g-import-not-at-top
  return movi.make_eval_iterator(
      config.data, config.eval_batch_size, process_index=jax.process_index(),
      process_count=jax.process_count())
