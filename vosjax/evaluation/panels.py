"""Pictures people look at: labelled side-by-side panels of a video, as a GIF and a PNG strip.

Each panel (e.g. frame | flow | predicted mask | ground truth) is enlarged by an integer factor
(nearest neighbour, so masks keep hard edges) until its short side is at least `min_side` pixels,
and gets a title bar with its label.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from vosjax.core import images
from vosjax.data import video as video_io

TITLE_HEIGHT = 18


def _title_bar(label: str, width: int) -> np.ndarray:
  """uint8 `[TITLE_HEIGHT, width, 3]`: white text on dark grey."""
  bar = np.full((TITLE_HEIGHT, width, 3), 40, np.uint8)
  cv2.putText(
    bar,
    label,
    (4, TITLE_HEIGHT - 5),
    cv2.FONT_HERSHEY_SIMPLEX,
    0.45,
    (255, 255, 255),
    1,
    cv2.LINE_AA,
  )
  return bar


def labelled_panels(panels: list[tuple[str, np.ndarray]], min_side: int = 128) -> np.ndarray:
  """Side-by-side labelled panels of one video.

  Args:
    panels: (label, video) pairs; videos uint8 or float in [0, 1], all `[T, H, W, 3]`.
    min_side: the enlarged panels' short side is at least this.

  Returns:
    uint8 `[T, TITLE_HEIGHT + s * H, n * s * W, 3]` with s = ceil(min_side / min(H, W)).
  """
  shapes = {np.shape(video)[:3] for _, video in panels}
  if len(shapes) != 1:
    raise ValueError(f"panels must share [T, H, W], got {sorted(shapes)}")
  num_frames, height, width = shapes.pop()
  scale = max(1, -(-min_side // min(height, width)))
  columns = []
  for label, video in panels:
    video = images.to_uint8(video)
    big = np.repeat(np.repeat(video, scale, axis=1), scale, axis=2)
    bar = np.broadcast_to(
      _title_bar(label, width * scale), (num_frames, TITLE_HEIGHT, width * scale, 3)
    )
    columns.append(np.concatenate([bar, big], axis=1))
  return np.concatenate(columns, axis=2)


def write_panels(
  out_dir,
  name: str,
  panels: list[tuple[str, np.ndarray]],
  strip_frames: int = 6,
  fps: float = 8.0,
  min_side: int = 128,
) -> None:
  """`out_dir/name.gif` (every frame) and `out_dir/name.png` (`strip_frames` evenly spaced frames,
  one row each) of `labelled_panels(panels, min_side)`."""
  video = labelled_panels(panels, min_side)
  os.makedirs(out_dir, exist_ok=True)
  video_io.write_gif(os.path.join(out_dir, f"{name}.gif"), video, fps=fps)
  rows = np.unique(
    np.linspace(0, len(video) - 1, min(strip_frames, len(video))).round().astype(int)
  )
  strip = np.concatenate([video[t] for t in rows], axis=0)
  cv2.imwrite(os.path.join(out_dir, f"{name}.png"), strip[..., ::-1])
