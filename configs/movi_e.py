"""Betrayed by Attention on Kubric MOVi-E (TFDS), DINO ViT-S/8, evaluated with FG-ARI and mIoU.

Command (one host, all local accelerators; needs the DINO ViT-S/8 weights and MOVi-E, read from GCS
or a local copy, neither of which the development machines have):

  python -m vosjax.main --config configs/movi_e.py --workdir /tmp/betrayed_movi_e \
      --config.backbone.checkpoint=/path/to/dino_deitsmall8_pretrain.pth

Offline smoke run on the synthetic stand-in (random backbone, meaningless numbers; builds
vosjax_synthetic/64x64 into /tmp/tfds the first time, then trains 20 steps and evaluates 8 of the 48
validation videos: 2.6 min measured on 2 cores at load 6-8 once the data existed). At 64x64 a frame
has 8x8 = 64 tokens, fewer than the 200 semantic negatives of the 1024-token recipe, so the loss
counts are the official ones scaled to 64 tokens. tests/test_documented_commands.py runs this
command as written:

  python -m vosjax.main --config configs/movi_e.py --workdir /tmp/betrayed_smoke \
      --config.data.tfds_name=vosjax_synthetic/64x64 --config.data.data_dir=/tmp/tfds \
      --config.backbone.random_init=True --config.num_train_steps=20 --config.batch_size=2 \
      --config.eval_batch_size=2 '--config.model.train_resolution=(64,64)' \
      '--config.model.inference_resolution=(64,64)' --config.loss.semantic_positives=2 \
      --config.loss.semantic_negatives=12 --config.loss.motion_positives=1 \
      --config.loss.motion_negatives=3 '--config.data.eval_split=validation[:8]'

Expected result: the paper reports FG-ARI / mIoU on MOVi-E (appendix tables, NOT VERIFIED here: see
docs/betrayed.md, "Evaluation and reported numbers"). NOTHING has been measured with this config
in this repository: no pretrained DINO weights, MOVi-E data or accelerator time were available
when it was written, so treat any number you get as the first measurement, not a reproduction.

Choices that the official code does not fix for MOVi-E (it ships no MOVi code):
  * Data stay at the native 128x128 (metrics on the original masks); the method upsamples frames to
    `model.train_resolution` / `model.inference_resolution` = 256x256 (bilinear) before the ViT-S/8,
    giving 32x32 = 1024 tokens per frame, close to the official 24x48 = 1152 at 192x384, so that the
    official counts (30/200 semantic, 10/50 motion positives/negatives) keep their proportions.
  * tau = 1.0 (multi-object; MOVi-E has up to 23 objects) and key-frame ratio 10 over the 24 frames.
  * Training clips are 3 consecutive frames (the MOVi pipeline has no frame stride; the official
    YouTube-VIS clips take every 4th stored frame).
Everything else is the official recipe (docs/betrayed.md, "The spatio-temporal block" to
"Inference"): 3-frame clips, global batch 8, AdamW lr 1e-5 cosine to 1e-6 without warmup, weight
decay 0.1, 60k steps.
"""

import ml_collections

from vosjax.data import movi_config
from vosjax.methods import betrayed


def get_config() -> ml_collections.ConfigDict:
  config = betrayed.default_config()
  config.data = movi_config.movi_e_data_config()
  config.data.clip_length = 3
  config.data.eval_frames = None  # all 24 frames
  config.model.train_resolution = (256, 256)
  config.model.inference_resolution = (256, 256)
  return config
