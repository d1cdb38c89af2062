"""Overlapping proposals, each scored on its own (`davis_protocol.evaluate_sequence_masks`, the SMTC
evaluator), against a direct NumPy computation: the transcriptions of `db_eval_iou` and `f_measure`
of references/davis_metrics.py, the official per-frame / per-sequence Hungarian assignments
(scipy), the official proposal layout of the SMTC evaluator, and the id-map entry on non-overlapping
masks."""

import numpy as np
import pytest
from scipy import optimize

from references.davis_metrics import official_f_measure, official_iou, random_label_video
from vosjax.evaluation import davis_protocol
from vosjax.evaluation import proposal_scores

T, H, W, NUM_OBJECTS = 4, 30, 44, 3


def _sequence(seed: int, num_proposals: int):
  """GT ids with void and an object absent from a frame, and overlapping random proposals."""
  rng = np.random.default_rng(seed)
  true_ids = random_label_video(rng, T, H, W, NUM_OBJECTS)
  true_ids[2][true_ids[2] == 2] = 0  # object 2 absent from frame 2
  true_ids[rng.random(true_ids.shape) < 0.02] = 255  # void
  proposals = np.stack(
    [random_label_video(rng, T, H, W, 1, smooth=2.0 + k % 3) > 0 for k in range(num_proposals)]
  )
  proposals[0] = true_ids == 1  # a perfect proposal, overlapped by the others
  proposals[1, 1] = False  # an empty one in a frame
  present = rng.random((num_proposals, T)) < 0.7
  present[0] = True
  return true_ids, proposals, present


def _scores(true_ids, masks, t):
  """J, F [P, G] of frame t by the official per-object functions."""
  void = true_ids[t] == 255
  j = np.array(
    [[official_iou(true_ids[t] == g + 1, m, void) for g in range(NUM_OBJECTS)] for m in masks]
  )
  f = np.array(
    [[official_f_measure(m, true_ids[t] == g + 1, void) for g in range(NUM_OBJECTS)] for m in masks]
  )
  return j.reshape(len(masks), NUM_OBJECTS), f.reshape(len(masks), NUM_OBJECTS)


def test_per_frame_protocol_equals_the_official_layout_and_matching():
  true_ids, proposals, present = _sequence(0, num_proposals=6)
  result = davis_protocol.evaluate_sequence_masks(
    true_ids, proposals, "davis2017-unsupervised-perframe", present=present
  )
  # The SMTC evaluator: each frame's present proposals in order, zero-padded to the largest count
  # (and to the GT object count); one Hungarian assignment per frame on J + F.
  count = max(present.sum(0).max(), NUM_OBJECTS)
  for t in range(T):
    stack = proposals[present[:, t], t]
    stack = np.concatenate([stack, np.zeros((count - len(stack), H, W), bool)])
    j, f = _scores(true_ids, stack, t)
    rows, cols = optimize.linear_sum_assignment(-(j + f))
    np.testing.assert_array_equal(result.j[cols, t], j[rows, cols])
    np.testing.assert_array_equal(result.f[cols, t], f[rows, cols])
  assert result.j[0].min() == 1.0  # the perfect proposal
  # Object 2 is absent from frame 2: matched to an empty mask, J = F = 1.
  assert result.j[1, 2] == result.f[1, 2] == 1.0


def test_sequence_protocol_keeps_the_20_largest_and_matches_once():
  true_ids, proposals, present = _sequence(1, num_proposals=24)
  proposals[5] = True  # the largest: kept
  proposals[6] = False  # the smallest: dropped
  result = davis_protocol.evaluate_sequence_masks(
    true_ids, proposals, "davis2017-unsupervised", present=present
  )
  kept = np.sort(np.argsort(-proposals.sum((1, 2, 3)), kind="stable")[:20])
  assert 5 in kept and 6 not in kept
  masks = proposals & present[:, :, None, None]  # absent: an empty mask
  j = np.zeros((len(kept), NUM_OBJECTS, T))
  f = np.zeros_like(j)
  for t in range(T):
    j[:, :, t], f[:, :, t] = _scores(true_ids, masks[kept, t], t)
  rows, cols = optimize.linear_sum_assignment(-(j.mean(2) + f.mean(2)))
  np.testing.assert_array_equal(result.j[cols], j[rows, cols])
  np.testing.assert_array_equal(result.f[cols], f[rows, cols])
  np.testing.assert_array_equal(result.matched_proposals[cols], kept[rows] + 1)
  assert result.matched_proposals[0] == 1  # the perfect proposal


@pytest.mark.parametrize("protocol", ["davis2017-unsupervised", "davis2017-unsupervised-perframe"])
def test_non_overlapping_masks_score_as_the_id_map(protocol):
  rng = np.random.default_rng(2)
  true_ids = random_label_video(rng, T, H, W, NUM_OBJECTS)
  true_ids[rng.random(true_ids.shape) < 0.02] = 255
  pred_ids = random_label_video(rng, T, H, W, 5)
  pred_ids[1][pred_ids[1] == 4] = 0  # proposal 4 absent from frame 1: an empty mask
  from_ids = davis_protocol.evaluate_sequence(true_ids, pred_ids, protocol)
  proposals = pred_ids[None] == np.arange(1, 6)[:, None, None, None]
  from_masks = davis_protocol.evaluate_sequence_masks(true_ids, proposals, protocol)
  np.testing.assert_array_equal(from_masks.j, from_ids.j)
  np.testing.assert_array_equal(from_masks.f, from_ids.f)
  # A sequence of per-frame stacks (read on demand) gives the same as the array.
  lazy = davis_protocol.evaluate_sequence_masks(
    true_ids, [proposals[:, t] for t in range(T)], protocol
  )
  np.testing.assert_array_equal(lazy.j, from_masks.j)
  # Scores computed once, matched per protocol.
  scores = proposal_scores.score_mask_stack(true_ids, proposals)
  again = davis_protocol.evaluate_sequence_masks(true_ids, None, protocol, scores=scores)
  np.testing.assert_array_equal(again.f, from_masks.f)


def test_bad_inputs_name_the_problem():
  true_ids, proposals, present = _sequence(3, num_proposals=2)
  with pytest.raises(ValueError, match="proposals of frame 0 are"):
    davis_protocol.evaluate_sequence_masks(true_ids, proposals[:, :, :10])
  with pytest.raises(ValueError, match="3 proposal frames for 4 GT frames"):
    davis_protocol.evaluate_sequence_masks(true_ids, proposals[:, :3])
  with pytest.raises(ValueError, match="present must be"):
    davis_protocol.evaluate_sequence_masks(true_ids, proposals, present=present[:, :2])
  with pytest.raises(ValueError, match="give an id map"):
    davis_protocol.evaluate_sequence_masks(true_ids, proposals, "davis2016")
