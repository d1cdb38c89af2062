"""DAVIS roots read as DAVIS is shipped (`vosjax.data.davis.split_sequences`): the val and test-dev
lists of `ImageSets/`, DAVIS-2016 and DAVIS-2017 layouts, `eval_sequences` only to override."""

from pathlib import Path
import warnings

import numpy as np
from PIL import Image
import pytest

from configs import davis2016
from configs import ytvis
from vosjax.data import davis
from vosjax.evaluation import davis_flows
from vosjax.evaluation import frame_folders


def _sequence(root: Path, name: str, frames: bool = True) -> None:
  (root / "Annotations" / "480p" / name).mkdir(parents=True)
  Image.fromarray(np.zeros((4, 6), np.uint8)).save(
    root / "Annotations" / "480p" / name / "00000.png"
  )
  if frames:
    (root / "JPEGImages" / "480p" / name).mkdir(parents=True)
    for t in range(2):
      Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(
        root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"
      )


@pytest.fixture
def davis2016_layout(tmp_path) -> Path:
  """train bear, val camel, blackswan (2 frames each) and cows (annotations only), as shipped."""
  for name in ("bear", "blackswan", "camel"):
    _sequence(tmp_path, name)
  _sequence(tmp_path, "cows", frames=False)
  (tmp_path / "ImageSets" / "480p").mkdir(parents=True)
  for split, names in (("val", ("camel", "blackswan", "cows")), ("train", ("bear",))):
    (tmp_path / "ImageSets" / "480p" / f"{split}.txt").write_text(
      "".join(
        f"/JPEGImages/480p/{s}/{t:05d}.jpg /Annotations/480p/{s}/{t:05d}.png \n"
        for s in names
        for t in range(2)
      )
    )
  return tmp_path


@pytest.fixture
def davis2017_layout(tmp_path) -> Path:
  """train bear, val dog and blackswan, test-dev (its own root in DAVIS) aerobatics."""
  for name in ("aerobatics", "bear", "blackswan", "dog"):
    _sequence(tmp_path, name)
  (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
  (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("dog\nblackswan\n")
  (tmp_path / "ImageSets" / "2017" / "train.txt").write_text("bear\n")
  (tmp_path / "ImageSets" / "2017" / "test-dev.txt").write_text("aerobatics\n")
  return tmp_path


def test_davis2016_lists(davis2016_layout):
  root = davis2016_layout
  assert davis.split_list_file(root) == root / "ImageSets" / "480p" / "val.txt"
  assert davis.read_split_list(davis.split_list_file(root)) == ["camel", "blackswan", "cows"]
  with pytest.warns(UserWarning, match="val.txt without frames: cows"):
    assert davis.split_sequences(root) == ["blackswan", "camel"]
  assert davis.split_sequences(root, "train") == ["bear"]
  assert davis.split_sequences(root, override=("bear", "camel")) == ["bear", "camel"]
  assert davis.split_list_file(root, "test-dev") is None


def test_davis2017_lists(davis2017_layout):
  root = davis2017_layout
  assert davis.split_list_file(root) == root / "ImageSets" / "2017" / "val.txt"
  assert davis.split_sequences(root) == ["blackswan", "dog"]
  assert davis.split_sequences(root, "test-dev") == ["aerobatics"]
  assert davis.split_sequences(root, "train") == ["bear"]


def test_a_root_without_lists_is_every_sequence_with_frames(davis2017_layout):
  for path in (davis2017_layout / "ImageSets" / "2017").iterdir():
    path.unlink()
  assert davis.split_list_file(davis2017_layout) is None
  assert davis.split_sequences(davis2017_layout) == ["aerobatics", "bear", "blackswan", "dog"]


def test_a_list_without_any_frames_is_an_error(davis2017_layout):
  (davis2017_layout / "ImageSets" / "2017" / "val.txt").write_text("nope\n")
  with pytest.raises(ValueError, match="none of the 1 sequences listed in .*val.txt has frames"):
    davis.split_sequences(davis2017_layout)


@pytest.mark.parametrize("layout", ["davis2016_layout", "davis2017_layout"])
def test_frame_folder_evaluation_reads_the_val_list(layout, request):
  """The frame-folder evaluation (Betrayed, SMTC) scores the val list, eval_sequences overrides it,
  eval_imageset picks another list."""
  root = request.getfixturevalue(layout)
  data = ytvis.get_config().data
  data.eval_root = str(root)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    expected = ["blackswan", "camel"] if layout == "davis2016_layout" else ["blackswan", "dog"]
    assert frame_folders.evaluation_sequences(data) == expected
  # Only the 2016 list names a sequence without frames (cows); the 2017 one warns of nothing.
  assert ["cows" in str(w.message) for w in caught] == [True] * (layout == "davis2016_layout")
  data.eval_imageset = "train"
  assert frame_folders.evaluation_sequences(data) == ["bear"]
  data.eval_sequences = ("dog",)
  assert frame_folders.evaluation_sequences(data) == ["dog"]


def test_flow_evaluation_reads_the_val_list(davis2016_layout):
  """Motion Grouping's DAVIS-2016 evaluation: the val list, `data.sequences` to override."""
  data = davis2016.get_config().data
  data.root = str(davis2016_layout)
  with pytest.warns(UserWarning, match="cows"):
    assert davis_flows.evaluation_sequences(data) == ["blackswan", "camel"]
  data.sequences = ("bear",)
  assert davis_flows.evaluation_sequences(data) == ["bear"]
