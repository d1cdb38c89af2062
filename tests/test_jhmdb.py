"""JHMDB reader (videowalk/UVC file list, joint_positions.mat) and its clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import io as scipy_io

from helpers import dataset_layouts
from vosjax.data import jhmdb


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
  root = tmp_path_factory.mktemp("jhmdb")
  clip = dataset_layouts.synthetic_clip(num_frames=11, height=48, width=64)
  return dataset_layouts.write_jhmdb(root, {"clip": clip}), clip


def test_file_list_frames_and_joints(layout):
  listing, (rgb, _, centres) = layout
  (video,) = jhmdb.jhmdb_videos(listing)
  assert video.name == "clip"
  # Sorted by number (00010 after 00009), .png only, as make_paths reads them.
  assert [p.name for p in video.frames] == [f"{t:05d}.png" for t in range(1, 12)]
  np.testing.assert_allclose(jhmdb.read_joint_positions(video.joints_file), centres, atol=1e-12)


def test_grid_round_trip_is_eval_pck_scaling():
  joints = np.array([[10.0, 20.0], [63.0, 0.0], [-1.0, -1.0]])
  grid = np.stack([joints[:, 0] * 320 / 64 / 8, joints[:, 1] * 320 / 48 / 8], -1)
  grid[2] = -1
  pixels = jhmdb.grid_to_pixels(grid, (48, 64), 320, 8)
  np.testing.assert_allclose(pixels[:2], joints[:2], atol=1e-12)
  assert (pixels[2] < 0).all()
  assert jhmdb.keypoint_grid_hw((48, 64), 320, 16) == (20, 20)
  assert jhmdb.keypoint_grid_hw((50, 70), 0, 16) == (4, 5)  # ceil, as JhmdbSet


def test_errors_name_the_missing_file_or_key(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing file list"):
    jhmdb.jhmdb_videos(tmp_path / "none.txt")
  (tmp_path / "one_column.txt").write_text("frames\n")
  with pytest.raises(ValueError, match="one_column.txt:1"):
    jhmdb.read_file_list(tmp_path / "one_column.txt")
  (tmp_path / "frames").mkdir()
  (tmp_path / "list.txt").write_text("frames joints.mat\n")
  with pytest.raises(FileNotFoundError, match="joints.mat"):
    jhmdb.jhmdb_videos(tmp_path / "list.txt")
  scipy_io.savemat(str(tmp_path / "joints.mat"), {"pos_world": np.zeros((2, 15, 3))})
  with pytest.raises(FileNotFoundError, match="no .png frames"):
    jhmdb.jhmdb_videos(tmp_path / "list.txt")
  with pytest.raises(KeyError, match="no 'pos_img'.*pos_world"):
    jhmdb.read_joint_positions(tmp_path / "joints.mat")
  scipy_io.savemat(str(tmp_path / "flat.mat"), {"pos_img": np.zeros((3, 15))})
  with pytest.raises(ValueError, match=r"\[2, joints, frames\]"):
    jhmdb.read_joint_positions(tmp_path / "flat.mat")
  (tmp_path / "frames" / "first.png").write_bytes(b"")
  with pytest.raises(ValueError, match="numbers"):
    jhmdb.numbered_frames(tmp_path / "frames")
