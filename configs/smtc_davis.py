"""SMTC offline: the whole training and evaluation path on the DAVIS-2016 frames, RANDOM backbone.

THE NUMBERS OF THIS CONFIG ARE MEANINGLESS. The DINO ViT-S/16 has random weights
(`backbone.random_init`: no pretrained file needed), the training data are the 18 DAVIS-2016 val
sequences that have frames in ../shared/data/davis2016 (not YouTube-VOS), the batch is 4 clips, the
run is 20 steps and the inference resolution is 240x400 (official 480x800). It exists to exercise,
offline and on a CPU, everything that
configs/smtc_ytvos.py (the authors' recipe) runs: the official clip sampling from frame folders
(T = 4 at stride 4 around a random centre, 256x256, `data.gap_shrink = "once"`), the ViT with
stochastic depth, the SMTC head, the three losses against the EMA teacher, the official optimizer
groups (here the encoder switch at step 10 instead of 3000, so that both phases run), checkpoints,
and the frame-folder evaluation (`vosjax.evaluation.frame_folders`) of every sequence of the same
root: chunked inference, candidate masks, DAVIS PNGs and the DAVIS-2017 unsupervised protocols
(official and per-frame) against the single-object DAVIS-2016 masks (binarised).

Command (offline: it reads only the shared DAVIS-2016 frames beside the checkout):

  python -m vosjax.main --config configs/smtc_davis.py --workdir /tmp/smtc_davis

Measured 2026-11-30 on the 2-core development machine at load 7-8 (shared with other runs): 43 min
40 s wall (20 steps 13.5 min at 0.03 steps/s, segmenting the 18 sequences 19 min, scoring the
candidate masks 10 min), 5.6 GB peak memory; EVAL J&F 0.095 (official protocol), 0.161 (per-frame
protocol): meaningless numbers of a random backbone. tests/test_configs.py runs this config with
tiny overrides (2 sequences, 6 frames, a tiny ViT).
"""

import os

import ml_collections

from configs import smtc_ytvos

DAVIS2016 = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "davis2016"
)


def get_config() -> ml_collections.ConfigDict:
  config = smtc_ytvos.get_config()  # the official recipe and clip sampling
  config.data.root = os.path.normpath(DAVIS2016)
  config.data.quality = "480p"
  config.data.eval_root = config.data.root  # the same frames, with their DAVIS-2016 masks
  config.data.eval_quality = "480p"

  config.backbone.random_init = True  # RANDOM weights: meaningless features, no download
  config.batch_size = 4
  config.num_train_steps = 20
  config.log_every_steps = 5
  config.checkpoint_every_steps = 10
  config.num_eval_videos_to_write = 2
  config.optimizer.encoder_switch_step = 10
  config.model.inference_resolution = (240, 400)  # a quarter of the official pixels: CPU time
  return config
