"""Segmentation metrics: FG-ARI, video mIoU, and the DAVIS region (J) and boundary (F) measures.

All functions take integer label maps (0 = background, object id = index + 1).

- `fg_ari` / `fg_ari_jax`: the SAVi foreground adjusted Rand index, one contingency table per video
  over all frames jointly (`savi/lib/metrics.py`).
- `video_miou`: VideoSAUR-style mIoU with one Hungarian matching per video.
- `pairwise_region_and_boundary`, `region_similarity`, `boundary_f_measure`, `davis_statistics`:
  a reimplementation of `davis2017/metrics.py` and `davis2017/utils.py::db_statistics` of the
  official DAVIS toolkit (davisvideochallenge/davis2017-evaluation). The boundary F-measure
  gives the same numbers as the toolkit's `seg2bmap` + `cv2.dilate(disk(r))`, but dilates each
  boundary only over its bounding box and works on whole label maps instead of object pairs.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import optimize


def _as_video_batch(name: str, ids: np.ndarray) -> np.ndarray:
  ids = np.asarray(ids)
  if ids.ndim == 3:
    ids = ids[None]
  if ids.ndim != 4:
    raise ValueError(f"{name} must be [B, T, H, W] or [T, H, W], got shape {ids.shape}")
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"{name} must hold integer ids, got dtype {ids.dtype}")
  if ids.size and ids.min() < 0:
    raise ValueError(f"{name} holds negative ids (min {ids.min()})")
  return ids


def _check_pair(true_ids, pred_ids, valid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  true_ids = _as_video_batch("true_ids", true_ids)
  pred_ids = _as_video_batch("pred_ids", pred_ids)
  if true_ids.shape != pred_ids.shape:
    raise ValueError(f"true_ids {true_ids.shape} and pred_ids {pred_ids.shape} differ in shape")
  valid = np.ones(true_ids.shape[0], bool) if valid is None else np.asarray(valid, bool)
  if valid.shape != (true_ids.shape[0],):
    raise ValueError(f"valid must be [B]={true_ids.shape[0]}, got shape {valid.shape}")
  return true_ids, pred_ids, valid


def _ari_from_counts(pair_counts, true_counts, pred_counts) -> float:
  """SAVi's ARI formula from the non-zero contingency cells and its marginals."""
  pair_counts, true_counts, pred_counts = (
    np.asarray(c, np.float64) for c in (pair_counts, true_counts, pred_counts)
  )
  num_points = true_counts.sum()
  rindex = np.sum(pair_counts * (pair_counts - 1))
  aindex = np.sum(true_counts * (true_counts - 1))
  bindex = np.sum(pred_counts * (pred_counts - 1))
  expected = aindex * bindex / max(num_points * (num_points - 1), 1.0)
  denominator = (aindex + bindex) / 2 - expected
  # Both labelings trivial (one cluster, or singletons): SAVi defines ARI = 1.
  return 1.0 if denominator == 0 else float((rindex - expected) / denominator)


def fg_ari(true_ids, pred_ids, valid=None, pixel_mask=None) -> np.ndarray:
  """Foreground ARI per video, over all frames jointly, GT background excluded (SAVi).

  Args:
    true_ids: int [B, T, H, W] (or [T, H, W]) ground-truth ids, 0 = background.
    pred_ids: int, same shape, predicted ids (every id, 0 included, is a cluster).
    valid: optional bool [B]; invalid (padding) videos get NaN, so average with `np.nanmean`.
    pixel_mask: optional bool, same shape as the ids: pixels to score (SAVi's padding_mask).

  Returns:
    float64 [B]. 1.0 where the ARI denominator is 0 (e.g. a video with no foreground).
  """
  true_ids, pred_ids, valid = _check_pair(true_ids, pred_ids, valid)
  if pixel_mask is not None:
    pixel_mask = np.broadcast_to(
      np.asarray(pixel_mask, bool).reshape((-1,) + true_ids.shape[1:]), true_ids.shape
    )
  scores = np.full(true_ids.shape[0], np.nan)
  for b in np.flatnonzero(valid):
    selected = true_ids[b] > 0
    if pixel_mask is not None:
      selected &= pixel_mask[b]
    true_b = true_ids[b][selected].astype(np.int64)
    pred_b = pred_ids[b][selected].astype(np.int64)
    pair_keys = true_b * (int(pred_b.max(initial=0)) + 1) + pred_b
    scores[b] = _ari_from_counts(
      np.unique(pair_keys, return_counts=True)[1],
      np.unique(true_b, return_counts=True)[1],
      np.unique(pred_b, return_counts=True)[1],
    )
  return scores


def fg_ari_jax(true_ids, pred_ids, num_true_ids: int, num_pred_ids: int, pixel_mask=None):
  """Jittable FG-ARI, literally SAVi's `adjusted_rand_index` with the background column dropped.

  Ids >= num_true_ids / num_pred_ids one-hot to zeros (ignored), as in SAVi. Computes in the
  default JAX float dtype (float32), so it agrees with `fg_ari` to about 1e-5.

  Args:
    true_ids: int [B, T, H, W]. pred_ids: int [B, T, H, W].
    num_true_ids, num_pred_ids: static one-hot sizes (SAVi uses 24 and 24).
    pixel_mask: optional bool/float [B, T, H, W].

  Returns:
    float [B].
  """
  import jax  # pylint: disable=g-import-not-at-top  (keeps the numpy-only CLI free of JAX)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  true_onehot = jax.nn.one_hot(true_ids, num_true_ids)[..., 1:]
  if pixel_mask is not None:
    true_onehot = true_onehot * jnp.asarray(pixel_mask, true_onehot.dtype)[..., None]
  pred_onehot = jax.nn.one_hot(pred_ids, num_pred_ids)
  counts = jnp.einsum("bthwc,bthwk->bck", true_onehot, pred_onehot)
  true_sums = counts.sum(-1)
  pred_sums = counts.sum(-2)
  num_points = true_sums.sum(-1)
  rindex = jnp.sum(counts * (counts - 1), axis=(1, 2))
  aindex = jnp.sum(true_sums * (true_sums - 1), axis=1)
  bindex = jnp.sum(pred_sums * (pred_sums - 1), axis=1)
  expected = aindex * bindex / jnp.clip(num_points * (num_points - 1), 1)
  denominator = (aindex + bindex) / 2 - expected
  ari = (rindex - expected) / jnp.where(denominator == 0, 1, denominator)
  return jnp.where(denominator == 0, 1.0, ari)


def video_miou(true_ids, pred_ids, valid=None) -> np.ndarray:
  """Video mIoU with one Hungarian matching over all frames (VideoSAUR `matching="hungarian"`).

  GT background (id 0) is not an object; every predicted id (0 included) is a candidate mask.
  IoU is over all pixels of the video; unmatched GT objects score 0; mean over GT objects present.

  Args:
    true_ids, pred_ids: int [B, T, H, W] (or [T, H, W]).
    valid: optional bool [B]; invalid videos get NaN.

  Returns:
    float64 [B]; NaN for videos without any GT object (VideoSAUR skips them).
  """
  true_ids, pred_ids, valid = _check_pair(true_ids, pred_ids, valid)
  scores = np.full(true_ids.shape[0], np.nan)
  for b in np.flatnonzero(valid):
    true_labels, true_index = np.unique(true_ids[b], return_inverse=True)
    pred_labels, pred_index = np.unique(pred_ids[b], return_inverse=True)
    counts = np.bincount(
      true_index.ravel() * len(pred_labels) + pred_index.ravel(),
      minlength=len(true_labels) * len(pred_labels),
    )
    counts = counts.reshape(len(true_labels), len(pred_labels)).astype(np.float64)
    foreground = true_labels > 0
    if not foreground.any():
      continue
    inter = counts[foreground]
    union = counts.sum(1)[foreground, None] + counts.sum(0)[None, :] - inter
    iou = inter / union
    rows, cols = optimize.linear_sum_assignment(iou, maximize=True)
    scores[b] = iou[rows, cols].sum() / foreground.sum()
  return scores


# ---------------------------------------------------------------- DAVIS J and F


def boundary_radius(height: int, width: int, bound_th: float = 0.008) -> int:
  """Dilation radius in pixels: `bound_th` x image diagonal, rounded up (official)."""
  if bound_th >= 1:
    if bound_th != int(bound_th):
      raise ValueError(f"bound_th >= 1 is a pixel radius and must be an integer, got {bound_th}")
    return int(bound_th)
  return int(np.ceil(bound_th * np.linalg.norm((height, width))))


def boundary_map(mask: np.ndarray) -> np.ndarray:
  """`seg2bmap` of the official toolkit: 1-pixel boundaries of a binary mask [H, W] -> bool."""
  mask = np.asarray(mask).astype(bool)
  if mask.ndim != 2:
    raise ValueError(f"boundary_map takes one [H, W] mask, got shape {mask.shape}")
  _, rows, cols = _label_boundaries(mask.astype(np.uint8))
  out = np.zeros(mask.shape, bool)
  out[rows, cols] = True
  return out


def _label_boundaries(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Boundary pixels of every non-zero label of a label map, as seg2bmap of each binary mask.

  seg2bmap marks p when mask[p] differs from mask at p's east, south or south-east neighbour,
  with only in-image neighbours (the last row compares east only, the last column south only).
  For a label map: p is on label k's boundary iff k is in the 2x2 block at p and the block is
  not uniform.

  Args:
    ids: int [H, W].

  Returns:
    (label, row, col) int arrays, sorted by label.
  """
  height, width = ids.shape
  changes = np.zeros(ids.shape, bool)
  changes[:, :-1] = ids[:, :-1] != ids[:, 1:]
  changes[:-1] |= ids[:-1] != ids[1:]
  # South-east; on the last row / column it would repeat the east / south test.
  changes[:-1, :-1] |= ids[:-1, :-1] != ids[1:, 1:]
  index = np.flatnonzero(changes)  # Much faster than np.nonzero on 2-D arrays.
  rows, cols = np.divmod(index, width)
  flat = ids.ravel()
  east = index + (cols < width - 1)
  down = width * (rows < height - 1)
  block = np.sort(np.stack([flat[index], flat[east], flat[index + down], flat[east + down]], 1), 1)
  first_of_value = np.ones(block.shape, bool)
  first_of_value[:, 1:] = block[:, 1:] != block[:, :-1]
  pixel, slot = np.nonzero(first_of_value & (block > 0))
  labels = block[pixel, slot]
  order = np.argsort(labels, kind="stable")
  return labels[order], rows[pixel][order], cols[pixel][order]


def _group_boundaries(ids: np.ndarray, num_labels: int) -> list[np.ndarray]:
  """Per label 1..num_labels, boundary pixel coordinates [N, 2] of a label map [H, W]."""
  labels, rows, cols = _label_boundaries(ids)
  starts = np.searchsorted(labels, np.arange(1, num_labels + 2))
  points = np.stack([rows, cols], 1)
  return [points[starts[k] : starts[k + 1]] for k in range(num_labels)]


def _disk(radius: int) -> np.ndarray:
  """skimage.morphology.disk(radius): x^2 + y^2 <= radius^2, uint8 [2r+1, 2r+1]."""
  grid = np.arange(-radius, radius + 1)
  return (grid[:, None] ** 2 + grid[None, :] ** 2 <= radius**2).astype(np.uint8)


def _near_counts(targets: list[np.ndarray], queries: list[np.ndarray], radius: int) -> np.ndarray:
  """counts[q, t] = number of points of queries[q] within `radius` of a point of targets[t].

  Same as the toolkit's cv2.dilate of the full boundary map with disk(radius), but each target
  is dilated on a canvas covering only its bounding box plus the radius (dilation commutes with
  translation, and the toolkit's dilation does not wrap or pad the image border).
  """
  counts = np.zeros((len(queries), len(targets)), np.int64)
  query_labels = np.concatenate([np.full(len(q), i) for i, q in enumerate(queries)])
  if not len(query_labels):
    return counts
  query_points = np.concatenate(queries)
  disk = _disk(radius)
  for t, target in enumerate(targets):
    if not len(target):
      continue
    origin = target.min(0) - radius
    size = target.max(0) + radius + 1 - origin
    canvas = np.zeros(size, np.uint8)
    canvas[target[:, 0] - origin[0], target[:, 1] - origin[1]] = 1
    canvas = cv2.dilate(canvas, disk)
    local = query_points - origin
    inside = np.flatnonzero((local >= 0).all(1) & (local < size).all(1))
    hit = inside[canvas[local[inside, 0], local[inside, 1]] > 0]
    counts[:, t] = np.bincount(query_labels[hit], minlength=len(queries))
  return counts


def _f_measure(pred_points, true_points, radius) -> np.ndarray:
  """Boundary F of every (prediction, GT) pair of one frame, `f_measure` of the toolkit."""
  pred_matched = _near_counts(true_points, pred_points, radius)  # [P, G]
  true_matched = _near_counts(pred_points, true_points, radius).T  # [P, G]
  num_pred = np.array([len(p) for p in pred_points], np.float64)[:, None]
  num_true = np.array([len(p) for p in true_points], np.float64)[None, :]
  with np.errstate(divide="ignore", invalid="ignore"):
    precision = np.where(num_pred == 0, 1.0, pred_matched / num_pred)
    recall = np.where(num_true == 0, 1.0, true_matched / num_true)
    # Toolkit: no prediction boundary -> P=1, R=0; no GT boundary -> P=0, R=1.
    precision = np.where((num_pred > 0) & (num_true == 0), 0.0, precision)
    recall = np.where((num_pred == 0) & (num_true > 0), 0.0, recall)
    return np.where(precision + recall == 0, 0.0, 2 * precision * recall / (precision + recall))


def _small_ids(ids: np.ndarray, num_labels: int, void) -> np.ndarray:
  """Ids outside 1..num_labels and void pixels -> 0, as uint8 when possible (speed)."""
  dtype = np.uint8 if num_labels < 256 else np.int32
  if ids.dtype == bool:
    ids = ids.view(np.uint8)
  if void is None and ids.dtype == dtype and ids.max(initial=0) <= num_labels:
    return ids
  inside = (ids >= 0) & (ids <= num_labels)
  if void is not None:
    inside &= ~void
  return np.where(inside, ids, 0).astype(dtype)


def _contingency(true_ids, pred_ids, num_true: int, num_pred: int, void) -> np.ndarray:
  """Pixel counts [num_true + 1, num_pred + 1] of (true id, pred id) pairs off the void."""
  cells = (num_true + 1) * (num_pred + 1)
  valid = None if void is None else ~void
  if num_true == num_pred == 1:
    true_mask, pred_mask = true_ids > 0, pred_ids > 0
    if valid is not None:
      true_mask, pred_mask = true_mask & valid, pred_mask & valid
    both = np.count_nonzero(true_mask & pred_mask)
    true_only, pred_only = np.count_nonzero(true_mask) - both, np.count_nonzero(pred_mask) - both
    num_valid = true_ids.size if valid is None else np.count_nonzero(valid)
    return np.array([[num_valid - both - true_only - pred_only, pred_only], [true_only, both]])
  if cells <= 256:
    # cv2.calcHist on a uint8 key image is much faster than np.bincount (docs/performance.md);
    # its float32 counts are exact below 2**24 pixels per frame.
    keys = true_ids.astype(np.uint8) * np.uint8(num_pred + 1) + pred_ids.astype(np.uint8)
    mask = None if valid is None else valid.astype(np.uint8)
    counts = cv2.calcHist([keys], [0], mask, [256], [0, 256]).ravel()[:cells].astype(np.int64)
  else:
    keys = true_ids.astype(np.int64) * (num_pred + 1) + pred_ids
    counts = np.bincount((keys if valid is None else keys[valid]).ravel(), minlength=cells)
  return counts.reshape(num_true + 1, num_pred + 1)


def pairwise_region_and_boundary(
  true_ids, pred_ids, num_true: int, num_pred: int, void=None, bound_th: float = 0.008
) -> tuple[np.ndarray, np.ndarray]:
  """Official J (`db_eval_iou`) and F (`db_eval_boundary`) for every (prediction, GT) pair.

  Args:
    true_ids: int [T, H, W]; objects 1..num_true (other ids count as background, like the
      toolkit's object split).
    pred_ids: int [T, H, W]; proposals 1..num_pred.
    num_true, num_pred: object counts (a proposal absent from the frames is an empty mask).
    void: optional bool [T, H, W]; void pixels are ignored by J and zeroed before F.
    bound_th: boundary tolerance, fraction of the image diagonal (or pixels if >= 1).

  Returns:
    (j, f): float64 [num_pred, num_true, T], laid out like the toolkit's `j_metrics_res`.
  """
  true_ids, pred_ids = np.asarray(true_ids), np.asarray(pred_ids)
  if true_ids.ndim != 3 or true_ids.shape != pred_ids.shape:
    raise ValueError(
      f"true_ids {true_ids.shape} and pred_ids {pred_ids.shape} must both be [T, H, W]"
    )
  if void is not None:
    void = np.asarray(void, bool)
    if void.shape != true_ids.shape:
      raise ValueError(f"void {void.shape} must match the ids {true_ids.shape}")
  num_frames, height, width = true_ids.shape
  radius = boundary_radius(height, width, bound_th)
  j = np.zeros((num_pred, num_true, num_frames))
  f = np.zeros((num_pred, num_true, num_frames))
  for t in range(num_frames):
    void_t = None if void is None else void[t]
    true_t = _small_ids(true_ids[t], num_true, void_t)
    pred_t = _small_ids(pred_ids[t], num_pred, void_t)
    table = _contingency(true_t, pred_t, num_true, num_pred, void_t)
    inter = table[1:, 1:]
    union = table[1:].sum(1)[:, None] + table[:, 1:].sum(0)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
      j[:, :, t] = np.where(union == 0, 1.0, inter / union).T
    # F: boundary pixels matched within the disk radius.
    f[:, :, t] = _f_measure(
      _group_boundaries(pred_t, num_pred), _group_boundaries(true_t, num_true), radius
    )
  return j, f


def region_similarity(true_masks, pred_masks, void=None) -> np.ndarray:
  """J per frame of binary masks [T, H, W] (or [H, W]) -> float64 [T] (`db_eval_iou`)."""
  true_masks, pred_masks = np.asarray(true_masks, bool), np.asarray(pred_masks, bool)
  squeeze = true_masks.ndim == 2
  j, _ = _binary_pair(true_masks, pred_masks, void, 0.008, squeeze)
  return j[0] if squeeze else j


def boundary_f_measure(true_masks, pred_masks, void=None, bound_th: float = 0.008) -> np.ndarray:
  """F per frame of binary masks [T, H, W] (or [H, W]) -> float64 [T] (`db_eval_boundary`)."""
  true_masks, pred_masks = np.asarray(true_masks, bool), np.asarray(pred_masks, bool)
  squeeze = true_masks.ndim == 2
  _, f = _binary_pair(true_masks, pred_masks, void, bound_th, squeeze)
  return f[0] if squeeze else f


def _binary_pair(true_masks, pred_masks, void, bound_th, squeeze):
  if squeeze:
    true_masks, pred_masks = true_masks[None], pred_masks[None]
    void = None if void is None else np.asarray(void)[None]
  j, f = pairwise_region_and_boundary(
    true_masks.astype(np.int64), pred_masks.astype(np.int64), 1, 1, void, bound_th
  )
  return j[0, 0], f[0, 0]


def davis_statistics(per_frame_values) -> tuple[float, float, float]:
  """Mean, Recall (fraction > 0.5) and Decay (first minus last of 4 quartile bins) of one object.

  As `db_statistics` of the toolkit, except that the bin indices are not cast to uint8 (the
  toolkit's cast wraps around for sequences longer than 255 frames; shorter ones are identical).
  Returns NaNs for an empty sequence.
  """
  values = np.asarray(per_frame_values, np.float64)
  if values.size == 0:
    return math.nan, math.nan, math.nan
  mean = float(np.nanmean(values)) if not np.isnan(values).all() else math.nan
  recall = float(np.mean(values > 0.5))
  edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
  bins = [values[edges[i] : edges[i + 1] + 1] for i in range(4)]
  with np.errstate(invalid="ignore"):
    decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
  return mean, recall, decay
