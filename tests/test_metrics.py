"""Metrics against straightforward transcriptions: FG-ARI, video mIoU, DAVIS J / F / statistics."""

import itertools

import numpy as np
import pytest
from scipy import special

from references.davis_metrics import (
  official_f_measure,
  official_iou,
  official_seg2bmap,
  official_statistics,
  random_label_video,
)

from vosjax.evaluation import metrics


def textbook_ari(true_labels: np.ndarray, pred_labels: np.ndarray) -> float:
  """Hubert-Arabie ARI with binomial coefficients, over the given points."""
  if true_labels.size == 0:
    return 1.0
  _, t = np.unique(true_labels, return_inverse=True)
  _, p = np.unique(pred_labels, return_inverse=True)
  table = np.zeros((t.max() + 1, p.max() + 1))
  np.add.at(table, (t, p), 1)
  index = special.comb(table, 2).sum()
  a, b = special.comb(table.sum(1), 2).sum(), special.comb(table.sum(0), 2).sum()
  expected = a * b / max(special.comb(t.size, 2), 1)
  maximum = (a + b) / 2
  return 1.0 if maximum == expected else (index - expected) / (maximum - expected)


def random_videos(rng, batch=3, shape=(4, 9, 11), num_true=4, num_pred=5):
  true_ids = rng.integers(0, num_true, (batch,) + shape)
  # Predictions correlated with the truth so that the scores spread over (0, 1).
  pred_ids = np.where(
    rng.random(true_ids.shape) < 0.6, true_ids, rng.integers(0, num_pred, true_ids.shape)
  )
  return true_ids.astype(np.int32), pred_ids.astype(np.int32)


def test_fg_ari_matches_textbook_formula_on_foreground():
  rng = np.random.default_rng(0)
  true_ids, pred_ids = random_videos(rng)
  scores = metrics.fg_ari(true_ids, pred_ids)
  for b in range(true_ids.shape[0]):
    fg = true_ids[b] > 0
    assert scores[b] == pytest.approx(textbook_ari(true_ids[b][fg], pred_ids[b][fg]), abs=1e-12)
  assert 0.05 < scores.min() and scores.max() < 0.95


def test_fg_ari_invariances_and_special_cases():
  rng = np.random.default_rng(1)
  true_ids, pred_ids = random_videos(rng)
  scores = metrics.fg_ari(true_ids, pred_ids)
  relabel_pred = rng.permutation(50)
  relabel_true = np.concatenate([[0], 1 + rng.permutation(49)])  # Background stays 0.
  np.testing.assert_allclose(
    metrics.fg_ari(relabel_true[true_ids], relabel_pred[pred_ids]), scores, atol=1e-12
  )
  np.testing.assert_allclose(metrics.fg_ari(true_ids, relabel_pred[true_ids]), 1.0)
  # Background pixels do not count: corrupting the prediction there changes nothing.
  noisy = np.where(true_ids == 0, rng.integers(0, 9, true_ids.shape), pred_ids)
  np.testing.assert_allclose(metrics.fg_ari(true_ids, noisy), scores, atol=1e-12)
  # No foreground: denominator 0 -> 1.0 (SAVi); invalid video -> NaN.
  assert metrics.fg_ari(np.zeros((1, 2, 3, 3), int), pred_ids[:1, :2, :3, :3])[0] == 1.0
  out = metrics.fg_ari(true_ids, pred_ids, valid=np.array([True, False, True]))
  assert np.isnan(out[1]) and out[0] == scores[0]
  # Pixel mask = scoring only the selected pixels.
  mask = rng.random(true_ids.shape) < 0.5
  expected = textbook_ari(
    true_ids[0][mask[0] & (true_ids[0] > 0)], pred_ids[0][mask[0] & (true_ids[0] > 0)]
  )
  assert metrics.fg_ari(true_ids, pred_ids, pixel_mask=mask)[0] == pytest.approx(expected)
  # [T, H, W] input is one video.
  assert metrics.fg_ari(true_ids[0], pred_ids[0])[0] == pytest.approx(scores[0])


def test_fg_ari_jax_agrees_with_numpy_and_jits():
  import jax  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(2)
  true_ids, pred_ids = random_videos(rng, batch=4, shape=(3, 16, 16), num_true=6, num_pred=7)
  mask = rng.random(true_ids.shape) < 0.8
  jitted = jax.jit(metrics.fg_ari_jax, static_argnums=(2, 3))
  np.testing.assert_allclose(
    np.asarray(jitted(true_ids, pred_ids, 24, 24)), metrics.fg_ari(true_ids, pred_ids), atol=1e-5
  )
  np.testing.assert_allclose(
    np.asarray(metrics.fg_ari_jax(true_ids, pred_ids, 24, 24, mask)),
    metrics.fg_ari(true_ids, pred_ids, pixel_mask=mask),
    atol=1e-5,
  )


def brute_force_miou(true_ids: np.ndarray, pred_ids: np.ndarray) -> float:
  gts = [g for g in np.unique(true_ids) if g > 0]
  preds = list(np.unique(pred_ids))
  iou = np.array(
    [
      [
        np.sum((true_ids == g) & (pred_ids == p)) / np.sum((true_ids == g) | (pred_ids == p))
        for p in preds
      ]
      for g in gts
    ]
  )
  best = 0.0
  # Every injective assignment of GT objects to predictions (or to nothing when fewer preds).
  slots = preds + [None] * len(gts)
  for choice in itertools.permutations(range(len(slots)), len(gts)):
    total = sum(iou[g, c] for g, c in enumerate(choice) if c < len(preds))
    best = max(best, total)
  return best / len(gts)


def test_video_miou_matches_brute_force_matching():
  rng = np.random.default_rng(3)
  for num_pred in (2, 4):  # Fewer and more predictions than GT objects.
    true_ids, pred_ids = random_videos(rng, batch=3, shape=(3, 6, 7), num_true=4, num_pred=num_pred)
    pred_ids = pred_ids % num_pred
    scores = metrics.video_miou(true_ids, pred_ids)
    for b in range(3):
      assert scores[b] == pytest.approx(brute_force_miou(true_ids[b], pred_ids[b]), abs=1e-12)
  relabel = rng.permutation(10)
  np.testing.assert_allclose(metrics.video_miou(true_ids, relabel[true_ids]), 1.0)
  np.testing.assert_allclose(metrics.video_miou(true_ids, relabel[pred_ids]), scores)
  assert np.isnan(metrics.video_miou(np.zeros((1, 2, 3, 3), int), pred_ids[:1, :2, :3, :3])[0])


# ---------------------------------------------------------------- DAVIS J and F


def test_boundary_map_matches_seg2bmap():
  rng = np.random.default_rng(4)
  masks = random_label_video(rng, 6, 23, 31, 1, smooth=1.5) > 0
  masks[0] = True  # Full frame: no boundary at all.
  masks[1] = False
  masks[2, -1, :] = True  # Boundary rows/columns rules.
  masks[3, :, -1] = True
  for mask in masks:
    np.testing.assert_array_equal(metrics.boundary_map(mask), official_seg2bmap(mask))


@pytest.mark.parametrize("bound_th", [0.008, 0.05, 1, 3, 6])
def test_binary_j_and_f_match_official_transcription(bound_th):
  rng = np.random.default_rng(5)
  true = random_label_video(rng, 5, 60, 90, 1) > 0
  pred = random_label_video(rng, 5, 60, 90, 1) > 0
  pred[0] = true[0]  # Perfect frame.
  pred[1] = False  # Empty prediction.
  true[2] = False  # Empty GT.
  true[3] = pred[3] = False  # Both empty.
  void = rng.random(true.shape) < 0.02
  for v in (None, void):
    f = metrics.boundary_f_measure(true, pred, v, bound_th)
    j = metrics.region_similarity(true, pred, v)
    for t in range(true.shape[0]):
      vt = None if v is None else v[t]
      assert f[t] == official_f_measure(pred[t], true[t], vt, bound_th)  # Bit-identical.
      assert j[t] == official_iou(true[t], pred[t], vt)
  assert metrics.boundary_f_measure(true[0], pred[0]) == 1.0  # [H, W] input.


def test_pairwise_j_and_f_match_per_object_transcription():
  rng = np.random.default_rng(6)
  true_ids = random_label_video(rng, 4, 48, 64, 3)
  pred_ids = random_label_video(rng, 4, 48, 64, 4)
  true_ids[1][true_ids[1] == 2] = 0  # An object absent from a frame.
  true_ids[2, :5, :5] = 9  # Ids above num_true are background, as in the toolkit.
  void = rng.random(true_ids.shape) < 0.01
  j, f = metrics.pairwise_region_and_boundary(true_ids, pred_ids, 3, 5, void, bound_th=4)
  assert j.shape == f.shape == (5, 3, 4)
  for r, g, t in itertools.product(range(5), range(3), range(4)):
    gt, seg = true_ids[t] == g + 1, pred_ids[t] == r + 1
    assert j[r, g, t] == official_iou(gt, seg, void[t])
    assert f[r, g, t] == official_f_measure(seg, gt, void[t], bound_th=4)


def test_davis_statistics_match_db_statistics():
  rng = np.random.default_rng(7)
  for length in (1, 2, 5, 17, 80, 104):
    values = rng.random(length)
    np.testing.assert_allclose(
      metrics.davis_statistics(values), official_statistics(values), atol=0
    )
  assert np.isnan(metrics.davis_statistics(np.zeros(0))).all()


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.fg_ari(np.zeros((1, 2, 3, 3), int), np.zeros((1, 2, 3, 4), int))
  with pytest.raises(ValueError, match="integer"):
    metrics.video_miou(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 3)))
  with pytest.raises(ValueError, match="valid"):
    metrics.fg_ari(np.zeros((2, 1, 3, 3), int), np.zeros((2, 1, 3, 3), int), valid=[True])
  with pytest.raises(ValueError, match="pixel radius"):
    metrics.boundary_f_measure(np.zeros((4, 4), bool), np.zeros((4, 4), bool), bound_th=2.5)
