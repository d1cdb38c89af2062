"""The data section of a config that reads MOVi-format TFDS data, importable without TensorFlow.

Configs (configs/*.py) and tests build `config.data` from here; only the reader,
`vosjax.data.movi`, imports TensorFlow, so a DAVIS run or `vosjax.segment` never loads it. The
fields are documented in `vosjax.data.movi`.
"""

from __future__ import annotations

import ml_collections

SYNTHETIC_NAME = "vosjax_synthetic"


def default_data_config() -> ml_collections.ConfigDict:
  """Defaults for the offline synthetic set `vosjax_synthetic/64x64` (built on first use)."""
  return ml_collections.ConfigDict(
    {
      "source": "tfds",  # vosjax.data.pipeline.SOURCES
      "tfds_name": f"{SYNTHETIC_NAME}/64x64",
      "data_dir": "~/tensorflow_datasets",
      "train_split": "train",
      "eval_split": "validation",
      "resolution": (64, 64),
      "clip_length": 6,
      "clip_margin": 0,
      "eval_frames": ml_collections.FieldReference(None, field_type=int),
      "shuffle_buffer": 128,
      "max_instances": 23,
      # Training-stream shards (vosjax.data.pipeline); None: one per process.
      "num_shards": ml_collections.FieldReference(None, field_type=int),
    }
  )


def movi_e_data_config() -> ml_collections.ConfigDict:
  """Kubric MOVi-E at 128x128 from its public bucket (`--config.data.data_dir` for a local copy)."""
  config = default_data_config()
  config.tfds_name = "movi_e/128x128:1.0.0"
  config.data_dir = "gs://kubric-public/tfds"
  config.resolution = (128, 128)
  return config
