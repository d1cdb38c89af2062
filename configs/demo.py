"""The embedded default: Motion Grouping on the synthetic MOVi-format dataset at 64x64, on a CPU.

Command (README's first command):
  python -m vosjax.main --config configs/demo.py --workdir workdirs/demo

Builds `vosjax_synthetic/64x64` offline on first use (384 training and 48 validation videos of 24
frames), trains a narrow Motion Grouping model and evaluates it on the 48 validation videos.

Expected result: see the README's results table (measured on 2 CPU cores).
"""
import ml_collections

from vosjax.methods import motion_grouping


def get_config() -> ml_collections.ConfigDict:
  config = motion_grouping.default_config()
  config.batch_size = 16
  config.eval_batch_size = 8
  config.num_train_steps = 1500
  config.log_every_steps = 50
  config.eval_every_steps = 0  # evaluate once, at the end
  config.checkpoint_every_steps = 500
  config.num_eval_videos_to_write = 4

  config.data.tfds_name = "vosjax_synthetic/64x64"
  config.data.data_dir = "~/tensorflow_datasets"
  config.data.resolution = (64, 64)

  # A narrow model: same architecture, fewer channels, so that it trains in minutes on 2 cores.
  config.model.encoder_widths = (32, 32, 64)
  config.model.slot_dim = 64
  config.model.slot_mlp_hidden_size = 64
  config.model.decoder_transpose_widths = (32, 32, 32)
  config.model.decoder_conv_width = 32

  # The official schedule compressed to the run length: regularisers x5 and lr /2 at its middle.
  config.optimizer.decay_steps = 750
  return config
