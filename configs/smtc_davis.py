"""SMTC offline: the whole training and evaluation path on the DAVIS-2016 frames, RANDOM backbone.

THE NUMBERS OF THIS CONFIG ARE MEANINGLESS. The DINO ViT-S/16 has random weights
(`backbone.random_init`: no pretrained file needed), the training data are the 18 DAVIS-2016 val
sequences that have frames in ../shared/data/davis2016 (not YouTube-VOS), the batch is 4 clips and
the run is 100 steps. It exists to exercise, offline and on a CPU, everything that
configs/smtc_ytvos.py (the authors' recipe) runs: the official clip sampling from frame folders
(T = 4 at stride 4 around a random centre, 256x256, `data.gap_shrink = "once"`), the ViT with
stochastic depth, the SMTC head, the three losses against the EMA teacher, the official optimizer
groups (here the encoder switch at step 50 instead of 3000, so that both phases run), checkpoints,
and the frame-folder evaluation (`vosjax.evaluation.frame_folders`) of every sequence of the same
root with the DAVIS-2017 unsupervised protocols (on the single-object DAVIS-2016 masks).

Command (offline: it reads only the shared DAVIS-2016 frames beside the checkout):

  python -m vosjax.main --config configs/smtc_davis.py --workdir /tmp/smtc_davis

tests/test_configs.py runs this config with tiny overrides (2 sequences, 6 frames, a tiny ViT).
"""
import os

import ml_collections

from configs import smtc_ytvos

DAVIS2016 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                         "shared", "data", "davis2016")


def get_config() -> ml_collections.ConfigDict:
  config = smtc_ytvos.get_config()  # the official recipe and clip sampling
  config.data.root = os.path.normpath(DAVIS2016)
  config.data.quality = "480p"
  config.data.eval_root = config.data.root  # the same frames, with their DAVIS-2016 masks
  config.data.eval_quality = "480p"

  config.backbone.random_init = True  # RANDOM weights: meaningless features, no download
  config.batch_size = 4
  config.num_train_steps = 100
  config.log_every_steps = 10
  config.checkpoint_every_steps = 50
  config.num_eval_videos_to_write = 2
  config.optimizer.encoder_switch_step = 50
  return config
