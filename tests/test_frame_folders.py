"""Frame-folder evaluation (`vosjax.evaluation.frame_folders`): which ground truth it scores
against.

The whole evaluation (segment, write, score) runs in tests/test_configs.py (configs/ytvis.py case,
on a DAVIS-2017-unsupervised-layout root at 240p).
"""

import pytest

from vosjax.evaluation import frame_folders


def test_ground_truth_is_the_unsupervised_annotations_where_present(tmp_path):
  (tmp_path / "Annotations" / "480p").mkdir(parents=True)
  (tmp_path / "Annotations" / "Full-Resolution").mkdir(parents=True)
  assert frame_folders.annotation_folder(tmp_path, "480p") == tmp_path / "Annotations" / "480p"
  (tmp_path / "Annotations_unsupervised" / "480p").mkdir(parents=True)
  assert (
    frame_folders.annotation_folder(tmp_path, "480p")
    == tmp_path / "Annotations_unsupervised" / "480p"
  )
  # The quality of the frames, not 480p: masks must have the size of the scored frames.
  assert (
    frame_folders.annotation_folder(tmp_path, "Full-Resolution")
    == tmp_path / "Annotations" / "Full-Resolution"
  )


def test_davis2016_grayscale_masks_are_scored_as_one_object(tmp_path):
  """0/255 grayscale masks (DAVIS-2016) -> an indexed copy with object 1 (the DAVIS-2017 protocols
  read 255 as void); indexed masks (DAVIS-2017) are used as they are."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vosjax.data import davis  # pylint: disable=g-import-not-at-top
  from vosjax.data import video as video_io  # pylint: disable=g-import-not-at-top
  from vosjax.evaluation import davis_protocol  # pylint: disable=g-import-not-at-top

  mask = np.zeros((6, 8), np.uint8)
  mask[1:4, 2:5] = 255
  gray = tmp_path / "gray"
  for t in range(2):
    (gray / "seq").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.roll(mask, t, axis=1), mode="L").save(gray / "seq" / f"{t:05d}.png")
  with pytest.raises(ValueError, match="only void"):  # what it would do unconverted
    davis_protocol.read_annotations(gray, "seq", "davis2017-unsupervised")
  scored = frame_folders.scoring_annotations(gray, ["seq"], tmp_path / "work")
  assert scored == tmp_path / "work" / "frame_eval" / "annotations"
  for t in range(2):
    with Image.open(scored / "seq" / f"{t:05d}.png") as image:
      assert image.mode == "P"
    np.testing.assert_array_equal(
      davis.read_label_png(scored / "seq" / f"{t:05d}.png"), np.roll(mask, t, axis=1) // 255
    )
  true_ids, num_objects, _ = davis_protocol.read_annotations(
    scored, "seq", "davis2017-unsupervised"
  )
  assert num_objects == 1 and true_ids.max() == 1
  indexed = tmp_path / "indexed"
  video_io.write_indexed_png(indexed / "seq" / "00000.png", mask // 255 * 2)
  assert frame_folders.scoring_annotations(indexed, ["seq"], tmp_path / "work2") == indexed
  assert not (tmp_path / "work2").exists()
