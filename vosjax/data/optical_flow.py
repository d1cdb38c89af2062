"""Optical flow for real videos: OpenCV DIS flow, Middlebury .flo files, RAFT flow folders, cache.

Convention (all of vosjax): flow[..., 0] = delta_row (dy), flow[..., 1] = delta_col (dx), in
pixels of the array's own resolution; flow[t] with gap g maps frame t to frame t + g. Middlebury
`.flo` files store (u, v) = (dx, dy): `read_flo` / `write_flo` convert.

Motion Grouping (docs/motion_grouping.md, "Flow input") stores RAFT flows as
`Flows_gap{g}/<seq>/<frame>.flo` (optionally `Flows_gap{g}/<res>/<seq>/...`), named after the
source frame t, for the flow t -> t + g; it resizes them bilinearly and rescales the vectors
(`resize_flow`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import tqdm

from vosjax.core import images

FLO_MAGIC = np.float32(202021.25)
DIS_PRESETS = ("fast", "medium", "fine")


def _dis(preset: str):
  if preset not in DIS_PRESETS:
    raise ValueError(f"unknown DIS preset {preset!r}; choose from {DIS_PRESETS}")
  if preset == "fast":
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
  dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
  if preset == "fine":
    # MEDIUM refined down to full resolution, with more variational refinement.
    dis.setFinestScale(0)
    dis.setVariationalRefinementIterations(10)
  return dis


def _gray_uint8(frame: np.ndarray) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.dtype != np.uint8:
    frame = images.to_uint8(frame)
  if frame.ndim == 3 and frame.shape[-1] == 3:
    frame = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
  if frame.ndim != 2:
    raise ValueError(f"a frame must be [H, W, 3] or [H, W], got shape {frame.shape}")
  return np.ascontiguousarray(frame)


def valid_gap_frames(num_frames: int, gap: int) -> np.ndarray:
  """bool [T]: frames t whose target t + gap lies inside the video."""
  targets = np.arange(num_frames) + gap
  return (targets >= 0) & (targets < num_frames)


def video_flow(video, gap: int, preset: str = "medium", progress: bool = False) -> np.ndarray:
  """Flow of every frame t to t + gap -> float32 [T, H, W, 2]; zeros where t + gap is outside.

  Args:
    video: [T, H, W, 3] float in [0, 1] or uint8, or grayscale uint8 [T, H, W].
    gap: frame offset (negative: backward flow).
    preset: DIS preset.
    progress: show a progress bar (long user videos).
  """
  video = np.asarray(video)
  if video.ndim not in (3, 4) or (video.ndim == 4 and video.shape[-1] != 3):
    raise ValueError(f"video must be [T, H, W, 3] or grayscale [T, H, W], got {video.shape}")
  if gap == 0:
    raise ValueError("gap must be non-zero")
  dis = _dis(preset)
  gray = [_gray_uint8(frame) for frame in video]
  flows = np.zeros(video.shape[:3] + (2,), np.float32)
  frames = np.flatnonzero(valid_gap_frames(len(video), gap))
  if progress:
    frames = tqdm.tqdm(frames, desc=f"optical flow (gap {gap:+d})", unit="frame")
  for t in frames:
    flows[t] = dis.calc(gray[t], gray[t + gap], None)[..., ::-1]
  return flows


def resize_flow(flow, resolution: Sequence[int]) -> np.ndarray:
  """Bilinear resize of flow [..., H, W, 2] to (h, w), vectors rescaled (Motion Grouping)."""
  flow = np.asarray(flow, np.float32)
  height, width = flow.shape[-3:-1]
  new_height, new_width = resolution
  if (height, width) == (new_height, new_width):
    return flow
  frames = flow.reshape((-1, height, width, 2))
  out = np.stack(
    [cv2.resize(f, (new_width, new_height), interpolation=cv2.INTER_LINEAR) for f in frames]
  )
  out *= np.array([new_height / height, new_width / width], np.float32)
  return out.reshape(flow.shape[:-3] + (new_height, new_width, 2))


# ---------------------------------------------------------------- .flo files


def write_flo(path, flow) -> Path:
  """(delta_row, delta_col) [H, W, 2] -> Middlebury .flo ((u, v) = (dx, dy)), written atomically."""
  path = Path(path)
  flow = np.asarray(flow, np.float32)
  if flow.ndim != 3 or flow.shape[-1] != 2:
    raise ValueError(f"{path}: flow must be [H, W, 2], got shape {flow.shape}")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with open(tmp, "wb") as f:
    f.write(FLO_MAGIC.tobytes())
    f.write(np.array([flow.shape[1], flow.shape[0]], "<i4").tobytes())
    f.write(np.ascontiguousarray(flow[..., ::-1]).astype("<f4").tobytes())
  os.replace(tmp, path)
  return path


def read_flo(path) -> np.ndarray:
  """Middlebury .flo -> float32 [H, W, 2] (delta_row, delta_col); clear errors for bad files."""
  path = Path(path)
  try:
    data = path.read_bytes()
  except FileNotFoundError:
    raise FileNotFoundError(f"missing flow file {path}") from None
  if len(data) < 12 or np.frombuffer(data[:4], "<f4")[0] != FLO_MAGIC:
    raise ValueError(f"{path}: not a .flo file (bad magic number)")
  width, height = (int(v) for v in np.frombuffer(data[4:12], "<i4"))
  expected = 12 + width * height * 8
  if width <= 0 or height <= 0 or len(data) != expected:
    raise ValueError(f"{path}: {len(data)} bytes, but a {width}x{height} .flo needs {expected}")
  uv = np.frombuffer(data[12:], "<f4").reshape(height, width, 2)
  return np.ascontiguousarray(uv[..., ::-1], dtype=np.float32)


def raft_flow_dir(flow_root, sequence: str, gap: int, res: str | None = None) -> Path:
  """`flow_root/Flows_gap{gap}[/res]/<sequence>` of the Motion Grouping layout."""
  base = Path(flow_root) / f"Flows_gap{gap}"
  return (base / res / sequence) if res else base / sequence


def read_raft_flows(
  flow_root,
  sequence: str,
  gap: int,
  frame_names: Sequence[str],
  resolution: Sequence[int] | None = None,
  res: str | None = None,
) -> np.ndarray:
  """Precomputed .flo files of one sequence and gap -> float32 [T, h, w, 2] (dy, dx).

  Frames whose target t + gap is outside the sequence have no file and get zeros; any other
  missing file is an error naming it.

  Args:
    flow_root: folder holding `Flows_gap{g}` folders.
    sequence: sequence name; frame_names: frame file stems in order (e.g. "00000").
    resolution: optional (h, w) to resize to (bilinear, vectors rescaled).
    res: optional resolution sub-folder ("480p", "1080p").
  """
  folder = raft_flow_dir(flow_root, sequence, gap, res)
  if not folder.is_dir():
    raise FileNotFoundError(f"RAFT flow folder {folder} does not exist")
  valid = valid_gap_frames(len(frame_names), gap)
  flows = None
  for t, name in enumerate(frame_names):
    if not valid[t]:
      continue
    flow = read_flo(folder / f"{name}.flo")
    if resolution is not None:
      flow = resize_flow(flow, resolution)
    if flows is None:
      flows = np.zeros((len(frame_names),) + flow.shape, np.float32)
    flows[t] = flow
  if flows is None:
    raise ValueError(f"{folder}: sequence of {len(frame_names)} frames has no flow for gap {gap}")
  return flows


# ---------------------------------------------------------------- disk cache


def flow_cache_path(cache_dir, key: str, gap: int, resolution: Sequence[int], method: str) -> Path:
  height, width = resolution
  return Path(cache_dir) / key / f"{method}_gap{gap}_{height}x{width}.npy"


def cached_flows(
  cache_dir,
  key: str,
  gaps: Sequence[int],
  resolution: Sequence[int],
  compute: Callable[[int], np.ndarray],
  method: str = "dis-medium",
  mmap: bool = True,
) -> dict[int, np.ndarray]:
  """Flows [T, h, w, 2] per gap, computed once per (key, gap, resolution, method) and kept on disk.

  Args:
    cache_dir: cache folder; files are `<key>/<method>_gap<g>_<h>x<w>.npy`.
    key: the sequence's cache name (e.g. "davis2016-480p/blackswan").
    gaps: gaps wanted.
    resolution: (h, w) of the cached flows.
    compute: gap -> float32 [T, h, w, 2], called only for gaps missing from the cache.
    method: names the flow source in the file name.
    mmap: return read-only memory maps instead of loading into memory.
  """
  out = {}
  for gap in gaps:
    path = flow_cache_path(cache_dir, key, gap, resolution, method)
    if not path.exists():
      flows = np.asarray(compute(gap), np.float32)
      if flows.ndim != 4 or flows.shape[1:] != (*resolution, 2):
        raise ValueError(
          f"computed flow for {key} gap {gap} has shape {flows.shape}, expected "
          f"[T, {resolution[0]}, {resolution[1]}, 2]"
        )
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
      with open(tmp, "wb") as f:
        np.save(f, flows)
      os.replace(tmp, path)  # Atomic: readers never see a partial file.
    try:
      out[gap] = np.load(path, mmap_mode="r" if mmap else None)
    except ValueError as err:
      raise ValueError(f"corrupt flow cache file {path} ({err}); delete it") from None
  return out


def cached_video_dis_flows(
  video,
  resolution: Sequence[int],
  cache_dir,
  key: str,
  preset: str = "medium",
  gaps: Sequence[int] = (1, -1),
  progress: bool = True,
) -> dict[int, np.ndarray]:
  """DIS flows [T, h, w, 2] per gap of a video [T, H, W, 3], computed at its own size and resized
  to `resolution` with the vectors rescaled (as on DAVIS), cached under `cache_dir/key`."""
  return cached_flows(
    cache_dir,
    key,
    gaps,
    resolution,
    lambda gap: resize_flow(video_flow(video, gap, preset, progress), resolution),
    method=f"dis-{preset}",
  )
