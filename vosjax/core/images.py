"""Float images to uint8, one rule everywhere: scale the value range to [0, 255], round, clip; the
source pixels of nearest-neighbour upsampling."""

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


# Nearest-neighbour source index of output pixel i (`nearest_source_indices`):
# "exact": floor(i * n / N) in integers; "torch": torch `F.interpolate(mode="nearest")` as it
# computes it, min(floor(float32(i) * float32(n / N)), n - 1), which is smaller by one where the
# float32 product rounds below an integer (16 cells across 854 pixels: pixel 427 gives 7.9999995,
# cell 7, where the exact rule gives 8).
NEAREST_RULES = ("exact", "torch")


def nearest_source_indices(in_size: int, out_size: int, rule: str = "exact") -> np.ndarray:
  """Source index int64 `[out_size]` of each output pixel of nearest upsampling
  (`NEAREST_RULES`)."""
  if rule == "exact":
    return (np.arange(out_size) * in_size) // out_size
  if rule == "torch":
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, in_size - 1)
  raise ValueError(f"unknown nearest-upsampling rule {rule!r}; choose one of {NEAREST_RULES}")


def upsample_nearest(x: np.ndarray, size: tuple[int, int], rule: str = "exact") -> np.ndarray:
  """`[..., h, w]` -> `[..., H, W]` by nearest neighbour with `rule` (`NEAREST_RULES`)."""
  rows = nearest_source_indices(x.shape[-2], size[0], rule)
  cols = nearest_source_indices(x.shape[-1], size[1], rule)
  return x[..., rows[:, None], cols[None, :]]
