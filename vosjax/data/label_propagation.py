"""Inputs of label propagation as each protocol reads them: frames and first-frame labels.

DINO (`eval_video_segmentation.py`): `read_frame` = cv2.imread, cv2 bilinear resize of the uint8
BGR image to (th, tw), / 255, BGR -> RGB, (x - mean) / std; `read_seg` = PIL NEAREST of the
first annotation to (tw // patch, th // patch), one-hot with max + 1 channels.

CRW as SMTC runs it (`vos.py`, `eval_prop.py`): cv2.imread, / 255, BGR -> RGB, (x - mean) / std
at the native size, then a linear resize (torch trilinear on [1, T, 3, H, W], align_corners
False) to (H // s * s, W // s * s); labels: the first annotation's label set, one-hot, cv2
INTER_LINEAR (not antialiased) to (floor(W / s), floor(H / s)) of the native size.

Channel order: DINO's channels are the ids 0..max. CRW orders channels by the sorted BGR
colours of the annotation; here they are the sorted ids present, which is the same order for
DAVIS palette ids 0..7 (the order only matters at exact argmax ties).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from vosjax.data.davis import VOID_LABEL
from vosjax.data.davis import read_label_png

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def list_frames(folder) -> list[Path]:
  """Frame files of a folder, sorted by name (DAVIS numbering sorts the same either way)."""
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"missing frame folder {folder}")
  paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
  if not paths:
    raise FileNotFoundError(f"{folder}: no {'/'.join(FRAME_SUFFIXES)} frames")
  return paths


def read_annotation_ids(path) -> np.ndarray:
  """uint8 [H, W] object ids of an annotation PNG: indexed PNGs as stored (void 255 -> 0),
  8-bit grayscale / binary masks (DAVIS-2016's 0/255) as one object (> 0)."""
  with Image.open(path) as image:
    mode = image.mode
  values = read_label_png(path)
  if mode in ("L", "1"):
    return (values > 0).astype(np.uint8)
  values = np.where(values == VOID_LABEL, 0, values)
  if values.max() > 255:
    raise ValueError(f"{path}: ids above 255 cannot be written as DAVIS PNGs")
  return values.astype(np.uint8)


def _read_bgr(path) -> np.ndarray:
  image = cv2.imread(str(path), cv2.IMREAD_COLOR)
  if image is None:
    raise ValueError(f"{path}: unreadable image")
  return image


def dino_frame_size(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
  """`read_frame`'s (th, tw): the short side to `short_side`, the long side scaled and floored
  to a multiple of `multiple`."""
  if height > width:
    tw = short_side
    th = int(((tw * height) / width // multiple) * multiple)
  else:
    th = short_side
    tw = int(((th * width) / height // multiple) * multiple)
  return th, tw


def dino_label_size(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
  """`read_seg`'s (th, tw) (its own rule: `_w > _h` picks the height; differs for squares)."""
  if width > height:
    th = short_side
    tw = int(((th * width) / height // multiple) * multiple)
  else:
    tw = short_side
    th = int(((tw * height) / width // multiple) * multiple)
  return th, tw


def normalize(rgb: np.ndarray, mean, std) -> np.ndarray:
  """float32 [..., 3] -> (x - mean) / std per channel, in float32 (as `color_normalize`)."""
  return (rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def read_dino_frames(paths, short_side: int, multiple: int, mean, std) -> np.ndarray:
  """Normalised float32 [T, th, tw, 3] RGB frames as DINO's `read_frame` makes them."""
  frames = []
  for path in paths:
    image = _read_bgr(path)
    th, tw = dino_frame_size(image.shape[0], image.shape[1], short_side, multiple)
    image = cv2.resize(image, (tw, th)).astype(np.float32) / np.float32(255.0)
    frames.append(normalize(image[..., ::-1], mean, std))
  return np.stack(frames)


def torch_linear_matrix(out_size: int, in_size: int) -> np.ndarray:
  """float32 [out, in]: torch linear interpolation with `size=` and align_corners=False."""
  scale = np.float32(in_size / out_size)
  src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  src = np.maximum(src, np.float32(0.0))
  i0 = np.minimum(src.astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam = src - i0.astype(np.float32)
  matrix = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, i0), np.float32(1) - lam)
  np.add.at(matrix, (rows, i1), lam)
  return matrix


def read_crw_frames(paths, stride: int, mean, std, crop_size: int = 0) -> np.ndarray:
  """Normalised float32 [T, H // s * s, W // s * s, 3] RGB frames as CRW/SMTC make them.

  crop_size > 0: first the test code's `--cropSize` resize (`vos.py` / `jhmdb.py`: cv2 bilinear
  of the float RGB image to crop x crop, `ratio = 1.0`), so H = W = crop_size.
  """
  frames = []
  for path in paths:
    image = _read_bgr(path).astype(np.float32) / np.float32(255.0)
    image = np.ascontiguousarray(image[..., ::-1])
    if crop_size > 0:
      image = cv2.resize(image, (crop_size, crop_size))
    frames.append(normalize(image, mean, std))
  frames = np.stack(frames)
  height, width = frames.shape[1:3]
  new_h, new_w = height // stride * stride, width // stride * stride
  if (new_h, new_w) != (height, width):
    rows, cols = torch_linear_matrix(new_h, height), torch_linear_matrix(new_w, width)
    frames = np.einsum("yh,thwc->tywc", rows, frames)
    frames = np.einsum("xw,tywc->tyxc", cols, frames).astype(np.float32)
  return frames


def dino_first_labels(ids: np.ndarray, patch: int, short_side: int, multiple: int) -> np.ndarray:
  """uint8 [H, W] ids -> float32 [th // patch, tw // patch, max + 1] one-hot (`read_seg`)."""
  th, tw = dino_label_size(ids.shape[0], ids.shape[1], short_side, multiple)
  small = np.asarray(Image.fromarray(ids).resize((tw // patch, th // patch), Image.NEAREST))
  return np.eye(int(small.max()) + 1, dtype=np.float32)[small]


def crw_first_labels(ids: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
  """uint8 [H, W] ids -> (float32 [floor(H / s), floor(W / s), K] soft one-hot, ids [K])."""
  label_ids = np.unique(ids)
  onehot = (ids[..., None] == label_ids).astype(np.float32)
  size = (ids.shape[1] // stride, ids.shape[0] // stride)
  soft = cv2.resize(onehot, size, interpolation=cv2.INTER_LINEAR)
  return soft.reshape(size[1], size[0], len(label_ids)), label_ids.astype(np.int32)


def crop_annotation(ids: np.ndarray, crop_size: int) -> np.ndarray:
  """uint8 [H, W] ids -> [crop, crop] as `vos.py` resizes the label image under `--cropSize`.

  `cv2.resize(lblimg, (newh, neww), cv2.INTER_NEAREST)` passes INTER_NEAREST as the `dst`
  argument, so the (3-channel, uint8) label image is resized bilinearly: pixels on a boundary
  between two ids get in-between values, and those values join the label set (each its own
  channel), as in the original. The ids' channels are equal, so one channel is resized here.
  """
  ids = np.asarray(ids, np.uint8)
  colour = cv2.resize(np.repeat(ids[..., None], 3, -1), (crop_size, crop_size))
  return colour[..., 0]
