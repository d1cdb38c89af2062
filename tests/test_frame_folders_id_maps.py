"""`frame_folders.score_id_maps`: PNG id maps with more ids than a protocol allows proposals (the
official Betrayed mode writes every cluster as one) are scored as proposal stacks, the largest
kept."""

import numpy as np
import pytest

from vosjax.data import video as video_io
from vosjax.evaluation import davis_protocol
from vosjax.evaluation import frame_folders


def test_more_ids_than_proposals_keeps_the_largest(tmp_path):
  truth = np.zeros((3, 40, 60), np.uint8)
  truth[:, 10:30, 20:50] = 1
  ids = np.zeros((3, 40, 60), np.uint8)
  for k in range(24):  # 24 one-pixel clusters on the first row: too small to be kept
    ids[:, 0, k] = k + 1
  ids[:, 10:30, 20:50] = 25  # the object, the largest proposal with the background (id 26)
  ids[ids == 0] = 26
  for t in range(3):
    video_io.write_indexed_png(tmp_path / "gt" / "seq" / f"{t:05d}.png", truth[t])
    video_io.write_indexed_png(tmp_path / "res" / "seq" / f"{t:05d}.png", ids[t])
  with pytest.raises(ValueError, match="more than the 20 proposals"):
    davis_protocol.evaluate_folders(tmp_path / "gt", tmp_path / "res", "davis2017-unsupervised")
  for protocol in frame_folders.PROTOCOLS:
    scored = frame_folders.score_id_maps(tmp_path / "gt", tmp_path / "res", ["seq"], protocol)
    assert scored.global_results()["J-Mean"] == pytest.approx(1.0)
  # Where the ids fit, the same as the folder evaluation.
  ids[ids > 20] = 20
  for t in range(3):
    video_io.write_indexed_png(tmp_path / "res" / "seq" / f"{t:05d}.png", ids[t])
  direct = davis_protocol.evaluate_folders(
    tmp_path / "gt", tmp_path / "res", "davis2017-unsupervised"
  )
  scored = frame_folders.score_id_maps(
    tmp_path / "gt", tmp_path / "res", ["seq"], "davis2017-unsupervised"
  )
  assert scored.global_results() == direct.global_results()
