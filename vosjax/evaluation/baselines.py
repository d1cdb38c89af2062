"""Trivial motion baseline: threshold the flow magnitude after removing the median (camera) flow.

Motion Grouping must beat this to show it learned more than "what moves differently from most
pixels". The threshold is parameter-free (Otsu's method per frame) so it is not tuned on the data it
is scored on; frames whose residual motion is below `min_motion` everywhere are background. The
default `min_motion` scales with the image (0.2% of its diagonal: 0.5 px at 128x224, 0.09 px at
32x32), so the baseline is equally strong at every evaluation resolution.
"""

from __future__ import annotations

import numpy as np


MIN_MOTION_FRACTION = 0.002  # of the image diagonal: 0.5 px at 128x224


def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
  """Otsu's threshold of a 1-D sample: the cut maximising the between-class variance."""
  values = np.asarray(values, np.float64).ravel()
  lo, hi = float(values.min()), float(values.max())
  if hi <= lo:
    return hi
  hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
  centers = (edges[:-1] + edges[1:]) / 2
  weight0 = np.cumsum(hist)
  weight1 = weight0[-1] - weight0
  sum0 = np.cumsum(hist * centers)
  mean0 = sum0 / np.maximum(weight0, 1)
  mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
  between = weight0 * weight1 * (mean0 - mean1) ** 2
  return float(edges[1:][np.argmax(between)])


def median_flow_foreground(
  forward_flow: np.ndarray, backward_flow: np.ndarray | None = None, min_motion: float | None = None
) -> np.ndarray:
  """Foreground = pixels whose flow differs from the frame's median flow by an Otsu threshold.

  Args:
    forward_flow: float [..., T, H, W, 2] flow t -> t+1 (the last frame is all zeros in MOVi).
    backward_flow: optional float [..., T, H, W, 2] flow t -> t-1, used for the last frame.
    min_motion: residual magnitude (pixels) below which nothing counts as moving; None: 0.2% of
      the image diagonal.

  Returns:
    bool [..., T, H, W].
  """
  flow = np.asarray(forward_flow, np.float32).copy()
  if min_motion is None:
    min_motion = MIN_MOTION_FRACTION * float(np.hypot(*flow.shape[-3:-1]))
  if backward_flow is not None:
    flow[..., -1, :, :, :] = -np.asarray(backward_flow, np.float32)[..., -1, :, :, :]
  lead = flow.shape[:-3]
  frames = flow.reshape((-1,) + flow.shape[-3:])
  out = np.zeros(frames.shape[:-1], bool)
  for i, frame in enumerate(frames):
    median = np.median(frame.reshape(-1, 2), axis=0)
    magnitude = np.linalg.norm(frame - median, axis=-1)
    if magnitude.max() < min_motion:
      continue
    out[i] = magnitude > max(otsu_threshold(magnitude), min_motion)
  return out.reshape(lead + out.shape[-2:])
