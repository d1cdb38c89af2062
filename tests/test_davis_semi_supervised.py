"""The official DAVIS-2017 semi-supervised protocol (`davis2017-semi-supervised`)."""

from __future__ import annotations


import numpy as np
import pytest

from helpers import real_data
from vosjax import evaluate
from vosjax.data.davis import read_label_png
from vosjax.data.video import write_indexed_png
from vosjax.evaluation import davis_protocol
from vosjax.evaluation import metrics

OSVOS_RESULTS = "davis2017_eval_results/semi-supervised/osvos"


@pytest.fixture(scope="module")
def masks():
  osvos = real_data.require_data(OSVOS_RESULTS) / OSVOS_RESULTS
  paths = sorted((osvos / "bike-packing").glob("*.png"))[:12]
  ids = np.stack([read_label_png(p) for p in paths]).astype(np.int64)
  assert ids[0].max() == 2
  return ids


def test_identity_matching_first_and_last_frames_dropped(masks):
  gt = masks
  same = davis_protocol.evaluate_sequence(gt[1:-1], gt[1:-1], "davis2017-semi-supervised")
  np.testing.assert_array_equal(same.j, 1.0)
  np.testing.assert_array_equal(same.f, 1.0)
  swapped = np.where(gt == 1, 2, np.where(gt == 2, 1, gt))
  result = davis_protocol.evaluate_sequence(gt, swapped, "davis2017-semi-supervised")
  expected_j = metrics.region_similarity(gt == 1, swapped == 1)
  np.testing.assert_allclose(result.j[0], expected_j)
  assert result.j.mean() < 0.2  # no matching: object k is scored against result id k
  hungarian = davis_protocol.evaluate_sequence(gt, swapped, "davis2017-unsupervised")
  np.testing.assert_array_equal(hungarian.j, 1.0)


def test_void_counts_as_background_and_extra_ids_are_an_error(masks):
  gt = masks.copy()
  gt[:, :20] = 255  # void band
  pred = np.where(masks == 255, 0, masks)
  result = davis_protocol.evaluate_sequence(gt, pred, "davis2017-semi-supervised")
  expected = metrics.region_similarity(np.where(gt == 255, 0, gt) == 1, pred == 1)
  np.testing.assert_allclose(result.j[0], expected)
  with pytest.raises(ValueError, match="has 2 objects"):
    davis_protocol.evaluate_sequence(gt, np.where(pred == 2, 3, pred), "davis2017-semi-supervised")


def test_command_scores_folders_without_first_and_last_frame(tmp_path, masks, capsys):
  gt_dir, res_dir = tmp_path / "gt" / "Annotations" / "480p" / "seq", tmp_path / "res" / "seq"
  for t, frame in enumerate(masks):
    write_indexed_png(gt_dir / f"{t:05d}.png", frame)
    garbage = np.zeros_like(frame) if t in (0, len(masks) - 1) else frame
    write_indexed_png(res_dir / f"{t:05d}.png", garbage)
  code = evaluate.main(
    [
      "--protocol",
      "davis2017-semi-supervised",
      "--gt",
      str(tmp_path / "gt"),
      "--results",
      str(tmp_path / "res"),
      "--output",
      str(tmp_path / "csv"),
    ]
  )
  assert code == 0
  table = (tmp_path / "csv" / "global_results.csv").read_text().splitlines()
  assert table[1].startswith("1.000,1.000")
  assert "frames 1:-1" in capsys.readouterr().out
