"""On-device clip augmentation of Betrayed by Attention (`src/utils.py::Augment_GPU_pre`), in jnp.

The official pipeline is a kornia `VideoSequential(..., same_on_frame=True)`: parameters are drawn
per clip and shared by all frames of the clip. In order:
  1. RandomGrayscale, p = 0.2 (luma 0.299 R + 0.587 G + 0.114 B copied to the three channels).
  2. ColorJitter(0.4, 0.4, 0.4, 0.1), p = 0.8 (kornia's PIL-like `ColorJitter`): brightness,
     contrast, saturation factors from U(0.6, 1.4), hue shift from U(-0.1, 0.1) turns; the four
     steps run in a random order; brightness, contrast and saturation clamp to [0, 1]. Contrast
     blends with the mean luma of each frame, saturation with each pixel's luma.
  3. RandomGaussianBlur, kernel int(0.1 H) // 2 * 2 + 1 by int(0.1 W) // 2 * 2 + 1, reflect padding,
     p = 0.5.
  4. Normalize.

Differences from the official code (deliberate, documented):
  * Blur sigma: kornia was given the range (sigma, sigma) with sigma drawn ONCE at construction from
    U(0.1, 2), so a whole training run used one fixed sigma (quirk). We draw sigma per clip from
    U(0.1, 2), the usual SimCLR/DINO-style blur.
  * Jitter order: kornia draws one order per call (shared by the batch); we draw one per clip.
  * Normalization: the official training normalizes with ImageNet statistics but its inference
    (`eval_oneshot.py`) with Kinetics statistics. We use ImageNet statistics for both, since the
    frozen DINO backbone was pretrained on ImageNet-normalized inputs and the spatio-temporal block
    is trained on features of ImageNet-normalized frames; `normalize` is the one function both paths
    call.

Video layout: float `[B, T, H, W, 3]` in [0, 1].
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The official test code of Betrayed by Attention and SMTC normalises with Kinetics statistics.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
_LUMA = (0.299, 0.587, 0.114)
_NUM_JITTER_STEPS = 4  # brightness, contrast, saturation, hue


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
  """Probabilities and ranges; the defaults are the official values."""

  grayscale_prob: float = 0.2
  jitter_prob: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.1
  blur_prob: float = 0.5
  blur_sigma_min: float = 0.1
  blur_sigma_max: float = 2.0
  blur_kernel_fraction: float = 0.1

  @classmethod
  def from_config(cls, config) -> "AugmentationConfig":
    """Builds from a mapping / ConfigDict with any subset of the field names."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = dict(config.items()) if config is not None else {}
    unknown = set(values) - names
    if unknown:
      raise ValueError(f"Unknown augmentation option(s) {sorted(unknown)}; known: {sorted(names)}.")
    return cls(**values)


class ClipAugmentation(NamedTuple):
  """Per-clip parameters, leading axis B (shared by the T frames of a clip)."""

  grayscale: jax.Array  # bool [B]
  jitter: jax.Array  # bool [B]
  brightness: jax.Array  # float [B] multiplicative factor
  contrast: jax.Array  # float [B]
  saturation: jax.Array  # float [B]
  hue: jax.Array  # float [B] shift in turns (1 = 360 degrees)
  jitter_order: jax.Array  # int32 [B, 4] permutation of (brightness, contrast, saturation, hue)
  blur: jax.Array  # bool [B]
  blur_sigma: jax.Array  # float [B]


def blur_kernel_size(size: int, fraction: float = 0.1) -> int:
  """Official odd kernel size int(fraction * size) // 2 * 2 + 1."""
  return int(fraction * size) // 2 * 2 + 1


@functools.partial(jax.jit, static_argnames=("batch_size", "config"))
def sample_augmentation(
  rng: jax.Array, batch_size: int, config: AugmentationConfig = AugmentationConfig()
) -> ClipAugmentation:
  """Draws the parameters of `batch_size` clips (one uniform draw, split into the fields)."""
  draws = jax.random.uniform(rng, (12, batch_size))

  def between(row, low, high):
    return low + draws[row] * (high - low)

  def factor(row, spread):
    return between(row, max(0.0, 1.0 - spread), 1.0 + spread)

  return ClipAugmentation(
    grayscale=draws[0] < config.grayscale_prob,
    jitter=draws[1] < config.jitter_prob,
    brightness=factor(2, config.brightness),
    contrast=factor(3, config.contrast),
    saturation=factor(4, config.saturation),
    hue=between(5, -config.hue, config.hue),
    blur=draws[6] < config.blur_prob,
    blur_sigma=between(7, config.blur_sigma_min, config.blur_sigma_max),
    # A uniformly random permutation per clip: the ranks of i.i.d. uniforms.
    jitter_order=jnp.argsort(draws[8:12].T, axis=-1).astype(jnp.int32),
  )


def _per_clip(values: jax.Array) -> jax.Array:
  """[B] -> [B, 1, 1, 1, 1] to broadcast over [B, T, H, W, C]."""
  return values.reshape((-1, 1, 1, 1, 1))


def luma(video: jax.Array) -> jax.Array:
  """`[..., 3]` -> `[..., 1]` grayscale with kornia's (0.299, 0.587, 0.114) weights."""
  return jnp.sum(video * jnp.asarray(_LUMA, video.dtype), axis=-1, keepdims=True)


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  """`[..., 3]` RGB in [0, 1] -> HSV with hue in turns [0, 1) (kornia's formula, hue / 2 pi)."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  value = jnp.max(rgb, axis=-1)
  delta = value - jnp.min(rgb, axis=-1)
  saturation = delta / (value + 1e-8)
  safe_delta = jnp.where(delta == 0, 1.0, delta)
  hue = jnp.where(
    (r >= g) & (r >= b),
    (g - b),
    jnp.where(g >= b, (b - r) + 2.0 * safe_delta, (r - g) + 4.0 * safe_delta),
  )
  hue = jnp.mod(hue / safe_delta / 6.0, 1.0)
  return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """Inverse of `rgb_to_hsv` (hue in turns, any real value; it wraps)."""
  hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  sector_position = jnp.mod(hue * 6.0, 6.0)
  sector = jnp.floor(sector_position)
  fraction = sector_position - sector
  p = value * (1.0 - saturation)
  q = value * (1.0 - fraction * saturation)
  t = value * (1.0 - (1.0 - fraction) * saturation)
  sector = sector.astype(jnp.int32)[..., None]
  choices = [
    jnp.stack(c, axis=-1)
    for c in (
      (value, t, p),
      (q, value, p),
      (p, value, t),
      (p, q, value),
      (t, p, value),
      (value, p, q),
    )
  ]
  return jnp.select([sector == i for i in range(6)], choices, choices[0])


def _adjust_brightness(video, factor):
  return jnp.clip(video * _per_clip(factor), 0.0, 1.0)


def _adjust_contrast(video, factor):
  mean = jnp.mean(luma(video), axis=(2, 3, 4), keepdims=True)  # per frame, as kornia per image
  factor = _per_clip(factor)
  return jnp.clip(video * factor + mean * (1.0 - factor), 0.0, 1.0)


def _adjust_saturation(video, factor):
  factor = _per_clip(factor)
  return jnp.clip((1.0 - factor) * luma(video) + factor * video, 0.0, 1.0)


def _adjust_hue(video, shift):
  hsv = rgb_to_hsv(video)
  hsv = hsv.at[..., 0].set(hsv[..., 0] + shift.reshape((-1, 1, 1, 1)))
  return hsv_to_rgb(hsv)


def color_jitter(video: jax.Array, params: ClipAugmentation) -> jax.Array:
  """The four jitter steps in each clip's own order (every step computed, one selected per clip)."""

  def apply_step(position, current):
    candidates = jnp.stack(
      [
        _adjust_brightness(current, params.brightness),
        _adjust_contrast(current, params.contrast),
        _adjust_saturation(current, params.saturation),
        _adjust_hue(current, params.hue),
      ]
    )  # [4, B, T, H, W, C]
    chosen = params.jitter_order[:, position].reshape((1, -1, 1, 1, 1, 1))
    return jnp.take_along_axis(candidates, chosen, axis=0)[0]

  return jax.lax.fori_loop(0, _NUM_JITTER_STEPS, apply_step, video)


def gaussian_weights(sigma: jax.Array, kernel_size: int) -> jax.Array:
  """Normalized 1-D Gaussian taps, `[B]` sigmas -> `[B, kernel_size]` (kornia's `gaussian`)."""
  offsets = jnp.arange(kernel_size, dtype=jnp.float32) - kernel_size // 2
  weights = jnp.exp(-(offsets[None] ** 2) / (2.0 * sigma[:, None] ** 2))
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
  """PyTorch 'reflect' padding index map (edge not repeated), for |overhang| < size."""
  index = np.where(index < 0, -index, index)
  return np.where(index >= size, 2 * (size - 1) - index, index)


def _blur_axis(video: jax.Array, weights: jax.Array, axis: int) -> jax.Array:
  """Correlates axis `axis` (2 or 3) of `[B, T, H, W, C]` with per-clip taps `[B, K]`.

  Written as a per-clip [size, size] banded matrix (taps scattered at reflected source indices)
  applied with one einsum: small to compile and fast on accelerators.
  """
  kernel_size = weights.shape[1]
  radius = kernel_size // 2
  if radius == 0:
    return video
  size = video.shape[axis]
  if radius >= size:
    raise ValueError(f"Blur kernel {kernel_size} is too large for a frame axis of size {size}.")
  rows = np.repeat(np.arange(size), kernel_size)
  taps = np.tile(np.arange(kernel_size), size)
  sources = _reflect(rows + taps - radius, size)
  matrix = jnp.zeros((weights.shape[0], size, size), video.dtype)
  matrix = matrix.at[:, rows, sources].add(weights[:, taps])
  spec = "bij,btjwc->btiwc" if axis == 2 else "bij,bthjc->bthic"
  return jnp.einsum(spec, matrix, video, precision=jax.lax.Precision.HIGHEST)


def gaussian_blur(video: jax.Array, sigma: jax.Array, kernel_fraction: float = 0.1) -> jax.Array:
  """Separable Gaussian blur of `[B, T, H, W, C]` with one sigma per clip, reflect padding."""
  height, width = video.shape[2:4]
  video = _blur_axis(video, gaussian_weights(sigma, blur_kernel_size(height, kernel_fraction)), 2)
  return _blur_axis(video, gaussian_weights(sigma, blur_kernel_size(width, kernel_fraction)), 3)


@functools.partial(jax.jit, static_argnames="config")
def apply_augmentation(
  video: jax.Array, params: ClipAugmentation, config: AugmentationConfig = AugmentationConfig()
) -> jax.Array:
  """Grayscale, color jitter, blur (each where its per-clip flag is set); no normalization.

  Args:
    video: float `[B, T, H, W, 3]` in [0, 1].
    params: from `sample_augmentation` with the same B.
    config: only `blur_kernel_fraction` is read here.

  Returns:
    float `[B, T, H, W, 3]` in [0, 1].
  """
  if video.ndim != 5 or video.shape[-1] != 3:
    raise ValueError(f"augmentation expects video [B, T, H, W, 3], got {video.shape}.")
  if params.grayscale.shape[0] != video.shape[0]:
    raise ValueError(
      f"{params.grayscale.shape[0]} clip parameters for a batch of {video.shape[0]}."
    )
  video = jnp.where(_per_clip(params.grayscale), jnp.broadcast_to(luma(video), video.shape), video)
  video = jnp.where(_per_clip(params.jitter), color_jitter(video, params), video)
  blurred = gaussian_blur(video, params.blur_sigma, config.blur_kernel_fraction)
  return jnp.where(_per_clip(params.blur), blurred, video)


@functools.partial(jax.jit, static_argnames="config")
def augment_video(
  rng: jax.Array, video: jax.Array, config: AugmentationConfig = AugmentationConfig()
) -> jax.Array:
  """Samples per-clip parameters from `rng` and applies them (same on every frame of a clip)."""
  return apply_augmentation(video, sample_augmentation(rng, video.shape[0], config), config)


def normalize(video: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
  """`(video - mean) / std` per channel; the single normalization of training and inference."""
  return (video - jnp.asarray(mean, video.dtype)) / jnp.asarray(std, video.dtype)
