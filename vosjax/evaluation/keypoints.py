"""PCK for propagated keypoints, as the CRW (videowalk) JHMDB evaluation computes it.

`code/eval/eval_pck.py`: the reference size of frame t is 0.6 x the diagonal of the bounding box
of that frame's GT joints (only joints predicted visible count; a prediction < 0 means
"invisible"); the first frame (given) is not scored; a joint is correct when its distance to the
GT divided by the reference size is <= the threshold; PCK is the mean over joint types of each
type's percentage correct.
"""

from __future__ import annotations

import numpy as np


def reference_sizes(gt: np.ndarray, visible: np.ndarray) -> np.ndarray:
  """float64 [T]: 0.6 x the diagonal of the visible GT joints' box in each frame.

  Args:
    gt: float [T, J, 2] GT (x, y). visible: bool [T, J].
  """
  gt = np.asarray(gt, np.float64)
  sizes = np.zeros(gt.shape[0])
  for t in range(gt.shape[0]):
    points = gt[t][np.asarray(visible[t], bool)]
    if len(points):
      sizes[t] = 0.6 * np.linalg.norm(points.max(0) - points.min(0))
  return sizes


def pck(pred: np.ndarray, gt: np.ndarray, thresholds=(0.1, 0.2)) -> dict[float, float]:
  """PCK (percent) per threshold over videos, mean over joint types.

  Args:
    pred: list of float [T, J, 2] predicted (x, y) in pixels per video (x < 0: invisible).
    gt: list of float [T, J, 2] GT (x, y) in pixels per video.
  """
  if len(pred) != len(gt):
    raise ValueError(f"{len(pred)} predicted videos for {len(gt)} GT videos")
  distances: dict[int, list[float]] = {}
  for p, g in zip(pred, gt):
    p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
    if p.shape != g.shape or p.ndim != 3 or p.shape[-1] != 2:
      raise ValueError(f"prediction {p.shape} and GT {g.shape} must both be [T, J, 2]")
    visible = p[..., 0] >= 0
    sizes = reference_sizes(g, visible)
    for t in range(1, p.shape[0]):
      for j in range(p.shape[1]):
        if visible[t, j]:
          d = np.linalg.norm(p[t, j] - g[t, j]) / sizes[t]
          distances.setdefault(j, []).append(d)
  out = {}
  for threshold in thresholds:
    per_joint = [100.0 * np.mean(np.asarray(d) <= threshold) for _, d in sorted(distances.items())]
    out[threshold] = float(np.mean(per_joint))
  return out
