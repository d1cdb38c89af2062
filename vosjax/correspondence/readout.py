"""Soft label maps -> label maps at the frame size, as each protocol reads them out (host NumPy).

- `dino_readout`: bilinear upsampling by the patch size (torch `F.interpolate`, align_corners
  False), per-channel min-max where the channel's maximum is positive (`norm_mask`), argmax
  (first maximum), then PIL NEAREST to the original frame size.
- `crw_readout`: cv2 bilinear of the [h, w, K] probabilities to the frame size, argmax, then the
  channel's label id.
- `keypoint_coordinates`: CRW's `process_pose`: per keypoint channel, the top-3 cells' weighted
  mean position on the label grid (-1 where the channel is all zero).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def _linear_taps(out_size: int, scale: float, in_size: int):
  """torch's align_corners=False source taps: indices i0, i1 and weights (1 - l, l), float32."""
  src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * np.float32(scale)
  src = np.maximum(src - np.float32(0.5), np.float32(0.0))
  i0 = np.minimum(src.astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam = (src - i0.astype(np.float32)).astype(np.float32)
  return i0, i1, (np.float32(1) - lam).astype(np.float32), lam


def torch_bilinear(maps: np.ndarray, out_hw: tuple[int, int], scale=None) -> np.ndarray:
  """float32 [h, w, K] -> [H, W, K] as torch bilinear (align_corners=False, no antialias).

  scale: (sy, sx) source step per output pixel; default in/out (torch with `size=`); torch with
  `scale_factor=f, recompute_scale_factor=False` uses 1/f. Separable: each source row is
  interpolated along x once, then rows are blended along y (the same float32 products and sums
  as blending the four taps per output pixel).
  """
  maps = np.asarray(maps, np.float32)
  height, width = maps.shape[:2]
  sy, sx = scale if scale is not None else (height / out_hw[0], width / out_hw[1])
  y0, y1, wy0, wy1 = _linear_taps(out_hw[0], sy, height)
  x0, x1, wx0, wx1 = _linear_taps(out_hw[1], sx, width)
  rows = wx0[None, :, None] * maps[:, x0] + wx1[None, :, None] * maps[:, x1]
  return wy0[:, None, None] * rows[y0] + wy1[:, None, None] * rows[y1]


def min_max_channels(maps: np.ndarray) -> np.ndarray:
  """DINO's `norm_mask` on [H, W, K]: channels with a positive maximum -> (x - min) / max."""
  planes = np.ascontiguousarray(np.moveaxis(np.asarray(maps, np.float32), -1, 0))
  return np.moveaxis(_min_max_planes(planes), 0, -1)


def _min_max_planes(planes: np.ndarray) -> np.ndarray:
  """norm_mask in place on channel-first [K, H, W] (contiguous planes reduce fast)."""
  for plane in planes:
    if plane.max() > 0:
      plane -= plane.min()
      plane /= plane.max()
  return planes


def dino_readout(soft: np.ndarray, patch: int, frame_hw: tuple[int, int], norm_mask=True):
  """float32 [h, w, K] -> uint8 [H, W] channel ids at the original frame size.

  Computed channel-first ([K, H, W]: the per-channel min-max and the argmax read contiguous
  planes), with the same float32 arithmetic as torch_bilinear and min_max_channels.
  """
  height, width = soft.shape[:2]
  planes = np.ascontiguousarray(np.moveaxis(np.asarray(soft, np.float32), -1, 0))
  y0, y1, wy0, wy1 = _linear_taps(height * patch, 1.0 / patch, height)
  x0, x1, wx0, wx1 = _linear_taps(width * patch, 1.0 / patch, width)
  rows = wx0 * planes[:, :, x0] + wx1 * planes[:, :, x1]
  maps = wy0[:, None] * rows[:, y0] + wy1[:, None] * rows[:, y1]
  if norm_mask:
    maps = _min_max_planes(maps)
  ids = np.argmax(maps, axis=0).astype(np.uint8)
  return np.asarray(Image.fromarray(ids).resize((frame_hw[1], frame_hw[0]), Image.NEAREST))


def crw_readout(
  soft: np.ndarray, label_ids: np.ndarray, frame_hw: tuple[int, int], norm_mask=False
):
  """float32 [h, w, K] -> int32 [H, W] label ids (cv2 bilinear to the frame size, argmax)."""
  soft = np.array(soft, np.float32)
  if norm_mask:  # eval_prop.py --norm_mask: min-max over channels at each cell
    soft -= soft.min(-1, keepdims=True)
    soft /= soft.max(-1, keepdims=True)
  maps = cv2.resize(soft, (frame_hw[1], frame_hw[0]))
  if maps.ndim == 2:
    maps = maps[..., None]
  return np.asarray(label_ids, np.int32)[np.argmax(maps, axis=-1)]


def keypoint_coordinates(soft: np.ndarray, topk: int = 3) -> np.ndarray:
  """float32 [h, w, 1 + J] (channel 0 background) -> float32 [2, J] (x, y) on the label grid.

  CRW's `process_pose`: the top-k cells of each keypoint channel, weights renormalised, weighted
  mean of their (x, y); -1 for a channel that is zero everywhere.
  """
  maps = np.asarray(soft, np.float32)[..., 1:]
  flat = maps.reshape(-1, maps.shape[-1])
  k = min(flat.shape[0], topk)
  order = np.argsort(-flat, axis=0, kind="stable")[:k]
  values = np.take_along_axis(flat, order, axis=0)
  with np.errstate(divide="ignore", invalid="ignore"):  # all-zero channels: set to -1 below
    values = values / values.sum(0, keepdims=True)
  xx, yy = order % maps.shape[1], order // maps.shape[1]
  coords = np.stack([(xx * values).sum(0), (yy * values).sum(0)]).astype(np.float32)
  coords[:, flat.sum(0) == 0] = -1
  return coords
