"""SMTC (Qian et al., ICCV 2023) on YouTube-VOS frame folders: the authors' shipped recipe.

Command (needs the YouTube-VOS train frames, the DINO ViT-S/16 weights and, for the score, a
DAVIS-2017 root, none of which the development machines have; tests/test_configs.py runs this config
on tiny DAVIS folders with a tiny random ViT):

  python -m vosjax.main --config configs/smtc_ytvos.py --workdir /tmp/smtc_ytvos \
      --config.data.root=/path/to/youtube-vos/train \
      --config.backbone.checkpoint=/path/to/dino_deitsmall16_pretrain.pth \
      --config.data.eval_root=/path/to/DAVIS

The recipe (`start_twostage.sh`, docs/smtc.md, "Training"; the method's `default_config`):
global batch 128 (official: 4 GPUs x 32), AdamW lr 2e-5 cosine to 2e-6 without warm-up, 10k steps,
16 semantic slots x 4 instances, 3 slot-attention iterations (5 at inference), the DINO ViT-S/16
fine-tuned at lr x0 before step 3000 and x0.01 after, stochastic depth 0 -> 0.1 in the student's
ViT, EMA teacher (0.999). Training clips (`data.source = "frame_clips"`,
`vosjax.data.davis.make_clip_iterator`, as the official `src/data.py::Dataloader`): a uniformly
drawn video of `<data.root>/JPEGImages/<video>/*.jpg` (YouTube-VOS has no resolution folder:
`data.quality = ""`), T = 4 frames at stride 4 around a uniform centre c (frames c-8, c-4, c, c+4;
the stride drops to 3 once where the clip would not fit, `data.gap_shrink = "once"`), RGB in [0, 1]
resized bilinearly to 256x256; deterministic in (seed, step), so a resumed run sees the same clips.

Evaluation (the end of training and `--mode eval`; `vosjax.evaluation.frame_folders`): with
`data.eval_root` a DAVIS-2017 root, every val sequence is segmented and scored with the DAVIS-2017
unsupervised protocols (official, per sequence, and the per-frame Hungarian matching of the SMTC
evaluator); without it the run trains, saves and scores nothing.

The authors' numbers for their released model of this recipe (README of shvdiwnkozbw/SMTC): 44.8 J&F
on DAVIS-2017 unsupervised multi-object discovery (their per-frame protocol) and 64.0 / 67.6 J&F on
DAVIS-2017 semi-supervised label propagation (stride-16 features / interpolated to stride 8).
NOT REPRODUCED HERE: no YouTube-VOS data, DINO weights or accelerator time were available when this
config was written; nothing has been measured with it. Label propagation is not implemented.
"""

import ml_collections

from vosjax.methods import smtc


def get_config() -> ml_collections.ConfigDict:
  config = smtc.default_config()
  config.data = ml_collections.ConfigDict()
  config.data.source = "frame_clips"
  config.data.root = ml_collections.config_dict.placeholder(str)  # folder holding JPEGImages/
  config.data.quality = ""  # YouTube-VOS has no resolution sub-folder
  config.data.sequences = ()  # empty: every video folder under JPEGImages/
  config.data.resolution = (256, 256)  # official `args.resolution`, hard-coded
  config.data.clip_length = 4  # --num_frames
  config.data.frame_gap = 4  # --gap
  config.data.gap_shrink = "once"  # vosjax.data.davis.GAP_SHRINK_RULES
  # Evaluation: a DAVIS-layout root (DAVIS-2017 trainval); None: train only, score nothing.
  config.data.eval_root = ml_collections.config_dict.placeholder(str)
  config.data.eval_quality = "480p"
  config.data.eval_imageset = (
    "val"  # the ImageSets/ list read: 2017/val.txt, 480p/val.txt (test-dev)
  )
  config.data.eval_sequences = ()  # override of that list (empty: the list, else every sequence)
  config.data.eval_chunk_frames = 32  # frames per prediction window (SMTC predicts 4 at a time)
  return config
