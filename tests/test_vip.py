"""VIP_Fine reader, the --cropSize label resize of CRW's VOSDataset, and their clear errors."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image
import pytest

from helpers import dataset_layouts
from vosjax.data import label_propagation as inputs
from vosjax.data import vip


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  clip = dataset_layouts.synthetic_clip(num_frames=3, height=48, width=64)
  root = dataset_layouts.write_vip(tmp_path_factory.mktemp("vip"), {"videos7": clip})
  # An unannotated frame between two annotated ones (VIP annotates every 25th frame).
  Image.fromarray(clip[0][0]).save(root / "Images" / "videos7" / "000000000030.jpg")
  return root, clip


def test_annotated_frames_of_the_listed_videos(root):
  root, (_, ids, _) = root
  (video,) = vip.vip_videos(root)
  assert video.name == "videos7"
  assert [p.name for p in video.frames] == [f"{25 * t:012d}.jpg" for t in (1, 2, 3)]
  assert [p.name for p in video.annotations] == [f"{25 * t:012d}.png" for t in (1, 2, 3)]
  np.testing.assert_array_equal(vip.read_part_ids(video.annotations[1]), ids[1])


def test_file_list_pairs_by_position(root, tmp_path):
  root, _ = root
  listing = tmp_path / "vip_val.txt"
  listing.write_text(f"{root}/Images/videos7 {root}/Annotations/Category_ids/videos7\n")
  with pytest.raises(ValueError, match="3 label files for 4 frames"):
    vip.vip_videos_from_list(listing)
  (root / "Images" / "videos7" / "000000000030.jpg").rename(tmp_path / "moved.jpg")
  try:
    (video,) = vip.vip_videos_from_list(listing)
  finally:
    (tmp_path / "moved.jpg").rename(root / "Images" / "videos7" / "000000000030.jpg")
  assert [p.stem for p in video.frames] == [p.stem for p in video.annotations]


def test_errors_name_the_missing_file(root, tmp_path):
  root, _ = root
  with pytest.raises(FileNotFoundError, match="lists/test_videos.txt"):
    vip.vip_videos(root, "test")
  with pytest.raises(FileNotFoundError, match="Images/videos9"):
    vip.vip_videos(root, videos=["videos9"])
  with pytest.raises(FileNotFoundError, match="missing part annotation"):
    vip.read_part_ids(tmp_path / "none.png")
  colour = np.zeros((4, 4, 3), np.uint8)
  colour[0, 0] = (1, 2, 3)
  Image.fromarray(colour).save(tmp_path / "colour.png")
  with pytest.raises(ValueError, match="colour part map"):
    vip.read_part_ids(tmp_path / "colour.png")


def test_crop_labels_as_vos_dataset():
  """Our transcription of VOSDataset's --cropSize label path: the BGR label image resized with
  INTER_NEAREST passed as `dst` (so bilinear), the label set of frame 0's colours, one-hot,
  cv2 linear to the floor grid. In-between ids on boundaries become channels of their own."""
  ids = np.zeros((30, 40), np.uint8)
  ids[5:20, 8:30] = 13
  ids[10:25, 20:36] = 4
  lblimg = np.repeat(ids[..., None], 3, -1)
  resized = cv2.resize(lblimg, (56, 56), cv2.INTER_NEAREST)
  lblset = np.unique(resized.reshape(-1, 3), axis=0)
  onehot = np.stack([np.all(resized == ll, axis=-1) for ll in lblset], axis=-1)
  expected = cv2.resize(np.float32(onehot), (56 // 8, 56 // 8), cv2.INTER_LINEAR)
  first, label_ids = inputs.crw_first_labels(inputs.crop_annotation(ids, 56), 8)
  np.testing.assert_array_equal(label_ids, lblset[:, 0])
  np.testing.assert_array_equal(first, expected)
  assert len(label_ids) > 3  # blended boundary values joined the label set
