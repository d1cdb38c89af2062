"""Segments your own video with a trained checkpoint.

  python -m vosjax.segment --config configs/demo.py --workdir WORKDIR --input VIDEO --output DIR \
      [--config.key=value ...] [--max_frames N] [--chunk_frames N] [--levels]

Give the config and `--config.*` overrides used for training (the model must match the checkpoint);
every override `python -m vosjax.main` takes is taken (`backbone.arch_overrides.*` included).
Without a checkpoint in WORKDIR, `--config.init.checkpoint=PATH` segments with imported params, e.g.
the authors' released weights (`vosjax.methods.checkpoints`).
VIDEO is a video file (mp4, avi, mov, mkv, webm, gif, ...) or a folder of frames. The frames are
resized to `config.data.resolution` for the model and the masks are upsampled (nearest) back to the
frame size. Writes into DIR:
  masks/00000.png ...  one indexed PNG per frame (DAVIS palette; the DAVIS result format),
  overlay.gif          masks over the frames (at most 480 pixels wide or high), for people,
  overlay.mp4          the same at the frame size (when OpenCV can write MP4 here),
  flow_cache/          optical flow (Motion Grouping), reused when the same video is segmented
  again,
  levels/level_<i>/00000.png ...  with --levels (methods with a clustering hierarchy, Betrayed by
                       Attention): the masks of every level, coarse (0, = masks/) to fine,
  levels/strip.png     the middle frame's overlay at every level, side by side, coarse to fine.
The command prints the resolution the model runs at (e.g. Betrayed's and SMTC's
`model.inference_resolution`, to which the frames are resized before the network).

Methods: those with the `SegmentsVideos` capability (`vosjax.methods.interface`). The method turns
the frames into its inputs (`segment_inputs`: Motion Grouping computes OpenCV DIS forward and
backward flow, cached in flow_cache/; Betrayed by Attention resizes the frames) and its `predict`
runs as in evaluation. Ids that are classes (Motion Grouping: 0 background, 1 foreground) are
written as they are; cluster ids (Betrayed: every cluster, background included, is a segment) are
ranked by area over the video, so the largest segment (usually the background) is 0 and the
overlay leaves it uncoloured.

Long videos are processed in windows of `--chunk_frames` + 2 frames (one static shape, one
compilation; the last window is aligned to the video's end instead of padded). Neighbouring windows
overlap: a window's first and last frame are kept only where they are the video's own, because
Motion Grouping's `predict` drops the backward flow of a window's first frame and the forward flow
of its last. Betrayed by Attention clusters each window separately; its clusters are linked to the
previous window's by IoU on the frames both label (Hungarian matching), so ids stay the same over
time.
Methods that segment independent chunks of frames (SMTC's 4-frame clips, `PredictsInChunks`) run in
calls of whole chunks instead (about `--chunk_frames` frames), laid out as on the whole video. Where
a method proposes overlapping candidate masks (SMTC, `ProposesCandidates`), each pixel shows the
candidate the method ranks first there (SMTC: the highest min-max normalised mask value).
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
import jax
from ml_collections import config_flags
import numpy as np
import tqdm

from vosjax import methods
from vosjax.core import checkpoint as checkpoint_lib
from vosjax.core import host_memory
from vosjax.core import images
from vosjax.core import sharding
from vosjax.data import optical_flow
from vosjax.data import video as video_io
from vosjax.evaluation.windows import segment_frames
from vosjax.evaluation.windows import segment_hierarchy
from vosjax.evaluation.windows import upsample_nearest
from vosjax.methods import checkpoints
from vosjax.methods import interface

GIF_MAX_SIDE = 480

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file used for training.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training directory holding checkpoints/.")
_INPUT = flags.DEFINE_string("input", None, "Video file or folder of frames to segment.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for the masks and overlays.")
_MAX_FRAMES = flags.DEFINE_integer(
  "max_frames", None, "Segment at most this many frames.", lower_bound=1
)
_CHUNK_FRAMES = flags.DEFINE_integer(
  "chunk_frames",
  64,
  "Frames per model call (plus 2 shared with the neighbours); bounds the memory on long videos.",
  lower_bound=1,
)
_FLOW_PRESET = flags.DEFINE_enum(
  "flow_preset",
  "medium",
  list(optical_flow.DIS_PRESETS),
  "OpenCV DIS preset of the optical flow (Motion Grouping).",
)
_LEVELS = flags.DEFINE_bool(
  "levels",
  False,
  "Also write the masks of every level of the clustering hierarchy (coarse to fine) to "
  "OUTPUT/levels/ and their overlays side by side to OUTPUT/levels/strip.png (Betrayed).",
)
_FPS = flags.DEFINE_float("fps", None, "Frame rate of the overlays; default: the input's, else 10.")
flags.mark_flags_as_required(["config", "workdir", "input", "output"])


@dataclasses.dataclass
class SegmentOutputs:
  """What `segment_video` wrote."""

  masks_dir: Path
  num_frames: int
  gif: Path
  mp4: Path | None
  level_dirs: list[Path] = dataclasses.field(default_factory=list)  # coarse to fine
  strip: Path | None = None


class SegmentError(ValueError):
  """Bad input or setup (unsupported method, unreadable video, no checkpoint): one clear line."""


def load_segmenting_method(config):
  """The method of `config`, which must have the `SegmentsVideos` capability."""
  try:
    method = methods.load_method(config)
  except ValueError as err:
    raise SegmentError(str(err)) from None
  if not isinstance(method, interface.SegmentsVideos):
    capable = methods.with_capability(interface.SegmentsVideos)
    raise SegmentError(
      f"vosjax.segment supports the methods {capable}, got config.method={config.method!r}."
    )
  return method


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


def _cache_key(path: Path, frames: np.ndarray) -> str:
  """Names a video's flows in the cache: its path, size and date, and the frames read."""
  stat = path.stat()
  source = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{frames.shape}"
  return f"{path.stem or 'video'}-{hashlib.sha1(source.encode()).hexdigest()[:10]}"


# ---------------------------------------------------------------- model


def load_predictor(method, config, workdir: str) -> tuple[Callable[[dict], dict], str]:
  """The params of the latest checkpoint of `workdir`, else of `config.init.checkpoint`
  (`vosjax.methods.checkpoints.restore_for_inference`); returns (predict on numpy batches, where
  the params came from).

  Runs on one device: a video is one example, so there is no batch to split.
  """
  try:
    checkpoints.checkpoint_folder(config, workdir)  # before the model is built
    mesh = sharding.make_mesh(jax.devices()[:1])
    model = method.make_model(config)
    restored = checkpoints.restore_for_inference(method, model, config, workdir, mesh)
  except (
    FileNotFoundError,
    checkpoint_lib.CheckpointMismatchError,
    checkpoints.CheckpointError,
  ) as err:
    raise SegmentError(str(err)) from None
  predict = sharding.jit_predict(
    method, model, config, mesh, grown_config=interface.capacity_growth(method)
  )
  params = restored.params
  return (lambda batch: jax.device_get(predict(params, batch))), restored.source


# ---------------------------------------------------------------- outputs


def write_outputs(
  output_dir: Path, frames: np.ndarray, ids: np.ndarray, fps: float
) -> SegmentOutputs:
  """Indexed PNGs, overlay GIF and MP4 of uint8 frames `[T, H, W, 3]` and ids `[T, h, w]`
  (0..255)."""
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


def write_levels(output_dir: Path, frames: np.ndarray, levels: np.ndarray) -> tuple[list, Path]:
  """Indexed PNGs of each level `[L, T, H, W]` (coarse to fine) in `levels/level_<i>/`, and
  `levels/strip.png`: the middle frame's overlay at each level, left to right."""
  level_dirs = []
  for index, level in enumerate(levels):
    folder = output_dir / "levels" / f"level_{index}"
    for t, ids in enumerate(level):
      video_io.write_indexed_png(folder / f"{t:05d}.png", ids)
    level_dirs.append(folder)
  middle = len(frames) // 2
  height, width = frames.shape[1:3]
  scale = min(1.0, GIF_MAX_SIDE / max(height, width))
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  strip = np.concatenate(
    [
      cv2.resize(
        video_io.overlay_masks(frames[middle], level[middle]), size, interpolation=cv2.INTER_AREA
      )
      for level in levels
    ],
    axis=1,
  )
  path = output_dir / "levels" / "strip.png"
  cv2.imwrite(str(path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
  return level_dirs, path


def segment_video(
  config,
  workdir: str,
  input_path: str,
  output_dir: str,
  *,
  max_frames: int | None = None,
  chunk_frames: int = 64,
  flow_preset: str = "medium",
  fps: float | None = None,
  levels: bool = False,
) -> SegmentOutputs:
  """Segments one video (file or frame folder) with the latest checkpoint of `workdir`; `levels`:
  also every level of the method's clustering hierarchy (`interface.ClustersHierarchically`)."""
  method = load_segmenting_method(config)
  if levels:
    if not isinstance(method, interface.ClustersHierarchically):
      capable = methods.with_capability(interface.ClustersHierarchically)
      raise SegmentError(
        f"--levels needs a method with a clustering hierarchy ({capable}), got "
        f"config.method={config.method!r}."
      )
    config = method.with_hierarchy_levels(config)
  path, output_dir = Path(input_path), Path(output_dir)
  # Read before the model is built, so that a bad input fails in seconds.
  try:
    frames = video_io.read_video(path, max_frames=max_frames)
  except (FileNotFoundError, ValueError) as err:
    raise SegmentError(f"cannot read the input video: {err}") from None
  if len(frames) < 2:
    raise SegmentError(f"{path}: {len(frames)} frame; segmentation needs at least 2 (motion).")
  frames = images.to_uint8(frames)  # 4x less memory
  resolution = tuple(method.model_resolution(config))
  print(
    f"Input {path}: {len(frames)} frames of {frames.shape[2]}x{frames.shape[1]}; the model runs "
    f"at {resolution[1]}x{resolution[0]} (width x height).",
    flush=True,
  )
  predict, source = load_predictor(method, config, workdir)
  print(f"Parameters: {source}.", flush=True)
  inputs = method.segment_inputs(
    frames,
    config,
    cache_dir=output_dir / "flow_cache",
    cache_key=_cache_key(path, frames),
    flow_preset=flow_preset,
  )
  if levels:
    ids, level_ids = segment_hierarchy(method, predict, inputs, chunk_frames, frames.shape[1:3])
  else:
    ids, _ = segment_frames(method, predict, inputs, config, chunk_frames, frames.shape[1:3])
  outputs = write_outputs(output_dir, frames, ids, fps or input_fps(path))
  if levels:
    outputs.level_dirs, outputs.strip = write_levels(output_dir, frames, level_ids)
    print(
      f"Wrote the masks of {len(level_ids)} hierarchy levels (coarse to fine) to "
      f"{output_dir / 'levels'}/level_*/ and their overlays to {outputs.strip}.",
      flush=True,
    )
  print(
    f"Wrote {outputs.num_frames} masks to {outputs.masks_dir}/*.png (DAVIS palette), "
    f"overlay {outputs.gif}" + (f" and {outputs.mp4}" if outputs.mp4 else "") + ".",
    flush=True,
  )
  return outputs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  host_memory.reexec_with_huge_pages()  # process setup
  # Warnings only unless --verbosity is given: orbax logs every restore at length at INFO; the
  # progress bars and prints are what people follow here.
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    segment_video(
      _CONFIG.value,
      _WORKDIR.value,
      _INPUT.value,
      _OUTPUT.value,
      max_frames=_MAX_FRAMES.value,
      chunk_frames=_CHUNK_FRAMES.value,
      flow_preset=_FLOW_PRESET.value,
      fps=_FPS.value,
      levels=_LEVELS.value,
    )
  except SegmentError as err:  # one clear line, no traceback
    sys.exit(f"vosjax.segment: error: {err}")


if __name__ == "__main__":
  app.run(main)
