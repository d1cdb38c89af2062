"""PCK for propagated keypoints, as the CRW (videowalk) JHMDB evaluation computes it.

`code/eval/eval_pck.py`: the reference size of frame t is 0.6 x the diagonal of the bounding box
of that frame's GT joints (only joints predicted visible count; a prediction < 0 means
"invisible"); the first frame (given) is not scored; a joint is correct when its distance to the
GT divided by the reference size is <= the threshold; PCK is the mean over joint types of each
type's percentage correct. A joint type never predicted visible is left out of the mean (the
original, whose table always holds JHMDB's 15 types, would print nan).

Result format (`python -m vosjax.propagate --mode keypoints`): one `<video>.json` per video,
`{"video", "frame_size": [H, W], "frames": [{"frame": stem, "joints": [[x, y, visible], ...]}]}`
in 0-based pixels of the original frame; an invisible joint is (-1, -1, false).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vosjax.data import jhmdb


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


def write_keypoints_json(path, video: str, frame_names, frame_hw, joints: np.ndarray) -> Path:
  """Writes joints float [T, J, 2] (x, y) pixels (x < 0: invisible) as the result format."""
  joints = np.asarray(joints, np.float64)
  frames = []
  for name, points in zip(frame_names, joints):
    rows = [
      [float(x), float(y), True] if x >= 0 else [-1.0, -1.0, False] for x, y in points.tolist()
    ]
    frames.append({"frame": str(name), "joints": rows})
  record = {"video": video, "frame_size": [int(v) for v in frame_hw], "frames": frames}
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(record))
  tmp.replace(path)
  return path


def read_keypoints_json(path) -> np.ndarray:
  """float64 [T, J, 2] (x, y) of a result file, invisible joints at -1."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"missing keypoint result {path}")
  try:
    frames = json.loads(path.read_text())["frames"]
    joints = np.array(
      [[row[:2] if row[2] else [-1.0, -1.0] for row in f["joints"]] for f in frames]
    )
  except (KeyError, IndexError, TypeError, ValueError) as err:
    raise ValueError(f"{path}: not a keypoint result file ({err!r})") from err
  if joints.ndim != 3 or joints.shape[-1] != 2:
    raise ValueError(f"{path}: joints must be [frames, joints, 2], got {joints.shape}")
  return joints.astype(np.float64)


def score_jhmdb(list_path, results, thresholds=(0.1, 0.2), videos=None):
  """PCK (percent) of `results/<video>.json` against the file list's joint_positions.mat.

  Returns (PCK per threshold, number of videos). A result longer than its GT is cut to the GT's
  frames (as `eval_pck.py` loops over the GT's); a shorter one is an error.
  """
  listed = jhmdb.jhmdb_videos(list_path)
  if videos:
    listed = [v for v in listed if v.name in set(videos)]
  if not listed:
    raise ValueError(f"no video of {list_path} to score")
  preds, gts = [], []
  for video in listed:
    gt = jhmdb.read_joint_positions(video.joints_file)
    pred = read_keypoints_json(Path(results) / f"{video.name}.json")
    if pred.shape[0] < gt.shape[0] or pred.shape[1] != gt.shape[1]:
      raise ValueError(
        f"{video.name}: result {pred.shape[:2]} (frames, joints) does not cover the GT "
        f"{gt.shape[:2]}"
      )
    preds.append(pred[: gt.shape[0]])
    gts.append(gt)
  return pck(preds, gts, thresholds), len(listed)
