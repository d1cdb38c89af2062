"""VIP-style part mIoU against our transcription of videowalk's eval_vip.py."""

from __future__ import annotations

import numpy as np

from vosjax.evaluation import parts


def official_miou(pairs, n_cl=20):
  """Our transcription of eval_vip.py's fast_hist / show_result (mean IU)."""
  hist = np.zeros((n_cl, n_cl))
  for label_array, image_array in pairs:
    k = (label_array >= 0) & (label_array < n_cl)
    hist += np.bincount(
      n_cl * label_array[k].astype(int) + image_array[k], minlength=n_cl**2
    ).reshape(n_cl, n_cl)
  num_cor_pix = np.diag(hist)
  with np.errstate(divide="ignore", invalid="ignore"):
    iu = num_cor_pix / (hist.sum(1) + hist.sum(0) - num_cor_pix)
  return np.nanmean(iu)


def test_miou_equals_the_transcription_and_ignores_absent_classes():
  rng = np.random.default_rng(0)
  pairs = []
  for _ in range(3):
    gt = rng.integers(0, 8, (30, 40))
    gt[0, :5] = 255  # outside the classes: ignored
    pred = np.where(rng.random((30, 40)) < 0.7, np.clip(gt, 0, 7), rng.integers(0, 8, (30, 40)))
    pairs.append((gt, pred))
  ours, iou = parts.mean_iou(pairs)
  assert abs(ours - official_miou(pairs)) < 1e-12
  assert np.isnan(iou[8:]).all() and 0 < ours < 1
  perfect, _ = parts.mean_iou([(np.clip(g, 0, 7), np.clip(g, 0, 7)) for g, _ in pairs])
  assert perfect == 1.0


def test_predictions_are_resized_to_the_gt_with_nearest():
  gt = np.repeat(np.repeat(np.arange(4).reshape(2, 2), 4, 0), 4, 1)  # 8x8 quadrants
  pred = np.arange(4).reshape(2, 2).astype(np.uint8)  # 2x2
  assert parts.mean_iou([(gt, pred)], 4)[0] == 1.0
