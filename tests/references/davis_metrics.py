"""NumPy transcriptions of the official DAVIS evaluation (davis2017-evaluation's `db_eval_iou`,
`f_measure` with `_seg2bmap`, `db_statistics`) and the random label videos they are tested on."""

import cv2
import numpy as np


def official_seg2bmap(seg: np.ndarray) -> np.ndarray:
  """Transcription of `_seg2bmap` of davis2017-evaluation (same size output)."""
  seg = seg.astype(bool)
  e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
  e[:, :-1] = seg[:, 1:]
  s[:-1, :] = seg[1:, :]
  se[:-1, :-1] = seg[1:, 1:]
  b = (seg ^ e) | (seg ^ s) | (seg ^ se)
  b[-1, :] = seg[-1, :] ^ e[-1, :]
  b[:, -1] = seg[:, -1] ^ s[:, -1]
  b[-1, -1] = 0
  return b


def skimage_disk(radius: int) -> np.ndarray:
  grid = np.arange(-radius, radius + 1)
  return (grid[:, None] ** 2 + grid[None, :] ** 2 <= radius**2).astype(np.uint8)


def official_f_measure(fg: np.ndarray, gt: np.ndarray, void=None, bound_th=0.008) -> float:
  """Transcription of `f_measure` of davis2017-evaluation (cv2.dilate with a disk)."""
  void = np.zeros(fg.shape, bool) if void is None else void
  bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(fg.shape))
  fg_boundary = official_seg2bmap(fg * ~void)
  gt_boundary = official_seg2bmap(gt * ~void)
  disk = skimage_disk(int(bound_pix))
  fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), disk)
  gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), disk)
  n_fg, n_gt = np.sum(fg_boundary), np.sum(gt_boundary)
  if n_fg == 0 and n_gt > 0:
    precision, recall = 1, 0
  elif n_fg > 0 and n_gt == 0:
    precision, recall = 0, 1
  elif n_fg == 0 and n_gt == 0:
    precision, recall = 1, 1
  else:
    precision = np.sum(fg_boundary * gt_dil) / float(n_fg)
    recall = np.sum(gt_boundary * fg_dil) / float(n_gt)
  return 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def official_iou(gt: np.ndarray, seg: np.ndarray, void=None) -> float:
  void = np.zeros(gt.shape, bool) if void is None else void
  inter = np.sum(gt & seg & ~void)
  union = np.sum((gt | seg) & ~void)
  return 1.0 if np.isclose(union, 0) else inter / union


def official_statistics(values: np.ndarray):
  """Transcription of `db_statistics` (uint8 bin indices; fine below 256 frames)."""
  ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.uint8)
  bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
  return np.nanmean(values), np.nanmean(values > 0.5), np.nanmean(bins[0]) - np.nanmean(bins[3])


def random_label_video(rng, num_frames, height, width, num_labels, smooth=3.0):
  """Blobby label maps (smoothed noise, argmax), touching the image borders."""
  noise = rng.normal(size=(num_frames, height, width, num_labels + 1)).astype(np.float32)
  for t in range(num_frames):
    for k in range(num_labels + 1):
      noise[t, :, :, k] = cv2.GaussianBlur(noise[t, :, :, k], (0, 0), smooth)
  noise[..., 0] += 0.3  # More background.
  return noise.argmax(-1).astype(np.int32)
