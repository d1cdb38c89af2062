"""Betrayed by Attention on YouTube-VIS / YouTube-VOS style frame folders (the official training data).

Layout: `<root>/JPEGImages/<video>/<frame>.jpg` (YouTube-VIS train), i.e. the DAVIS layout of
`vosjax.data.davis` with an empty quality folder (`data.quality = ""`).

STATUS: this config cannot train yet. `vosjax.data.pipeline` routes `data.source = "davis"` to the
Motion Grouping flow-pair iterator, which yields flows and no `video`; Betrayed by Attention needs RGB
clips. What it needs (official `src/data.py::Dataloader`, training branch), requested from the owners
of `vosjax/data/davis.py` and `vosjax/data/pipeline.py`:
  a random video (uniformly over videos), T = `data.clip_length` = 3 frames at stride
  `data.frame_gap` (official default 4; decremented until gap * (T // 2) < len - gap * (T // 2) - 1)
  around a centre drawn uniformly from [gap * (T // 2), len - gap * (T // 2) - 1], frames read as RGB
  in [0, 1] and resized bilinearly to `data.resolution` = (192, 384); batches
  {"video": float32 [B, T, H, W, 3]}, deterministic in (seed, step) for resuming.
The in-training evaluation reads MOVi-format data only; evaluate frame folders with `vosjax.evaluate`
(DAVIS protocol) on the predicted masks.

Command, once that reader exists:

  python -m vosjax.main --config configs/ytvis.py --workdir /tmp/betrayed_ytvis \
      --config.data.root=/path/to/youtube-vis/train \
      --config.backbone.checkpoint=/path/to/dino_deitsmall8_pretrain.pth

Expected result: the paper reports YouTube-VIS-19 FG-ARI / mIoU on 300 training videos and DAVIS-17
J&F (NOT VERIFIED, docs/algorithms.md section 1.9). Nothing has been measured with this config here.

Official recipe (docs/algorithms.md sections 1.4-1.6): 192x384 training frames (24x48 = 1152 tokens),
3-frame clips, global batch 8, AdamW lr 1e-5 -> 1e-6 cosine, 60k steps; inference at 320x480 with
tau 1.0 (multi-object; 1.6 for single-object benchmarks) and key-frame ratio 10.
"""
import ml_collections

from vosjax.methods import betrayed


def get_config() -> ml_collections.ConfigDict:
  config = betrayed.default_config()
  config.data = ml_collections.ConfigDict()
  config.data.source = "davis"
  config.data.root = ml_collections.config_dict.placeholder(str)  # folder holding JPEGImages/
  config.data.quality = ""  # YouTube-VIS has no resolution sub-folder
  config.data.sequences = ()  # empty: every video folder under JPEGImages/
  config.data.resolution = (192, 384)
  config.data.clip_length = 3
  config.data.frame_gap = 4
  config.eval_every_steps = 0  # frame folders are evaluated with vosjax.evaluate
  config.model.train_resolution = None
  config.model.inference_resolution = (320, 480)
  return config
