"""Frame-folder evaluation (`vosjax.evaluation.frame_folders`): which ground truth it scores against.

The whole evaluation (segment, write, score) runs in tests/test_configs.py (configs/ytvis.py case,
on a DAVIS-2017-unsupervised-layout root at 240p).
"""
from vosjax.evaluation import frame_folders


def test_ground_truth_is_the_unsupervised_annotations_where_present(tmp_path):
  (tmp_path / "Annotations" / "480p").mkdir(parents=True)
  (tmp_path / "Annotations" / "Full-Resolution").mkdir(parents=True)
  assert frame_folders.annotation_folder(tmp_path, "480p") == tmp_path / "Annotations" / "480p"
  (tmp_path / "Annotations_unsupervised" / "480p").mkdir(parents=True)
  assert (frame_folders.annotation_folder(tmp_path, "480p")
          == tmp_path / "Annotations_unsupervised" / "480p")
  # The quality of the frames, not 480p: masks must have the size of the scored frames.
  assert (frame_folders.annotation_folder(tmp_path, "Full-Resolution")
          == tmp_path / "Annotations" / "Full-Resolution")
