"""J and F of proposal masks that may overlap (SMTC's candidates), each proposal on its own.

The official `db_eval_iou` / `db_eval_boundary` of every (proposal, GT object) pair, computed frame
by frame from a stack of binary masks instead of an id map (`metrics.pairwise_region_and_boundary`),
with the id-map path's boundary helpers. The matching (per frame or per sequence) is
`davis_protocol.evaluate_sequence_masks`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vosjax.data.davis import VOID_LABEL
from vosjax.evaluation import metrics


def _mask_scores(
  true_t: np.ndarray, num_objects: int, masks: np.ndarray, void_t, radius: int
) -> tuple[np.ndarray, np.ndarray]:
  """Official J and F of every (mask, GT object) pair of one frame -> float64 [P, G] each.

  `true_t` int [H, W] with void already 0; masks bool [P, H, W] (may overlap). As `db_eval_iou`
  and `db_eval_boundary`: void pixels are left out of J and zeroed before the boundaries.
  """
  if void_t is not None:
    masks = masks & ~void_t
  objects = true_t[None] == np.arange(1, num_objects + 1)[:, None, None]
  flat_masks = masks.reshape(len(masks), -1).astype(np.float32)
  # float32 sums of 0/1 are exact below 2**24 pixels per frame.
  inter = (flat_masks @ objects.reshape(num_objects, -1).astype(np.float32).T).astype(np.int64)
  union = flat_masks.sum(1).astype(np.int64)[:, None] + objects.sum((1, 2))[None, :] - inter
  with np.errstate(divide="ignore", invalid="ignore"):
    j = np.where(union == 0, 1.0, inter / union)
  # F with the boundary helpers of the id-map path, one binary map per (overlapping) mask.
  # pylint: disable=protected-access
  no_points = np.zeros((0, 2), np.int64)
  pred_points = [
    metrics._group_boundaries(m.view(np.uint8), 1)[0] if m.any() else no_points for m in masks
  ]
  true_points = metrics._group_boundaries(
    metrics._small_ids(true_t, num_objects, None), num_objects
  )
  return j, metrics._f_measure(pred_points, true_points, radius)
  # pylint: enable=protected-access


@dataclasses.dataclass
class MaskStackScores:
  """J, f: float64 [P + 1, G, T] of every proposal (row P: an empty mask) and GT object;
  area: int [P] pixels of each proposal summed over the frames."""

  j: np.ndarray
  f: np.ndarray
  area: np.ndarray


def score_mask_stack(
  true_ids,
  proposals,
  void=None,
  num_objects: int | None = None,
  name: str = "sequence",
  bound_th: float = 0.008,
) -> MaskStackScores:
  """J and F of proposals that may overlap, each on its own, for every GT object and frame.

  Args (as `davis_protocol.evaluate_sequence_masks`, which matches these scores):
    true_ids: int [T, H, W] GT ids (255 = void unless `void` is given).
    proposals: bool [P, T, H, W], or a sequence of T bool [P, H, W] arrays read once each in order.
    void: optional bool [T, H, W]; num_objects: GT objects 1..num_objects (default: the first
      frame's largest id); name: for messages; bound_th: boundary tolerance.
  """
  true_ids = np.asarray(true_ids)
  if true_ids.ndim != 3:
    raise ValueError(f"{name}: GT must be [T, H, W], got {true_ids.shape}")
  num_frames = len(true_ids)
  if isinstance(proposals, np.ndarray):
    if proposals.ndim != 4:
      raise ValueError(f"{name}: proposals must be [P, T, H, W], got {proposals.shape}")
    proposals = [proposals[:, t] for t in range(proposals.shape[1])]
  if len(proposals) != num_frames:
    raise ValueError(f"{name}: {len(proposals)} proposal frames for {num_frames} GT frames")
  void = true_ids == VOID_LABEL if void is None else np.asarray(void, bool)
  true_ids = np.where(void, 0, true_ids)
  num_objects = int(true_ids[0].max()) if num_objects is None else num_objects
  radius = metrics.boundary_radius(*true_ids.shape[1:], bound_th)
  j = f = area = None
  for t, masks in enumerate(proposals):
    masks = np.asarray(masks, bool)
    if masks.ndim != 3 or masks.shape[1:] != true_ids.shape[1:]:
      raise ValueError(
        f"{name}: proposals of frame {t} are {masks.shape}, expected [P, "
        f"{true_ids.shape[1]}, {true_ids.shape[2]}]"
      )
    if j is None:
      shape = (len(masks) + 1, num_objects, num_frames)
      j, f, area = np.zeros(shape), np.zeros(shape), np.zeros(len(masks), np.int64)
    stack = np.concatenate([masks, np.zeros((1,) + masks.shape[1:], bool)])  # + the padding
    j[:, :, t], f[:, :, t] = _mask_scores(true_ids[t], num_objects, stack, void[t], radius)
    area += masks.sum((1, 2))
  return MaskStackScores(j, f, area)
