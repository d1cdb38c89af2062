"""Part-segmentation mIoU as the CRW (videowalk) VIP evaluation computes it.

`code/eval/eval_vip.py`: one confusion histogram over every scored frame of every video (GT ids
outside 0..num_classes-1 ignored; predictions resized to the GT size with PIL NEAREST first),
IoU per class = diagonal / (GT + predicted - diagonal), mIoU = the nan-mean over classes (a class
absent from both GT and predictions does not count). VIP has 20 classes (background + 19 parts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vosjax.data import vip
from vosjax.data.davis import read_label_png

VIP_CLASSES = 20


def confusion(true_ids: np.ndarray, pred_ids: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 [n, n] histogram of (GT, prediction) pairs; GT outside 0..n-1 ignored."""
  true_ids, pred_ids = np.asarray(true_ids), np.asarray(pred_ids)
  if pred_ids.shape != true_ids.shape:
    pred_ids = np.asarray(
      Image.fromarray(pred_ids.astype(np.uint8)).resize(true_ids.shape[::-1], Image.NEAREST)
    )
  keep = (true_ids >= 0) & (true_ids < num_classes)
  pairs = num_classes * true_ids[keep].astype(np.int64) + pred_ids[keep].astype(np.int64)
  return np.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_iou(frames, num_classes: int = VIP_CLASSES) -> tuple[float, np.ndarray]:
  """(mIoU, per-class IoU [n]) over (true_ids [H, W], pred_ids [h, w]) frame pairs."""
  hist = np.zeros((num_classes, num_classes))
  for true_ids, pred_ids in frames:
    hist += confusion(true_ids, pred_ids, num_classes)
  correct = np.diag(hist)
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = correct / (hist.sum(1) + hist.sum(0) - correct)
  return float(np.nanmean(iou)), iou


def score_vip(root, results, videos=None, num_classes: int = VIP_CLASSES):
  """(mIoU, per-class IoU, frames scored) of `results/<video>/<frame>.png` against
  `root/Annotations/Category_ids/<video>/<frame>.png`: every result PNG of the videos (default:
  each folder of `results`), as `eval_vip.py` scores every file of its prediction folder."""
  results = Path(results)
  names = videos or sorted(p.name for p in results.iterdir() if p.is_dir() and p.name != "overlays")
  pairs = []
  for name in names:
    predicted = sorted((results / name).glob("*.png"))
    if not predicted:
      raise FileNotFoundError(f"no result PNGs in {results / name}")
    for path in predicted:
      truth = vip.read_part_ids(Path(root) / vip.CATEGORY_IDS / name / path.name)
      pairs.append((truth, read_label_png(path)))
  if not pairs:
    raise ValueError(f"{results}: no video folder to score")
  miou, iou = mean_iou(pairs, num_classes)
  return miou, iou, len(pairs)
