"""Video / frame-folder reading, GIF / MP4 / palette-PNG writing, overlays."""

import numpy as np
from PIL import Image
import pytest

from vosjax.data import davis
from vosjax.data import video


def toolkit_color_map() -> np.ndarray:
  """Transcription of davis2017-evaluation `utils.color_map`."""
  cmap = np.zeros((256, 3), np.uint8)
  for i in range(256):
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    cmap[i] = (r, g, b)
  return cmap


def smooth_frames(num_frames=6, height=32, width=48) -> np.ndarray:
  """uint8 frames of a moving colour gradient (codec friendly)."""
  y, x = np.mgrid[:height, :width]
  frames = [
    np.stack([(x * 5 + 10 * t) % 256, (y * 7) % 256, np.full_like(x, 40 * t % 256)], -1)
    for t in range(num_frames)
  ]
  return np.stack(frames).astype(np.uint8)


def test_palette_and_indexed_png_round_trip(tmp_path):
  np.testing.assert_array_equal(video.DAVIS_PALETTE, toolkit_color_map())
  ids = np.random.default_rng(0).integers(0, 256, (20, 30))
  path = video.write_indexed_png(tmp_path / "seq/00000.png", ids)
  with Image.open(path) as image:
    assert image.mode == "P"
    np.testing.assert_array_equal(np.array(image), ids)
    palette = np.array(image.getpalette()[:768]).reshape(256, 3)
  np.testing.assert_array_equal(palette, video.DAVIS_PALETTE)
  np.testing.assert_array_equal(davis.read_label_png(path), ids)
  assert not list(tmp_path.glob("seq/.*tmp*"))  # Atomic write left nothing behind.
  with pytest.raises(ValueError, match="0..255"):
    video.write_indexed_png(tmp_path / "bad.png", np.full((2, 2), 256))
  with pytest.raises(ValueError, match=r"\[H, W\]"):
    video.write_indexed_png(tmp_path / "bad.png", np.zeros((1, 2, 2), int))


def test_frame_folder_reading(tmp_path):
  frames = smooth_frames()
  for t, frame in enumerate(frames):
    Image.fromarray(frame).save(tmp_path / f"{t:05d}.png")
  (tmp_path / "notes.txt").write_text("ignored")
  out = video.read_video(tmp_path)
  assert out.dtype == np.float32 and out.shape == (6, 32, 48, 3)
  np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), frames)
  assert video.read_video(tmp_path, resolution=(16, 24), max_frames=2).shape == (2, 16, 24, 3)
  Image.fromarray(frames[0][:10]).save(tmp_path / "00009.png")
  with pytest.raises(ValueError, match="00009.png: size 48x10 differs"):
    video.read_frame_folder(tmp_path)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="no image files"):
    video.read_video(empty)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    video.read_video(tmp_path / "missing.mp4")


def test_gif_round_trip(tmp_path):
  # Few flat colours survive GIF quantization exactly.
  frames = np.zeros((4, 20, 30, 3), np.uint8)
  for t in range(4):
    frames[t, :, 5 * t : 5 * t + 10] = (255, 0, 0)
    frames[t, 10:, :] = (0, 0, 255)
  path = video.write_gif(tmp_path / "clip.gif", frames, fps=5)
  out = video.read_video(path)
  assert out.shape == (4, 20, 30, 3)
  np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), frames)
  # Float input in [0, 1] is accepted too.
  video.write_gif(tmp_path / "float.gif", frames / 255.0)
  assert video.read_video(tmp_path / "float.gif", max_frames=2).shape == (2, 20, 30, 3)


def test_mp4_round_trip(tmp_path):
  frames = smooth_frames(num_frames=8, height=64, width=96)
  path = video.write_mp4(tmp_path / "clip.mp4", frames, fps=8)
  out = video.read_video(path)
  assert out.shape == (8, 64, 96, 3)
  # Lossy codec: close on average, not exact.
  assert np.abs(out - frames / 255.0).mean() < 0.05


def test_corrupt_and_empty_files_raise(tmp_path):
  (tmp_path / "empty.mp4").write_bytes(b"")
  with pytest.raises(ValueError, match="empty"):
    video.read_video(tmp_path / "empty.mp4")
  (tmp_path / "junk.mp4").write_bytes(b"this is not a video" * 100)
  with pytest.raises(ValueError, match="junk.mp4: no frame could be decoded"):
    video.read_video(tmp_path / "junk.mp4")
  (tmp_path / "junk.gif").write_bytes(b"GIF89a" + b"\x00" * 20)
  with pytest.raises(ValueError, match="junk.gif"):
    video.read_video(tmp_path / "junk.gif")
  with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
    video.write_gif(tmp_path / "x.gif", np.zeros((2, 4, 4), np.uint8))


def test_overlay_masks():
  frames = smooth_frames(num_frames=2)
  ids = np.zeros(frames.shape[:3], np.int32)
  ids[:, 8:20, 10:30] = 2
  out = video.overlay_masks(frames, ids, alpha=0.5, contours=False)
  assert out.dtype == np.uint8 and out.shape == frames.shape
  np.testing.assert_array_equal(out[ids == 0], frames[ids == 0])
  expected = np.round(0.5 * frames[ids == 2] + 0.5 * video.DAVIS_PALETTE[2]).astype(np.uint8)
  np.testing.assert_array_equal(out[ids == 2], expected)
  outlined = video.overlay_masks(frames[0], ids[0])
  np.testing.assert_array_equal(outlined[8, 15], video.DAVIS_PALETTE[2])  # Top edge.
  np.testing.assert_array_equal(outlined[19, 29], video.DAVIS_PALETTE[2])  # Bottom-right corner.
  np.testing.assert_array_equal(outlined[12, 15], out[0, 12, 15])  # Interior: blended.


def test_draw_keypoints_marks_visible_joints_only():
  frame = np.zeros((40, 60, 3), np.uint8)
  frame.setflags(write=False)  # the input is never written
  joints = np.array([[10.0, 10.0], [50.0, 30.0], [-1.0, -1.0]])
  out = video.draw_keypoints(frame, joints, parents=(1, 1, 0))
  assert out.shape == frame.shape and not frame.any()
  np.testing.assert_array_equal(out[10, 10], video.DAVIS_PALETTE[1])
  np.testing.assert_array_equal(out[30, 50], video.DAVIS_PALETTE[2])
  assert out[20, 30].any()  # the bone from joint 0 to its parent 1
  assert not out[35:, :5].any()  # nothing for the invisible joint
