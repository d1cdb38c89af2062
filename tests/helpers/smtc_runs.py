"""SMTC through the training loop (tests/test_train_smtc.py): the run's settings and config, a
module the subprocess runs import."""

import ml_collections

from helpers.tiny_configs import LAYOUT_OVERRIDES, TINY_SMTC, TINY_SYNTHETIC, set_overrides

NUM_STEPS = 4
CHECKPOINT_EVERY = 2
# The encoder's learning-rate switch at the checkpoint, so that the resumed steps move the encoder;
# an EMA momentum of 0.5 so that the teacher moves measurably in 4 steps; a learning rate at which
# the parameters move by more than the comparison tolerance. The Adam epsilon of the device-layout
# comparison (tiny_configs.LAYOUT_OVERRIDES) in every run: the uninterrupted run is the reference of
# both the resumed and the 8-device run. Stochastic depth at 0.5 (block rates 0, 0.25, 0.5), so that
# the keys of the last block, SMTC's features, depend on the drops (of block 1).
RUN_OVERRIDES = {
  "data.tfds_name": TINY_SYNTHETIC,
  "data.resolution": (32, 32),
  "data.shuffle_buffer": 4,
  "data.clip_length": 4,
  **TINY_SMTC,
  "batch_size": 8,
  "eval_batch_size": 8,
  "num_train_steps": NUM_STEPS,
  "log_every_steps": 1,
  "checkpoint_every_steps": CHECKPOINT_EVERY,
  "num_eval_videos_to_write": 1,
  "optimizer.learning_rate": 1e-3,
  "optimizer.final_learning_rate": 1e-4,
  "optimizer.encoder_switch_step": CHECKPOINT_EVERY,
  "ema_momentum": 0.5,
  "backbone.drop_path_rate": 0.5,
  **LAYOUT_OVERRIDES,
}


def smtc_config(data_dir, **overrides) -> ml_collections.ConfigDict:
  """configs-like SMTC on the tiny TFDS set in `data_dir` (`RUN_OVERRIDES`)."""
  from vosjax.data import movi  # pylint: disable=g-import-not-at-top
  from vosjax.methods import smtc  # pylint: disable=g-import-not-at-top

  config = smtc.default_config()
  config.data = movi.default_data_config()
  return set_overrides(config, {**RUN_OVERRIDES, "data.data_dir": data_dir, **overrides})
