"""Betrayed by Attention on YouTube-VIS / YouTube-VOS style frame folders (the official training
data).

Layout: `<root>/JPEGImages/<video>/<frame>.jpg` (YouTube-VIS train), i.e. the DAVIS layout of
`vosjax.data.davis` with an empty quality folder (`data.quality = ""`).

Training clips (`data.source = "frame_clips"`, `vosjax.data.davis.make_clip_iterator`, as the
official `src/data.py::Dataloader`): a random video, T = `data.clip_length` = 3 frames at stride
`data.frame_gap` = 4 (shrunk until the clip fits) around a uniform centre, RGB in [0, 1], resized
bilinearly to `data.resolution` = (192, 384); deterministic in (seed, step) for resuming.
Evaluation (end of training and `--mode eval`, `vosjax.evaluation.frame_folders`): with
`data.eval_root` set to a DAVIS-2017 root, every val sequence is segmented (masks in
`WORKDIR/frame_results/`) and scored with the DAVIS-2017 unsupervised protocols (official and
per-frame); without it, the run trains and saves and scores nothing.

Command (needs YouTube-VIS train frames, a DAVIS-2017 root and the DINO ViT-S/8 weights, none of
which the development machines have; tests/test_configs.py runs this config on tiny DAVIS folders):

  python -m vosjax.main --config configs/ytvis.py --workdir /tmp/betrayed_ytvis \
      --config.data.root=/path/to/youtube-vis/train --config.data.eval_root=/path/to/DAVIS \
      --config.backbone.checkpoint=/path/to/dino_deitsmall8_pretrain.pth

Expected result: the paper reports YouTube-VIS-19 FG-ARI / mIoU on 300 training videos and DAVIS-17
J&F (NOT VERIFIED, docs/betrayed.md, "Evaluation and reported numbers"). Nothing has been
measured with this config here.

Official recipe (docs/betrayed.md, "Training", "Inference"): 192x384 training frames (24x48 = 1152
tokens), 3-frame clips, global batch 8, AdamW lr 1e-5 -> 1e-6 cosine, 60k steps; inference at
320x480 with tau 1.0 (multi-object; 1.6 for single-object benchmarks) and key-frame ratio 10.
"""

import ml_collections

from vosjax.methods import betrayed


def get_config() -> ml_collections.ConfigDict:
  config = betrayed.default_config()
  config.data = ml_collections.ConfigDict()
  config.data.source = "frame_clips"
  config.data.root = ml_collections.config_dict.placeholder(str)  # folder holding JPEGImages/
  config.data.quality = ""  # YouTube-VIS has no resolution sub-folder
  config.data.sequences = ()  # empty: every video folder under JPEGImages/
  config.data.resolution = (192, 384)
  config.data.clip_length = 3
  config.data.frame_gap = 4
  config.data.gap_shrink = "until_fits"  # the official `while` (vosjax.data.davis.GAP_SHRINK_RULES)
  # Evaluation: a DAVIS-layout root (DAVIS-2017 trainval); None: train only, score nothing.
  config.data.eval_root = ml_collections.config_dict.placeholder(str)
  config.data.eval_quality = "480p"
  config.data.eval_imageset = (
    "val"  # the ImageSets/ list read: 2017/val.txt, 480p/val.txt (test-dev)
  )
  config.data.eval_sequences = ()  # override of that list (empty: the list, else every sequence)
  config.data.eval_chunk_frames = 64  # frames per clustering window (+2 shared with neighbours)
  config.model.train_resolution = None
  config.model.inference_resolution = (320, 480)
  return config
