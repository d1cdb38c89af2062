"""Command: propagate first-frame labels through videos with a frozen ViT (dense correspondence).

  python -m vosjax.propagate --preset dino --backbone dino_vits16 \\
      --davis DAVIS_ROOT --split 2017/val --output OUT
  python -m vosjax.propagate --preset crw --backbone dino_vits16 --checkpoint smtc.pth \\
      --checkpoint_prefix encoder. --frames DIR --first_labels 00000.png --output OUT
  python -m vosjax.propagate ... --set topk=10 --set radius=5   # any preset field
  python -m vosjax.propagate --features block --workdir WORKDIR --config configs/movi_e.py \\
      [--config.key=value ...] --davis DAVIS_ROOT --output OUT

`--features block`: the keys of a trained Betrayed by Attention spatio-temporal block (the method's
`interface.ProvidesDenseFeatures`: per-frame last-block patch keys of its backbone, then the block's
k = qkv(norm1(keys)), heads concatenated, what its clustering compares), from the newest checkpoint
of WORKDIR, else from `--config.init.checkpoint=FILE` (the authors' checkpoint), restored as
`vosjax.segment` does; the config and overrides are those of training. The frames are normalised
as the method's inference does (ImageNet statistics; Kinetics with `--config.eval.mode=official`) at
the preset's frame size (`model.inference_resolution` is not applied).

Writes OUT/<sequence>/<frame>.png (DAVIS indexed PNGs, the semi-supervised result format) and
OUT/overlays/<sequence>/<frame>.jpg. Score with
`python -m vosjax.evaluate --protocol davis2017-semi-supervised --gt DAVIS_ROOT --results OUT`.

Keypoints and parts (CRW's JHMDB / VIP test code; `--preset crw` or `crw_stride8`):

  python -m vosjax.propagate --mode keypoints --preset crw_stride8 --jhmdb LIST --output OUT
  python -m vosjax.propagate --mode parts --preset crw --vip VIP_Fine --output OUT

keypoints: LIST lines are `<frame folder> <joint_positions.mat>` (`vosjax.data.jhmdb`); writes
OUT/keypoints/<video>.json and joint overlays, prints PCK@0.1/0.2 (also
`python -m vosjax.evaluate --protocol jhmdb-pck --gt LIST --results OUT/keypoints`). parts:
VIP_Fine's Images/, Annotations/Category_ids/, lists/<split>_videos.txt (`vosjax.data.vip`);
writes part PNGs (indexed palette) and overlays, prints mIoU (also `--protocol vip-miou`).

Protocols: `vosjax.correspondence.settings` (`dino`, `crw`, `crw_stride8`). Features are computed
once per video, `frame_chunk` frames per forward pass, then labels are propagated by
`vosjax.correspondence.propagation` (blocked affinity, one jitted scan).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vosjax.core import checkpoint as checkpoint_lib
from vosjax.core import config as config_lib
from vosjax.correspondence import propagation
from vosjax.correspondence import readout
from vosjax.correspondence import settings
from vosjax.data import jhmdb
from vosjax.data import label_propagation as inputs
from vosjax.data import video as video_io
from vosjax.data import vip
from vosjax.evaluation import keypoints
from vosjax.evaluation import parts
from vosjax.methods import dense_features
from vosjax.methods.dense_features import TrainedFeatures
from vosjax.models import features as features_lib
from vosjax.models import pretrained
from vosjax.models import state_dicts
from vosjax.models import vit

FEATURES = ("tokens", "tokens_normed", "keys")
FEATURE_SOURCES = ("backbone", "block")  # --features
MODES = ("masks", "keypoints", "parts")
# The test resize of the keypoint and part modes when --set crop_size is not given: CRW's test
# default --cropSize 320 (eval_pck.py's feat_res 40 = 320 / 8) for JHMDB, UVC's VIP command's
# --scale_size 560 560 for VIP.
MODE_CROP = {"keypoints": 320, "parts": 560}


def load_backbone(name: str, checkpoint=None, prefix: str = "", random_init=False, depth=0):
  """(module, params) of a vosjax ViT: a named DINO/DINOv2 checkpoint, a local checkpoint file
  (tensors under `prefix` only, e.g. "encoder." for an SMTC checkpoint), or random weights."""
  arch = pretrained.resolve_architecture(name)
  if depth:
    if not random_init:
      raise ValueError("--depth changes the architecture: only with --random_init (tests)")
    arch = arch.replace(depth=depth)
  module = vit.VisionTransformer(arch)
  if random_init:
    return module, pretrained.random_params(arch, seed=0)
  if checkpoint:
    state = state_dicts.read_state_dict(checkpoint)
    if prefix:
      kept = {n[len(prefix) :]: v for n, v in state.items() if n.startswith(prefix)}
      if not kept:
        raise ValueError(f"{checkpoint}: no tensor name starts with {prefix!r}")
      state = kept
    return module, pretrained.convert_state_dict(state, arch, source=str(checkpoint))
  config = pretrained.default_backbone_config()
  config.name = name
  return pretrained.load_backbone(config)


def patch_size(module) -> int:
  """Pixels per feature cell of a ViT module or `TrainedFeatures`."""
  return module.patch_size if isinstance(module, TrainedFeatures) else module.arch.patch_size


def frame_statistics(module, config):
  """(mean, std) the frames are normalised with before `module`: the preset's for a ViT, none
  (frames in [0, 1]) for `TrainedFeatures`, which normalise as their method's inference does."""
  if isinstance(module, TrainedFeatures):
    return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
  return config.mean, config.std


@functools.partial(jax.jit, static_argnames=("module", "feature", "chunk"))
def _features(module, params, frames, feature: str, chunk: int):
  num_frames = frames.shape[0]
  num_chunks = -(-num_frames // chunk)
  padded = jnp.pad(frames, ((0, num_chunks * chunk - num_frames), (0, 0), (0, 0), (0, 0)))
  padded = padded.reshape((num_chunks, chunk) + frames.shape[1:])

  def forward(batch):
    return getattr(module.apply({"params": params}, batch), feature)

  out = jax.lax.map(forward, padded)
  return out.reshape((num_chunks * chunk,) + out.shape[2:])[:num_frames]


def video_features(module, params, frames: np.ndarray, feature: str, frame_chunk: int = 0):
  """float32 [T, h, w, C] features of normalised frames [T, H, W, 3], computed once, `chunk`
  frames per forward pass (0: automatic); `TrainedFeatures`: its features (`feature`, `frame_chunk`
  unused)."""
  if isinstance(module, TrainedFeatures):
    return module.features(params, frames)
  if feature not in FEATURES:
    raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
  chunk = min(features_lib.resolve_frame_chunk(frame_chunk), len(frames))
  return np.asarray(_features(module, params, jnp.asarray(frames), feature, chunk))


def propagate_soft(module, params, config, frames: np.ndarray, first: np.ndarray):
  """Soft label maps [T, h, w, K] of normalised frames [T, H, W, 3] from first-frame labels
  [h, w, K]: features once, resized to the label grid under the CRW protocol, then propagated.
  Returns (soft, timings in seconds: features, propagation)."""
  timings = {}
  start = time.perf_counter()
  feats = video_features(module, params, frames, config.feature, config.frame_chunk)
  if feats.shape[1:3] != first.shape[:2]:
    if config.frames != "crw_resize":
      raise ValueError(
        f"feature grid {feats.shape[1:3]} differs from the label grid {first.shape[:2]} "
        f"(frames {frames.shape[1:3]}, patch {patch_size(module)})"
      )
    # CRW: features trilinearly resized to the label grid (stride-8 variant: upsampled).
    feats = np.stack([readout.torch_bilinear(f, first.shape[:2]) for f in feats])
  timings["features"] = time.perf_counter() - start
  start = time.perf_counter()
  normed = propagation.l2_normalize(jnp.asarray(feats))
  soft = np.asarray(propagation.propagate(normed, first, settings.spec_from(config)))
  timings["propagation"] = time.perf_counter() - start
  return soft, timings


def _crop_size(config) -> int:
  return int(config.get("crop_size", 0)) if config.frames == "crw_resize" else 0


def propagate_video(module, params, config, frame_paths, first_ids: np.ndarray) -> dict[str, Any]:
  """Label maps of one video.

  Args:
    module, params: the ViT (or `TrainedFeatures`). config: a `settings.preset` ConfigDict.
    frame_paths: the frames in order. first_ids: uint8 [H, W] ids of the first frame.

  Returns:
    dict with ids (uint8 [T, H, W] at the frame size), soft ([T, h, w, K] propagated maps),
    label_ids ([K] id of each channel) and timings (seconds: frames, features, propagation).
  """
  start = time.perf_counter()
  patch = patch_size(module)
  mean, std = frame_statistics(module, config)
  frame_hw = first_ids.shape
  crop = _crop_size(config)
  if config.frames == "dino_resize":
    frames = inputs.read_dino_frames(
      frame_paths, config.short_side, config.size_multiple, mean, std
    )
    first = inputs.dino_first_labels(first_ids, patch, config.short_side, config.size_multiple)
    label_ids = np.arange(first.shape[-1])
  elif config.frames == "crw_resize":
    frames = inputs.read_crw_frames(frame_paths, config.label_stride, mean, std, crop)
    cropped = inputs.crop_annotation(first_ids, crop) if crop > 0 else first_ids
    first, label_ids = inputs.crw_first_labels(cropped, config.label_stride)
  else:
    raise ValueError(f"frames must be dino_resize or crw_resize, got {config.frames!r}")
  timings = {"frames": time.perf_counter() - start}
  soft, more = propagate_soft(module, params, config, frames, first)
  timings.update(more)
  ids = []
  for t, maps in enumerate(soft):
    if t == 0 and config.first_frame_output == "annotation":
      ids.append(first_ids)
    elif config.readout == "dino":
      ids.append(readout.dino_readout(maps, patch, frame_hw, config.norm_mask))
    elif crop > 0:
      # Read out at the crop size (as dump_predictions), then PIL NEAREST to the frame size (as
      # eval_vip.py before scoring; DAVIS's convert_davis.py would use cv2 INTER_NEAREST, but
      # eval_prop.sh runs DAVIS at the native size, crop_size 0).
      small = readout.crw_readout(maps, label_ids, (crop, crop), config.norm_mask)
      image = Image.fromarray(small.astype(np.uint8))
      ids.append(np.asarray(image.resize(frame_hw[::-1], Image.NEAREST)))
    else:
      ids.append(readout.crw_readout(maps, label_ids, frame_hw, config.norm_mask))
  return {
    "ids": np.stack(ids).astype(np.uint8),
    "soft": soft,
    "label_ids": label_ids,
    "timings": timings,
  }


def propagate_keypoints(module, params, config, frame_paths, joints: np.ndarray):
  """Joints of one video, the CRW JHMDB test code's way (`vosjax.data.jhmdb`).

  Args:
    joints: float [J, 2] (x, y) 0-based pixels of the first frame.

  Returns:
    dict with joints (float64 [T, J, 2] pixels of the original frames, -1 where invisible),
    grid (float32 [T, J, 2] label-grid coordinates), soft and timings.
  """
  if config.frames != "crw_resize":
    raise ValueError("keypoints follow the CRW test code: use --preset crw or crw_stride8")
  start = time.perf_counter()
  crop, stride = _crop_size(config), config.label_stride
  mean, std = frame_statistics(module, config)
  frames = inputs.read_crw_frames(frame_paths, stride, mean, std, crop)
  with Image.open(frame_paths[0]) as image:
    frame_hw = (image.height, image.width)
  first = jhmdb.keypoint_label_maps(joints, frame_hw, crop, stride, config.keypoint_sigma)
  timings = {"frames": time.perf_counter() - start}
  soft, more = propagate_soft(module, params, config, frames, first)
  timings.update(more)
  grid, pixels = [], []
  for maps in soft:
    if config.norm_mask:  # eval_prop.py --norm_mask, before process_pose
      maps = maps - maps.min(-1, keepdims=True)
      maps = maps / maps.max(-1, keepdims=True)
    coords = readout.keypoint_coordinates(maps, config.keypoint_topk).T
    grid.append(coords)
    pixels.append(jhmdb.grid_to_pixels(coords, frame_hw, crop, stride))
  return {
    "joints": np.stack(pixels),
    "grid": np.stack(grid),
    "soft": soft,
    "frame_hw": frame_hw,
    "timings": timings,
  }


def write_outputs(output: Path, sequence: str, frame_paths, ids: np.ndarray, overlays=True):
  """DAVIS PNGs OUT/<sequence>/<stem>.png and overlays OUT/overlays/<sequence>/<stem>.jpg."""
  for path, frame_ids in zip(frame_paths, ids):
    video_io.write_indexed_png(output / sequence / f"{Path(path).stem}.png", frame_ids)
    if overlays:
      frame = np.asarray(Image.open(path).convert("RGB"))
      if frame.shape[:2] != frame_ids.shape:
        continue
      target = output / "overlays" / sequence / f"{Path(path).stem}.jpg"
      target.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(video_io.overlay_masks(frame, frame_ids)).save(target, quality=90)


def _davis_videos(root: Path, split: str, sequences):
  if sequences:
    names = sequences
  else:
    listing = root / "ImageSets" / split.split("/")[0] / f"{split.split('/')[-1]}.txt"
    if not listing.is_file():
      raise FileNotFoundError(f"missing sequence list {listing} (or pass --sequences)")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
  for name in names:
    frames = inputs.list_frames(root / "JPEGImages" / "480p" / name)
    yield name, frames, root / "Annotations" / "480p" / name / f"{frames[0].stem}.png"


def write_keypoint_outputs(output: Path, name: str, frame_paths, joints, overlays=True):
  """OUT/keypoints/<video>.json (`evaluation.keypoints` format) and joint overlays
  OUT/overlays/<video>/<stem>.jpg."""
  with Image.open(frame_paths[0]) as image:
    frame_hw = (image.height, image.width)
  stems = [Path(p).stem for p in frame_paths]
  keypoints.write_keypoints_json(
    output / "keypoints" / f"{name}.json", name, stems, frame_hw, joints
  )
  if overlays:
    parents = jhmdb.JHMDB_PARENTS if joints.shape[1] == jhmdb.JHMDB_JOINTS else None
    for path, points in zip(frame_paths, joints):
      frame = np.asarray(Image.open(path).convert("RGB"))
      target = output / "overlays" / name / f"{Path(path).stem}.jpg"
      target.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(video_io.draw_keypoints(frame, points, parents)).save(target, quality=90)


def _videos(args, mode: str):
  """(name, frame paths, first labels: annotation path or joints file) per video."""
  sequences = args.sequences.split(",") if args.sequences else None
  if mode == "keypoints":
    if not args.jhmdb:
      raise ValueError("--mode keypoints needs --jhmdb FILE_LIST (frame folder, .mat per line)")
    listed = jhmdb.jhmdb_videos(args.jhmdb)
    return [
      (v.name, v.frames, v.joints_file) for v in listed if not sequences or v.name in sequences
    ]
  if mode == "parts":
    if args.vip_list:
      listed = vip.vip_videos_from_list(args.vip_list)
      listed = [v for v in listed if not sequences or v.name in sequences]
    elif args.vip:
      listed = vip.vip_videos(args.vip, args.vip_split, sequences)
    else:
      raise ValueError("--mode parts needs --vip VIP_Fine (or --vip_list FILE_LIST)")
    return [(v.name, v.frames, v.annotations[0]) for v in listed]
  if args.davis:
    return list(_davis_videos(args.davis, args.split, sequences))
  if args.frames and args.first_labels:
    return [(args.frames.name, inputs.list_frames(args.frames), args.first_labels)]
  raise ValueError("give --davis ROOT, or --frames DIR and --first_labels PNG")


def _score(args, mode: str, names) -> str:
  """The task's score of the videos just written (keypoints: PCK, parts: mIoU)."""
  if mode == "keypoints":
    scores, count = keypoints.score_jhmdb(args.jhmdb, args.output / "keypoints", videos=names)
    return f"PCK@0.1 {scores[0.1]:.2f}, PCK@0.2 {scores[0.2]:.2f} ({count} videos)"
  if mode == "parts" and args.vip:
    miou, _, frames = parts.score_vip(args.vip, args.output, names)
    return f"mIoU {miou:.4f} ({len(names)} videos, {frames} frames)"
  return ""


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m vosjax.propagate",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--mode", default="masks", choices=MODES)
  parser.add_argument("--preset", default="dino", choices=settings.PRESETS)
  parser.add_argument("--set", action="append", default=[], help="override: key=value")
  parser.add_argument(
    "--features",
    default="backbone",
    choices=FEATURE_SOURCES,
    help="backbone: a ViT (--backbone, --checkpoint); block: the keys of a trained "
    "spatio-temporal block (--workdir, --config, --config.key=value)",
  )
  parser.add_argument("--workdir", help="block: a training workdir (its newest checkpoint)")
  parser.add_argument(
    "--config", default="configs/movi_e.py", help="block: the training config file"
  )
  parser.add_argument("--backbone", default="dino_vits16", help="checkpoint or architecture name")
  parser.add_argument("--checkpoint", help="local .pth/.safetensors/.npz weights")
  parser.add_argument("--checkpoint_prefix", default="", help='e.g. "encoder." for SMTC')
  parser.add_argument("--random_init", action="store_true", help="RANDOM weights (smoke tests)")
  parser.add_argument("--depth", type=int, default=0, help="blocks of a --random_init ViT")
  parser.add_argument("--davis", type=Path, help="DAVIS root (JPEGImages/480p, Annotations)")
  parser.add_argument("--split", default="2017/val", help="ImageSets list, e.g. 2017/val")
  parser.add_argument("--sequences", help="comma-separated videos (subset)")
  parser.add_argument("--frames", type=Path, help="one video: folder of frames")
  parser.add_argument("--first_labels", type=Path, help="one video: first-frame label PNG")
  parser.add_argument("--jhmdb", type=Path, help="keypoints: JHMDB file list (folder, .mat)")
  parser.add_argument("--vip", type=Path, help="parts: VIP_Fine root")
  parser.add_argument("--vip_split", default="val", help="parts: lists/<split>_videos.txt")
  parser.add_argument("--vip_list", type=Path, help="parts: file list (frames, label folder)")
  parser.add_argument("--output", type=Path, required=True)
  parser.add_argument("--no_overlays", action="store_true")
  args, unknown = parser.parse_known_args(argv)
  config_overrides = [a for a in unknown if a.startswith("--config.")]
  if len(config_overrides) < len(unknown):
    parser.error(
      f"unrecognized arguments: {' '.join(sorted(set(unknown) - set(config_overrides)))}"
    )
  config = settings.preset(args.preset)
  try:
    if args.features == "block":
      if args.checkpoint or args.random_init or args.depth:
        raise ValueError("--checkpoint, --random_init, --depth pick the ViT of --features backbone")
      if not args.workdir:
        raise ValueError("--features block needs --workdir (a training workdir)")
    elif args.workdir or config_overrides:
      raise ValueError("--workdir and --config.* are for --features block")
    for assignment in args.set:
      settings.parse_override(config, assignment)
    if args.mode != "masks":
      if config.frames != "crw_resize":
        raise ValueError(f"--mode {args.mode} follows the CRW test code: --preset crw|crw_stride8")
      if not any(a.startswith("crop_size=") for a in args.set):
        config.crop_size = MODE_CROP[args.mode]
    videos = _videos(args, args.mode)
    if args.features == "block":
      method_config = config_lib.read_config_file(args.config, config_overrides, "vosjax.propagate")
      module, params = dense_features.load_trained_features(method_config, args.workdir)
      config.feature = "block"
      config.mean, config.std = frame_statistics(module, config)
      print(f"features: the spatio-temporal block keys of {module.source}")
    else:
      module, params = load_backbone(
        args.backbone, args.checkpoint, args.checkpoint_prefix, args.random_init, args.depth
      )
  except (
    FileNotFoundError,
    KeyError,
    ValueError,
    state_dicts.CheckpointError,
    checkpoint_lib.CheckpointMismatchError,
  ) as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  print(f"{args.mode}, preset {args.preset}: " + ", ".join(f"{k}={v}" for k, v in config.items()))
  total_frames, total_seconds = 0, 0.0
  for index, (name, frame_paths, first_path) in enumerate(videos):
    start = time.perf_counter()
    try:
      if args.mode == "keypoints":
        joints = jhmdb.read_joint_positions(first_path)[0]
        result = propagate_keypoints(module, params, config, frame_paths, joints)
        write_keypoint_outputs(
          args.output, name, frame_paths, result["joints"], not args.no_overlays
        )
        labels = f"{joints.shape[0]} joints"
      else:
        if args.mode == "parts":
          first_ids = vip.read_part_ids(first_path)
        else:
          first_ids = inputs.read_annotation_ids(first_path)
        result = propagate_video(module, params, config, frame_paths, first_ids)
        write_outputs(args.output, name, frame_paths, result["ids"], not args.no_overlays)
        labels = f"{len(result['label_ids'])} labels"
    except (FileNotFoundError, KeyError, ValueError) as err:
      print(f"error: {name}: {err}", file=sys.stderr)
      return 1
    seconds = time.perf_counter() - start
    total_frames += len(frame_paths)
    total_seconds += seconds
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in result["timings"].items())
    print(
      f"[{index + 1}/{len(videos)}] {name}: {len(frame_paths)} frames, {labels}, "
      f"{seconds:.1f} s ({timing}); {total_frames / total_seconds:.2f} frames/s overall",
      flush=True,
    )
  score = _score(args, args.mode, [name for name, _, _ in videos])
  if score:
    print(score)
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
