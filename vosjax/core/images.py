"""Float images to uint8, one rule everywhere: scale the value range to [0, 255], round, clip."""

from __future__ import annotations

import numpy as np


def to_uint8(images, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
  """Float images with values in `value_range` (e.g. (0, 1) frames, (-1, 1) network outputs) ->
  uint8, rounded to the nearest level and clipped; uint8 input is returned as it is.

  Args:
    images: array of any shape (numpy or jax).
    value_range: (low, high) mapped to 0 and 255.
  """
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  low, high = value_range
  return np.clip(
    np.round((images.astype(np.float32) - low) * (255.0 / (high - low))), 0, 255
  ).astype(np.uint8)
