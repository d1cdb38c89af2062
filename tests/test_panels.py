"""Labelled panels: enlarged by an integer factor (hard mask edges), titled, GIF and PNG strip."""

import numpy as np
from PIL import Image
import pytest

from vosjax.evaluation import panels


def test_panels_are_enlarged_nearest_and_titled():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (5, 32, 40, 3), dtype=np.uint8)
  masks = np.zeros((5, 32, 40, 3), np.float32)
  masks[:, 8:16, 10:20] = 1.0
  video = panels.labelled_panels([("frame", frames), ("mask", masks)], min_side=128)
  scale = 4  # ceil(128 / 32)
  assert video.shape == (5, panels.TITLE_HEIGHT + 32 * scale, 2 * 40 * scale, 3)
  body = video[:, panels.TITLE_HEIGHT :]
  np.testing.assert_array_equal(body[:, ::scale, : 40 * scale : scale], frames)
  mask_panel = body[:, :, 40 * scale :]
  # Nearest neighbour: only the two mask values, and the edge lands on a multiple of the scale.
  assert set(np.unique(mask_panel)) == {0, 255}
  assert (
    mask_panel[0, 8 * scale, 10 * scale, 0] == 255
    and mask_panel[0, 8 * scale - 1, 10 * scale, 0] == 0
  )
  title = video[0, : panels.TITLE_HEIGHT]
  assert title.max() > 200 and np.median(title) == 40  # white text on dark grey


def test_write_panels_writes_a_gif_and_a_strip(tmp_path):
  frames = np.zeros((10, 16, 16, 3), np.uint8)
  frames[np.arange(10), :, np.arange(10)] = 255  # a moving bar
  panels.write_panels(tmp_path, "video000", [("frame", frames), ("again", frames)], strip_frames=4)
  with Image.open(tmp_path / "video000.gif") as gif:
    assert gif.n_frames == 10 and gif.size == (2 * 128, panels.TITLE_HEIGHT + 128)
  with Image.open(tmp_path / "video000.png") as strip:
    assert strip.size == (2 * 128, 4 * (panels.TITLE_HEIGHT + 128))


def test_panels_of_different_shapes_are_an_error():
  with pytest.raises(ValueError, match="share"):
    panels.labelled_panels([("a", np.zeros((2, 8, 8, 3))), ("b", np.zeros((2, 8, 9, 3)))])
