"""A small synthetic video file for the commands that segment a user's video."""

import numpy as np

from vosjax.data import video as video_io

NUM_FRAMES, HEIGHT, WIDTH = 10, 48, 64  # not square, and not the models' 32x32


def moving_square_video(path, num_frames=NUM_FRAMES, height=HEIGHT, width=WIDTH, seed=0):
  """A textured square moving right and down over a static textured background, as MP4."""
  rng = np.random.default_rng(seed)
  frames = np.repeat(rng.uniform(0.1, 0.6, (1, height, width, 3)), num_frames, axis=0)
  square = rng.uniform(0.5, 1.0, (height // 3, height // 3, 3))
  for t in range(num_frames):
    top, left = 4 + t, 4 + 2 * t
    frames[t, top : top + square.shape[0], left : left + square.shape[1]] = square
  return video_io.write_mp4(path, frames, fps=8)
