"""The label-propagation protocols people compare against, as named, overridable presets.

- `dino`: facebookresearch/dino `eval_video_segmentation.py` (DINO paper Table 5).
- `crw`: SMTC `src/eval_prop.py` + `eval_prop.sh` (the CRW test code): stride 16, top-7, radius 7.
- `crw_stride8`: the same with `eval_prop.sh`'s commented alternative (`--topk 28 --radius 35`)
  and `mapScale` 8 (features interpolated to stride 8).

Every field can be overridden (`python -m vosjax.propagate --preset crw --set topk=10`).
"""

from __future__ import annotations

import ml_collections

from vosjax.correspondence import propagation

PRESETS = ("dino", "crw", "crw_stride8")


def preset(name: str) -> ml_collections.ConfigDict:
  """The settings of protocol `name` (one of PRESETS)."""
  if name not in PRESETS:
    raise ValueError(f"unknown propagation preset {name!r}; known: {', '.join(PRESETS)}")
  config = ml_collections.ConfigDict()
  config.preset = name
  if name == "dino":
    # Frames: cv2 bilinear on the uint8 image to short side 480 and long side
    # floor(long * 480 / short / 64) * 64 (854x480 -> 832x480), then / 255.
    config.frames = "dino_resize"
    config.short_side = 480
    config.size_multiple = 64
    config.mean = (0.485, 0.456, 0.406)
    config.std = (0.228, 0.224, 0.225)  # 0.228 as coded in eval_video_segmentation.py
    config.feature = "tokens_normed"  # get_intermediate_layers(n=1): after the final LayerNorm
    config.label_stride = 0  # 0: the backbone's patch size (labels on the feature grid)
    config.labels = "pil_nearest_onehot"
    config.context_frames = 7
    config.prefill_context = False
    config.topk = 5
    config.temperature = 0.1
    config.weighting = "exp_threshold"
    config.window = "square"
    config.radius = 12.0
    config.window_first_frame = True
    config.readout = "dino"  # bilinear x patch, per-channel min-max, argmax, PIL nearest
    config.first_frame_output = "annotation"  # frame 0 is written as the given annotation
  else:
    stride8 = name == "crw_stride8"
    # Frames: float RGB / 255, normalised, then linearly resized (torch trilinear,
    # align_corners=False) to multiples of the label stride (854x480 -> 848x480).
    config.frames = "crw_resize"
    config.short_side = 0
    config.size_multiple = 0
    config.mean = (0.485, 0.456, 0.406)
    config.std = (0.229, 0.224, 0.225)
    config.feature = "tokens"  # SMTC's encoder: the last block's output, no final norm
    config.label_stride = 8 if stride8 else 16  # mapScale = 320 // 40 or 320 // 20
    config.labels = "cv2_linear_onehot"
    config.context_frames = 20
    config.prefill_context = True
    config.topk = 28 if stride8 else 7
    config.temperature = 0.2
    config.weighting = "softmax_topk"
    config.window = "circle"
    config.radius = 35.0 if stride8 else 7.0
    config.window_first_frame = False
    config.readout = "crw"  # cv2 bilinear of the soft maps to the frame size, argmax
    config.first_frame_output = "prediction"
    # --cropSize: frames resized to crop x crop first, label images bilinearly (vos.py's quirk),
    # predictions read out at that size. 0: native (eval_prop.sh's -1); the keypoint and part
    # modes of `python -m vosjax.propagate` default to 320 (JHMDB) and 560 (VIP).
    config.crop_size = 0
    config.keypoint_sigma = 0.5  # JhmdbSet's Gaussian per joint, in label-grid cells
    config.keypoint_topk = 3  # process_pose: the top-3 cells' weighted mean
  config.norm_mask = config.readout == "dino"
  config.block_rows = 0  # query tile rows; 0: automatic (propagation.choose_block_shape)
  config.block_cols = 0  # query tile columns; 0: automatic
  config.frame_chunk = 0  # frames per backbone forward; 0: automatic
  return config


def spec_from(config: ml_collections.ConfigDict) -> propagation.PropagationSpec:
  """The PropagationSpec of a settings ConfigDict."""
  return propagation.PropagationSpec(
    context_frames=int(config.context_frames),
    prefill_context=bool(config.prefill_context),
    topk=int(config.topk),
    temperature=float(config.temperature),
    weighting=str(config.weighting),
    window=str(config.window),
    radius=float(config.radius),
    window_first_frame=bool(config.window_first_frame),
    block_rows=int(config.block_rows),
    block_cols=int(config.block_cols),
  )


def parse_override(config: ml_collections.ConfigDict, assignment: str) -> None:
  """Applies `key=value` to config, converting value to the type of the existing field."""
  key, sep, text = assignment.partition("=")
  key = key.strip()
  if not sep or key not in config:
    raise ValueError(f"override {assignment!r}: expected key=value with key in {sorted(config)}")
  current = config[key]
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"override {key}: expected true/false, got {text!r}")
    value = text.lower() in ("true", "1")
  elif isinstance(current, tuple):
    value = tuple(float(v) for v in text.split(","))
    if len(value) != len(current):
      raise ValueError(f"override {key}: expected {len(current)} comma-separated numbers")
  elif isinstance(current, (int, float, str)):
    value = type(current)(text)
  else:
    raise ValueError(f"override {key}: cannot set a {type(current).__name__}")
  config[key] = value
