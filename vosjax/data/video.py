"""Video and mask I/O: video files and frame folders in, GIF / MP4 / DAVIS palette PNGs out.

Frames are float32 [T, H, W, 3] in [0, 1] when read, uint8 [T, H, W, 3] when written.
Video files are decoded with OpenCV (FFmpeg backend: mp4, avi, mov, mkv, webm, ...); GIFs
with Pillow.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from PIL import ImageSequence

from vosjax.core import images

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _pascal_palette() -> np.ndarray:
  """The PASCAL VOC colour map that DAVIS annotations use (bit-interleaved label bits)."""
  palette = np.zeros((256, 3), np.uint8)
  for label in range(256):
    value, color = label, [0, 0, 0]
    for bit in range(8):
      for channel in range(3):
        color[channel] |= ((value >> channel) & 1) << (7 - bit)
      value >>= 3
    palette[label] = color
  return palette


DAVIS_PALETTE = _pascal_palette()  # uint8 [256, 3]; 0 black, 1 (128, 0, 0), 2 (0, 128, 0), ...


def _resize_frame(frame: np.ndarray, resolution) -> np.ndarray:
  if resolution is None or tuple(frame.shape[:2]) == tuple(resolution):
    return frame
  height, width = resolution
  return cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)


def _to_float(frames: list[np.ndarray]) -> np.ndarray:
  return np.stack(frames).astype(np.float32) / 255.0


def read_image(path: Path) -> np.ndarray:
  """An image file -> uint8 RGB [H, W, 3]; clear errors for missing or unreadable files."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except FileNotFoundError:
    raise FileNotFoundError(f"missing image file {path}") from None
  except (OSError, SyntaxError) as err:
    raise ValueError(f"{path}: unreadable image ({err})") from None


def list_frame_files(folder: Path) -> list[Path]:
  return sorted(
    p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
  )


def read_frame_folder(folder, resolution=None, max_frames: int | None = None) -> np.ndarray:
  """Image files of a folder in name order -> float32 [T, H, W, 3] in [0, 1].

  Args:
    folder: directory of frames (jpg, png, ...).
    resolution: optional (H, W) to resize to (bilinear).
    max_frames: read at most this many frames.
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"frame folder {folder} does not exist")
  files = list_frame_files(folder)[:max_frames]
  if not files:
    raise ValueError(f"frame folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
  frames = []
  for path in files:
    frame = read_image(path)
    if resolution is None and frames and frame.shape != frames[0].shape:
      raise ValueError(
        f"{path}: size {frame.shape[1]}x{frame.shape[0]} differs from the first "
        f"frame's {frames[0].shape[1]}x{frames[0].shape[0]}; pass a resolution"
      )
    frames.append(_resize_frame(frame, resolution))
  return _to_float(frames)


def read_video(path, resolution=None, max_frames: int | None = None) -> np.ndarray:
  """A video file or a frame folder -> float32 [T, H, W, 3] in [0, 1].

  Args:
    path: video file (mp4, avi, mov, mkv, webm, gif, ...) or folder of frames.
    resolution: optional (H, W) to resize to (bilinear).
    max_frames: read at most this many frames.
  """
  path = Path(path)
  if path.is_dir():
    return read_frame_folder(path, resolution, max_frames)
  if not path.is_file():
    raise FileNotFoundError(f"video file {path} does not exist")
  if path.stat().st_size == 0:
    raise ValueError(f"video file {path} is empty (0 bytes)")
  frames = []
  if path.suffix.lower() == ".gif":
    try:
      with Image.open(path) as image:
        for frame in ImageSequence.Iterator(image):
          if max_frames is not None and len(frames) >= max_frames:
            break
          frames.append(_resize_frame(np.asarray(frame.convert("RGB")), resolution))
    except (OSError, SyntaxError) as err:
      raise ValueError(f"{path}: unreadable GIF ({err})") from None
  else:
    capture = cv2.VideoCapture(str(path))
    try:
      while capture.isOpened() and (max_frames is None or len(frames) < max_frames):
        ok, frame = capture.read()
        if not ok:
          break
        frames.append(_resize_frame(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), resolution))
    finally:
      capture.release()
  if not frames:
    raise ValueError(f"{path}: no frame could be decoded (corrupt file or unsupported format)")
  return _to_float(frames)


def _as_uint8_frames(frames) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
    raise ValueError(f"frames must be [T, H, W, 3] with T > 0, got shape {frames.shape}")
  if frames.dtype != np.uint8:
    if not np.issubdtype(frames.dtype, np.floating):
      raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {frames.dtype}")
    frames = images.to_uint8(frames)
  return frames


def _temporary_sibling(path: Path) -> Path:
  return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def write_gif(path, frames, fps: float = 10.0) -> Path:
  """uint8 (or float in [0, 1]) [T, H, W, 3] -> looping GIF, written atomically."""
  path = Path(path)
  frames = _as_uint8_frames(frames)
  path.parent.mkdir(parents=True, exist_ok=True)
  pictures = [Image.fromarray(frame) for frame in frames]
  tmp = _temporary_sibling(path)
  pictures[0].save(
    tmp,
    format="GIF",
    save_all=True,
    append_images=pictures[1:],
    duration=max(int(round(1000 / fps)), 10),
    loop=0,
  )
  os.replace(tmp, path)
  return path


def write_mp4(path, frames, fps: float = 24.0) -> Path:
  """uint8 (or float in [0, 1]) [T, H, W, 3] -> MP4 (OpenCV 'mp4v'), written atomically."""
  path = Path(path)
  frames = _as_uint8_frames(frames)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = _temporary_sibling(path)
  height, width = frames.shape[1:3]
  writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
  if not writer.isOpened():
    raise RuntimeError(f"OpenCV cannot write MP4 files here (no encoder for {path})")
  try:
    for frame in frames:
      writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  finally:
    writer.release()
  os.replace(tmp, path)
  return path


def write_indexed_png(path, ids, palette: np.ndarray = DAVIS_PALETTE) -> Path:
  """int [H, W] ids in 0..255 -> indexed PNG with the DAVIS palette (the DAVIS result format)."""
  path = Path(path)
  ids = np.asarray(ids)
  if ids.ndim != 2:
    raise ValueError(f"{path}: ids must be [H, W], got shape {ids.shape}")
  if ids.size and (ids.min() < 0 or ids.max() > 255):
    raise ValueError(f"{path}: ids must lie in 0..255, got {ids.min()}..{ids.max()}")
  image = Image.fromarray(ids.astype(np.uint8))
  # putpalette turns the L image into P keeping every pixel value (convert("P") would requantize).
  image.putpalette(np.asarray(palette, np.uint8).ravel().tolist())
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = _temporary_sibling(path)
  image.save(tmp, format="PNG")
  os.replace(tmp, path)
  return path


def overlay_masks(
  frames, ids, alpha: float = 0.5, palette: np.ndarray = DAVIS_PALETTE, contours: bool = True
) -> np.ndarray:
  """Colours each object over the frames (as the DAVIS toolkit's overlay), with outlines.

  Args:
    frames: uint8 or float in [0, 1], [T, H, W, 3] (or [H, W, 3]).
    ids: int [T, H, W] (or [H, W]); 0 = background is left untouched.
    alpha: weight of the image where an object is drawn.
    contours: draw each object's 1-pixel boundary in its full colour.

  Returns:
    uint8 [T, H, W, 3] (or [H, W, 3]).
  """
  single = np.asarray(frames).ndim == 3
  frames = _as_uint8_frames(np.asarray(frames)[None] if single else frames)
  ids = np.asarray(ids)
  ids = ids[None] if ids.ndim == 2 else ids
  if ids.shape != frames.shape[:3]:
    raise ValueError(f"ids {ids.shape} must match frames {frames.shape[:3]}")
  colors = np.asarray(palette, np.float32)[np.clip(ids, 0, 255)]
  blended = alpha * frames + (1 - alpha) * colors
  out = np.where(ids[..., None] > 0, blended, frames)
  if contours:
    edge = np.zeros(ids.shape, bool)
    horizontal = ids[:, :, :-1] != ids[:, :, 1:]
    vertical = ids[:, :-1] != ids[:, 1:]
    edge[:, :, :-1] |= horizontal
    edge[:, :, 1:] |= horizontal
    edge[:, :-1] |= vertical
    edge[:, 1:] |= vertical
    edge &= ids > 0
    out = np.where(edge[..., None], colors, out)
  out = np.round(out).astype(np.uint8)
  return out[0] if single else out


def draw_keypoints(frame, joints, parents=None, palette: np.ndarray = DAVIS_PALETTE) -> np.ndarray:
  """uint8 [H, W, 3] copy of frame with joints float [J, 2] (x, y; x < 0: invisible) drawn as
  dots in palette colours 1..J, each joined to parents[j] when both are visible."""
  import cv2  # pylint: disable=g-import-not-at-top

  out = np.array(_as_uint8_frames(np.asarray(frame)[None])[0], order="C")
  joints = np.asarray(joints, np.float64)
  radius = max(2, round(min(out.shape[:2]) / 80))
  visible = (joints[:, 0] >= 0) & (joints[:, 1] >= 0)
  points = [(int(round(x)), int(round(y))) for x, y in joints.tolist()]
  if parents is not None:
    for j, parent in enumerate(parents):
      if visible[j] and visible[parent] and j != parent:
        colour = [int(c) for c in palette[(j % 255) + 1]]
        cv2.line(out, points[parent], points[j], colour, max(1, radius // 2), cv2.LINE_AA)
  for j in np.flatnonzero(visible):
    colour = [int(c) for c in palette[(j % 255) + 1]]
    cv2.circle(out, points[j], radius, colour, -1, cv2.LINE_AA)
    cv2.circle(out, points[j], radius, (255, 255, 255), 1, cv2.LINE_AA)
  return out


def resize_frames(frames: np.ndarray, resolution) -> np.ndarray:
  """uint8 `[T, H, W, 3]` -> float32 `[T, h, w, 3]` in [0, 1], bilinear (as the frame readers)."""
  height, width = resolution
  return (
    np.stack(
      [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in frames]
    ).astype(np.float32)
    / 255.0
  )
