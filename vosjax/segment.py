"""Segments your own video with a trained checkpoint.

  python -m vosjax.segment --config configs/demo.py --workdir WORKDIR --input VIDEO --output DIR \
      [--config.key=value ...] [--max_frames N] [--chunk_frames N]

Give the config and `--config.*` overrides used for training (the model must match the checkpoint).
VIDEO is a video file (mp4, avi, mov, mkv, webm, gif, ...) or a folder of frames. The frames are
resized to `config.data.resolution` for the model and the masks are upsampled (nearest) back to the
frame size. Writes into DIR:
  masks/00000.png ...  one indexed PNG per frame (DAVIS palette; the DAVIS result format),
  overlay.gif          masks over the frames (at most 480 pixels wide or high), for people,
  overlay.mp4          the same at the frame size (when OpenCV can write MP4 here),
  flow_cache/          optical flow (Motion Grouping), reused when the same video is segmented again.

Methods:
  motion_grouping: OpenCV DIS flow from each frame to the next (forward) and the previous (backward),
    computed at the frame size and resized with the vectors rescaled (as on DAVIS), through the
    method's `predict` as in evaluation. Ids: 0 background, 1 foreground.
  betrayed: the frames through the method's `predict` (key-frame attention clustering). Every
    cluster, background included, is a segment; ids are ranked by area over the video, so the
    largest segment (usually the background) is 0 and the overlay leaves it uncoloured.

Long videos are processed in windows of `--chunk_frames` + 2 frames (one static shape, one
compilation; the last window is aligned to the video's end instead of padded). Neighbouring windows
overlap: a window's first and last frame are kept only where they are the video's own, because
Motion Grouping's `predict` drops the backward flow of a window's first frame and the forward flow of
its last. Betrayed by Attention clusters each window separately; its clusters are linked to the
previous window's by IoU on the frames both label (Hungarian matching), so ids stay the same over
time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging as absl_logging
import cv2
from ml_collections import config_flags
import numpy as np
from scipy import optimize
import tqdm

from vosjax.data import optical_flow
from vosjax.data import video as video_io

SUPPORTED_METHODS = ("motion_grouping", "betrayed")
GIF_MAX_SIDE = 480
# Two clusters of neighbouring windows are the same segment when their IoU on the shared frames is
# at least this (the usual criterion for a match); other clusters get new ids.
LINK_MIN_IOU = 0.5

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file used for training.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training directory holding checkpoints/.")
_INPUT = flags.DEFINE_string("input", None, "Video file or folder of frames to segment.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for the masks and overlays.")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", None, "Segment at most this many frames.",
                                   lower_bound=1)
_CHUNK_FRAMES = flags.DEFINE_integer(
    "chunk_frames", 64, "Frames per model call (plus 2 shared with the neighbours); bounds the "
    "memory on long videos.", lower_bound=1)
_FLOW_PRESET = flags.DEFINE_enum("flow_preset", "medium", list(optical_flow.DIS_PRESETS),
                                 "OpenCV DIS preset of the optical flow (Motion Grouping).")
_FPS = flags.DEFINE_float("fps", None, "Frame rate of the overlays; default: the input's, else 10.")
flags.mark_flags_as_required(["config", "workdir", "input", "output"])


@dataclasses.dataclass
class SegmentOutputs:
  """What `segment_video` wrote."""
  masks_dir: Path
  num_frames: int
  gif: Path
  mp4: Path | None


class SegmentError(ValueError):
  """Bad input or setup (unsupported method, unreadable video, no checkpoint): one clear line."""


def check_method(config) -> None:
  if config.method not in SUPPORTED_METHODS:
    raise SegmentError(f"vosjax.segment supports config.method in {SUPPORTED_METHODS}, got "
                     f"{config.method!r}.")


# ---------------------------------------------------------------- windows and ids


def windows(num_frames: int, chunk_frames: int) -> tuple[int, list[int]]:
  """(window length, first frames of the windows) covering a video; see the module docstring.

  Windows hold `chunk_frames + 2` frames, or the whole video when it is that short. Consecutive
  windows overlap by 2 frames; the last one ends at the video's last frame.
  """
  if chunk_frames < 1:
    raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
  window = chunk_frames + 2
  if num_frames <= window:
    return num_frames, [0]
  return window, list(range(0, num_frames - window, chunk_frames)) + [num_frames - window]


def kept_end(start: int, window: int, num_frames: int) -> int:
  """End (exclusive, a video frame index) of the frames a window's result is kept for: all but its
  last frame unless that is the video's last (it lacks a forward flow inside the window)."""
  return start + window if start + window >= num_frames else start + window - 1


def link_ids(previous: np.ndarray, current: np.ndarray, num_ids: int, next_id: int
             ) -> tuple[np.ndarray, int]:
  """Maps a window's cluster ids to video ids by IoU with the previous window's on shared frames.

  Args:
    previous: int [S, h, w] video ids of the shared frames (from the previous window).
    current: int [S, h, w] this window's cluster ids of the same frames.
    num_ids: the window's number of ids (> max(current): some clusters may miss the shared frames).
    next_id: the first unused video id.

  Returns:
    (mapping int64 [num_ids]: window id -> video id, the new first unused video id). Window ids
    matched (IoU >= LINK_MIN_IOU, Hungarian) keep the previous id; the others get new ids.
  """
  num_previous, num_current = int(previous.max()) + 1, num_ids
  intersection = np.bincount((previous.astype(np.int64) * num_current + current).ravel(),
                             minlength=num_previous * num_current).reshape(num_previous, num_current)
  union = intersection.sum(1, keepdims=True) + intersection.sum(0, keepdims=True) - intersection
  iou = intersection / np.maximum(union, 1)
  rows, cols = optimize.linear_sum_assignment(-iou)
  mapping = np.full(num_current, -1, np.int64)
  for row, col in zip(rows, cols):
    if iou[row, col] >= LINK_MIN_IOU:
      mapping[col] = row
  unmatched = np.flatnonzero(mapping < 0)
  mapping[unmatched] = next_id + np.arange(len(unmatched))
  return mapping, next_id + len(unmatched)


def rank_by_area(ids: np.ndarray) -> np.ndarray:
  """Relabels ids by decreasing pixel count (largest -> 0) -> uint8; ranks past 255 become 255."""
  counts = np.bincount(ids.ravel())
  order = np.argsort(-counts, kind="stable")
  rank = np.empty_like(order)
  rank[order] = np.arange(len(order))
  if np.count_nonzero(counts) > 256:
    logging.warning("%d segments: the smallest %d share id 255 (PNG ids are 0..255).",
                    np.count_nonzero(counts), np.count_nonzero(counts) - 255)
  return np.minimum(rank, 255).astype(np.uint8)[ids]


def predict_in_windows(predict: Callable[[dict], dict], inputs: dict[str, np.ndarray],
                       chunk_frames: int) -> np.ndarray:
  """Runs `predict` over windows of a video and joins the ids.

  Args:
    predict: batch dict of `[1, W, ...]` arrays -> dict with ids `[1, W, h, w]` (and "foreground"
      when the ids are fixed classes, which need no linking between windows).
    inputs: per-frame arrays `[T, ...]` (e.g. forward_flow `[T, h, w, 2]` or video `[T, h, w, 3]`).
    chunk_frames: frames kept per window; windows hold `chunk_frames + 2` frames.

  Returns:
    int32 `[T, h, w]` ids, consistent over the whole video.
  """
  num_frames = len(next(iter(inputs.values())))
  window, starts = windows(num_frames, chunk_frames)
  out = None
  filled = next_id = 0  # frames [0, filled) are labelled; video ids [0, next_id) are used
  for start in tqdm.tqdm(starts, desc="segment", unit="window"):
    prediction = predict({k: np.asarray(v[start:start + window])[None] for k, v in inputs.items()})
    ids = np.asarray(prediction["ids"])[0].astype(np.int64)
    if np.any(prediction.get("overflow", False)):
      logging.warning("Frames %d-%d: clustering capacity exceeded (config.model.max_clusters / "
                      "max_window_clusters): some clusters were dropped and their pixels went to "
                      "the nearest kept one.", start, start + window - 1)
    if out is None:
      out = np.zeros((num_frames,) + ids.shape[1:], np.int32)
    if "foreground" not in prediction:  # cluster ids: arbitrary per window
      if start == 0:
        mapping, next_id = np.arange(ids.max() + 1), int(ids.max()) + 1
      else:
        mapping, next_id = link_ids(out[start:filled], ids[:filled - start], int(ids.max()) + 1,
                                    next_id)
      ids = mapping[ids]
    # Frames before `filled` keep the previous window's result: there the first frame of this
    # window lacks its backward flow, and cluster ids were linked on them.
    end = kept_end(start, window, num_frames)
    out[filled:end] = ids[filled - start:end - start]
    filled = end
  return out


def upsample_nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of `[..., h, w]` to `[..., H, W]` (pixel centres, as
  jax.image.resize; `clustering.upsample_labels` copies torch's top-left alignment instead)."""
  height, width = ids.shape[-2:]
  rows = ((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64)
  cols = ((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64)
  return ids[..., rows[:, None], cols[None, :]]


# ---------------------------------------------------------------- inputs


def input_fps(path: Path, default: float = 10.0) -> float:
  """The frame rate a video file declares (OpenCV), else `default` (frame folders, GIFs)."""
  if path.is_dir() or path.suffix.lower() == ".gif":
    return default
  capture = cv2.VideoCapture(str(path))
  try:
    fps = capture.get(cv2.CAP_PROP_FPS)
  finally:
    capture.release()
  return float(fps) if 0 < fps < 1000 else default


def resize_frames(frames: np.ndarray, resolution: tuple[int, int]) -> np.ndarray:
  """uint8 `[T, H, W, 3]` -> float32 `[T, h, w, 3]` in [0, 1], bilinear (as the frame readers)."""
  height, width = resolution
  return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR)
                   for f in frames]).astype(np.float32) / 255.0


def _cache_key(path: Path, frames: np.ndarray) -> str:
  """Names a video's flows in the cache: its path, size and date, and the frames read."""
  stat = path.stat()
  source = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{frames.shape}"
  return f"{path.stem or 'video'}-{hashlib.sha1(source.encode()).hexdigest()[:10]}"


def dis_flows(frames: np.ndarray, resolution: tuple[int, int], cache_dir: Path, key: str,
              preset: str) -> dict[int, np.ndarray]:
  """Forward (gap 1) and backward (gap -1) DIS flow `[T, h, w, 2]` (dy, dx), cached on disk.

  Computed at the frame size of `frames` (uint8 `[T, H, W, 3]`), then resized to `resolution` with
  the vectors rescaled, like `vosjax.data.davis.sequence_flows`; zeros where t + gap is outside.
  """
  def compute(gap: int) -> np.ndarray:
    flows = np.zeros((len(frames),) + tuple(resolution) + (2,), np.float32)
    valid = np.flatnonzero(optical_flow.valid_gap_frames(len(frames), gap))
    for t in tqdm.tqdm(valid, desc=f"optical flow (gap {gap:+d})", unit="frame"):
      flows[t] = optical_flow.resize_flow(
          optical_flow.dis_flow(frames[t], frames[t + gap], preset), resolution)
    return flows

  return optical_flow.cached_flows(cache_dir, key, (1, -1), resolution, compute,
                                   method=f"dis-{preset}")


# ---------------------------------------------------------------- model


def _init_batch(config, resolution: tuple[int, int]) -> dict[str, np.ndarray]:
  """A zero batch with the shapes `method.init_params` reads (the training data is not needed)."""
  if config.method == "motion_grouping":
    flow = np.zeros((1,) + tuple(resolution) + (2,), np.float32)
    return {"flow_a": flow, "flow_b": flow}
  return {"video": np.zeros((1, config.data.clip_length) + tuple(resolution) + (3,), np.float32)}


def load_predictor(config, workdir: str, resolution: tuple[int, int]
                   ) -> tuple[Callable[[dict], dict], int]:
  """Restores the latest checkpoint of `workdir`; returns (predict on numpy batches, its step).

  Runs on one device: a video is one example, so there is no batch to split.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from vosjax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from vosjax import train  # pylint: disable=g-import-not-at-top

  checkpoints = Path(workdir) / "checkpoints"
  if not checkpoints.is_dir():  # checked first: CheckpointManager would create the folder
    raise SegmentError(f"No checkpoint folder {checkpoints}; train first: python -m "
                            f"vosjax.main --config CONFIG --workdir {workdir}")
  method = train.load_method(config)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",),
                           axis_types=(jax.sharding.AxisType.Auto,))
  model = method.make_model(config)
  state, _ = train.create_train_state(method, model, config, method.make_optimizer(config),
                                      _init_batch(config, resolution), mesh)
  manager = checkpoint_lib.CheckpointManager(workdir, max_to_keep=config.max_to_keep)
  restored = manager.restore_latest(state)
  if restored is None:
    raise SegmentError(
        f"No checkpoint in {checkpoints} fits this config (steps there: {manager.all_steps()}); "
        "pass the --config and --config.* overrides used for training (see the warnings above).")
  params = restored.state.params
  model_argument, bind = train.place_model(model, mesh)
  jitted = jax.jit(lambda p, b, m: method.predict(p, bind(m), b, config))
  return (lambda batch: jax.device_get(jitted(params, batch, model_argument)),
          int(restored.state.step))


# ---------------------------------------------------------------- outputs


def write_outputs(output_dir: Path, frames: np.ndarray, ids: np.ndarray, fps: float
                  ) -> SegmentOutputs:
  """Indexed PNGs, overlay GIF and MP4 of uint8 frames `[T, H, W, 3]` and ids `[T, h, w]` (0..255)."""
  num_frames, height, width = frames.shape[:3]
  masks_dir = output_dir / "masks"
  scale = min(1.0, GIF_MAX_SIDE / max(height, width))
  gif_size = (max(1, round(width * scale)), max(1, round(height * scale)))
  overlay = np.empty_like(frames)
  gif_frames = np.empty((num_frames, gif_size[1], gif_size[0], 3), np.uint8)
  for t in tqdm.tqdm(range(num_frames), desc="write masks", unit="frame"):
    full_ids = upsample_nearest(ids[t], (height, width))
    video_io.write_indexed_png(masks_dir / f"{t:05d}.png", full_ids)
    overlay[t] = video_io.overlay_masks(frames[t], full_ids)
    gif_frames[t] = cv2.resize(overlay[t], gif_size, interpolation=cv2.INTER_AREA)
  gif = video_io.write_gif(output_dir / "overlay.gif", gif_frames, fps=fps)
  try:
    mp4 = video_io.write_mp4(output_dir / "overlay.mp4", overlay, fps=fps)
  except RuntimeError as err:
    logging.warning("No overlay.mp4: %s", err)
    mp4 = None
  return SegmentOutputs(masks_dir=masks_dir, num_frames=num_frames, gif=gif, mp4=mp4)


def segment_video(config, workdir: str, input_path: str, output_dir: str, *,
                  max_frames: int | None = None, chunk_frames: int = 64,
                  flow_preset: str = "medium", fps: float | None = None) -> SegmentOutputs:
  """Segments one video (file or frame folder) with the latest checkpoint of `workdir`."""
  check_method(config)
  path, output_dir = Path(input_path), Path(output_dir)
  # Read before the model is built, so that a bad input fails in seconds.
  try:
    frames = video_io.read_video(path, max_frames=max_frames)
  except (FileNotFoundError, ValueError) as err:
    raise SegmentError(f"cannot read the input video: {err}") from None
  if len(frames) < 2:
    raise SegmentError(f"{path}: {len(frames)} frame; segmentation needs at least 2 (motion).")
  frames = np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)  # 4x less memory
  resolution = tuple(config.data.resolution)
  print(f"Input {path}: {len(frames)} frames of {frames.shape[2]}x{frames.shape[1]}; model "
        f"resolution {resolution[1]}x{resolution[0]}.", flush=True)
  predict, step = load_predictor(config, workdir, resolution)
  print(f"Restored checkpoint step {step} from {workdir}/checkpoints.", flush=True)
  if config.method == "motion_grouping":
    flows = dis_flows(frames, resolution, output_dir / "flow_cache", _cache_key(path, frames),
                      flow_preset)
    inputs = {"forward_flow": flows[1], "backward_flow": flows[-1]}
  else:
    inputs = {"video": resize_frames(frames, resolution)}
  ids = predict_in_windows(predict, inputs, chunk_frames)
  ids = ids.astype(np.uint8) if config.method == "motion_grouping" else rank_by_area(ids)
  outputs = write_outputs(output_dir, frames, ids, fps or input_fps(path))
  print(f"Wrote {outputs.num_frames} masks to {outputs.masks_dir}/*.png (DAVIS palette), "
        f"overlay {outputs.gif}" + (f" and {outputs.mp4}" if outputs.mp4 else "") + ".", flush=True)
  return outputs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Warnings only unless --verbosity is given: orbax logs every restore at length at INFO; the
  # progress bars and prints are what people follow here.
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    segment_video(_CONFIG.value, _WORKDIR.value, _INPUT.value, _OUTPUT.value,
                  max_frames=_MAX_FRAMES.value, chunk_frames=_CHUNK_FRAMES.value,
                  flow_preset=_FLOW_PRESET.value, fps=_FPS.value)
  except SegmentError as err:  # one clear line, no traceback
    sys.exit(f"vosjax.segment: error: {err}")


if __name__ == "__main__":
  app.run(main)
