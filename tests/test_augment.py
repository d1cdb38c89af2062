"""Tests for the Betrayed-by-Attention clip augmentation (kornia VideoSequential, same_on_frame)."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from vosjax.data import augment


def _video(batch=3, frames=3, height=20, width=30, seed=0):
  return (
    np.random.default_rng(seed).uniform(size=(batch, frames, height, width, 3)).astype(np.float32)
  )


def _fixed_params(batch, **overrides):
  params = dict(
    grayscale=np.zeros(batch, bool),
    jitter=np.zeros(batch, bool),
    brightness=np.ones(batch, np.float32),
    contrast=np.ones(batch, np.float32),
    saturation=np.ones(batch, np.float32),
    hue=np.zeros(batch, np.float32),
    jitter_order=np.tile(np.arange(4, dtype=np.int32), (batch, 1)),
    blur=np.zeros(batch, bool),
    blur_sigma=np.ones(batch, np.float32),
  )
  params.update(overrides)
  return augment.ClipAugmentation(**{k: jnp.asarray(v) for k, v in params.items()})


def test_identity_when_probabilities_zero():
  video = _video()
  config = augment.AugmentationConfig(grayscale_prob=0.0, jitter_prob=0.0, blur_prob=0.0)
  out = augment.augment_video(jax.random.key(0), jnp.asarray(video), config)
  np.testing.assert_array_equal(out, video)


def test_same_parameters_on_every_frame():
  video = _video(batch=2, frames=4, seed=1)
  config = augment.AugmentationConfig(grayscale_prob=0.5, jitter_prob=1.0, blur_prob=1.0)
  params = augment.sample_augmentation(jax.random.key(3), 2, config)
  out = np.asarray(augment.apply_augmentation(jnp.asarray(video), params, config))
  for t in range(4):  # each frame alone, as a one-frame clip with the same parameters
    single = augment.apply_augmentation(jnp.asarray(video[:, t : t + 1]), params, config)
    np.testing.assert_allclose(out[:, t], np.asarray(single)[:, 0], atol=1e-6)
  # An identical frame pair stays identical.
  twin = np.repeat(video[:, :1], 2, axis=1)
  twin_out = np.asarray(augment.apply_augmentation(jnp.asarray(twin), params, config))
  np.testing.assert_array_equal(twin_out[:, 0], twin_out[:, 1])


def test_range_and_determinism():
  video = jnp.asarray(_video(batch=8, seed=2))
  config = augment.AugmentationConfig()
  a, b, c = (augment.augment_video(jax.random.key(seed), video, config) for seed in (5, 5, 6))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert float(jnp.min(a)) >= 0.0 and float(jnp.max(a)) <= 1.0 + 1e-6


def test_parameter_ranges():
  params = augment.sample_augmentation(jax.random.key(0), 4000)
  for name, low, high in [
    ("brightness", 0.6, 1.4),
    ("contrast", 0.6, 1.4),
    ("saturation", 0.6, 1.4),
    ("hue", -0.1, 0.1),
    ("blur_sigma", 0.1, 2.0),
  ]:
    values = np.asarray(getattr(params, name))
    assert (
      values.min() >= low
      and values.max() <= high
      and values.max() - values.min() > 0.9 * (high - low)
    ), name
  assert abs(np.mean(params.grayscale) - 0.2) < 0.03
  assert abs(np.mean(params.jitter) - 0.8) < 0.03
  assert abs(np.mean(params.blur) - 0.5) < 0.04
  np.testing.assert_array_equal(
    np.sort(params.jitter_order, axis=1), np.tile(np.arange(4), (4000, 1))
  )


def test_hsv_matches_colorsys():
  pixels = np.random.default_rng(3).uniform(size=(500, 3)).astype(np.float32)
  pixels[:5] = [[0.5, 0.5, 0.5], [0, 0, 0], [1, 0, 0], [0.2, 0.9, 0.2], [0.1, 0.1, 0.8]]
  hsv = np.asarray(augment.rgb_to_hsv(jnp.asarray(pixels)))
  expected = np.array([colorsys.rgb_to_hsv(*p) for p in pixels.astype(np.float64)])
  np.testing.assert_allclose(hsv, expected, atol=1e-5)
  shifted = hsv.copy()
  shifted[:, 0] -= 0.37  # negative hue wraps
  expected_rgb = np.array([colorsys.hsv_to_rgb(h % 1.0, s, v) for h, s, v in shifted])
  np.testing.assert_allclose(augment.hsv_to_rgb(jnp.asarray(shifted)), expected_rgb, atol=1e-5)


def _reference_jitter(frame, brightness, contrast, saturation, hue, order):
  """kornia ColorJitter on one [H, W, 3] float64 frame (PIL-like primitives)."""
  luma = lambda x: x @ np.array([0.299, 0.587, 0.114])
  for step in order:
    if step == 0:
      frame = np.clip(frame * brightness, 0, 1)
    elif step == 1:
      frame = np.clip(frame * contrast + luma(frame).mean() * (1 - contrast), 0, 1)
    elif step == 2:
      frame = np.clip((1 - saturation) * luma(frame)[..., None] + saturation * frame, 0, 1)
    else:
      flat = frame.reshape(-1, 3)
      hsv = [colorsys.rgb_to_hsv(*p) for p in flat]
      frame = np.array([colorsys.hsv_to_rgb((h + hue) % 1.0, s, v) for h, s, v in hsv]).reshape(
        frame.shape
      )
  return frame


def test_color_jitter_matches_reference():
  video = _video(batch=2, frames=2, height=6, width=7, seed=4)
  orders = np.array([[3, 1, 0, 2], [2, 0, 3, 1]], np.int32)
  factors = dict(
    brightness=np.array([1.3, 0.7]),
    contrast=np.array([0.65, 1.35]),
    saturation=np.array([1.2, 0.6]),
    hue=np.array([0.08, -0.09]),
  )
  params = _fixed_params(
    2,
    jitter=np.ones(2, bool),
    jitter_order=orders,
    **{k: v.astype(np.float32) for k, v in factors.items()},
  )
  out = np.asarray(augment.apply_augmentation(jnp.asarray(video), params))
  for b in range(2):
    for t in range(2):
      expected = _reference_jitter(
        video[b, t].astype(np.float64),
        *(factors[k][b] for k in ("brightness", "contrast", "saturation", "hue")),
        orders[b],
      )
      np.testing.assert_allclose(out[b, t], expected, atol=2e-5)


def test_grayscale_and_blur_match_reference():
  video = _video(batch=2, frames=2, height=40, width=60, seed=5)
  params = _fixed_params(
    2,
    grayscale=np.array([True, False]),
    blur=np.array([True, True]),
    blur_sigma=np.array([0.7, 1.9], np.float32),
  )
  out = np.asarray(augment.apply_augmentation(jnp.asarray(video), params))
  assert augment.blur_kernel_size(40) == 5 and augment.blur_kernel_size(60) == 7
  assert augment.blur_kernel_size(192) == 19 and augment.blur_kernel_size(384) == 39
  for b, sigma in enumerate([0.7, 1.9]):
    frames = video[b].astype(np.float64)
    if b == 0:
      frames = np.repeat(frames @ np.array([0.299, 0.587, 0.114])[:, None], 3, axis=-1)
    for axis, size in ((1, 40), (2, 60)):
      k = augment.blur_kernel_size(size)
      taps = np.exp(-((np.arange(k) - k // 2) ** 2) / (2 * sigma**2))
      frames = ndimage.correlate1d(frames, taps / taps.sum(), axis=axis, mode="mirror")
    np.testing.assert_allclose(out[b], frames, atol=1e-5)


def test_normalize_imagenet():
  video = jnp.full((1, 1, 2, 2, 3), 0.5)
  out = np.asarray(augment.normalize(video))
  np.testing.assert_allclose(
    out[0, 0, 0, 0],
    (0.5 - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD),
    rtol=1e-6,
  )


def test_bad_input_and_config_raise():
  with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
    augment.augment_video(jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
  with pytest.raises(ValueError, match="blur_sigma_mx"):
    augment.AugmentationConfig.from_config({"blur_sigma_mx": 1.0})
