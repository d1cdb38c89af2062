"""Tests for vosjax.models.flow_encoding against a NumPy transcription of cvbase flow2rgb."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.models import flow_encoding


def _reference_wheel() -> np.ndarray:
  """Middlebury wheel written out ramp by ramp, as in cvbase `make_color_wheel`."""
  ry, yg, gc, cb, bm, mr = 15, 6, 4, 11, 13, 6
  columns = [
    (np.ones(ry), np.arange(ry) / ry, np.zeros(ry)),
    (1 - np.arange(yg) / yg, np.ones(yg), np.zeros(yg)),
    (np.zeros(gc), np.ones(gc), np.arange(gc) / gc),
    (np.zeros(cb), 1 - np.arange(cb) / cb, np.ones(cb)),
    (np.arange(bm) / bm, np.zeros(bm), np.ones(bm)),
    (np.ones(mr), np.zeros(mr), 1 - np.arange(mr) / mr),
  ]
  return np.concatenate([np.stack(c, axis=1) for c in columns]).astype(np.float32)


def _reference_flow2rgb(uv: np.ndarray) -> np.ndarray:
  """cvbase flow2rgb on one `[H, W, 2]` (u, v) float32 image, step by step."""
  wheel = _reference_wheel()
  dx = uv[:, :, 0].copy()
  dy = uv[:, :, 1].copy()
  ignore = np.isnan(dx) | np.isnan(dy) | (np.abs(dx) > 1e6) | (np.abs(dy) > 1e6)
  dx[ignore] = 0
  dy[ignore] = 0
  rad = np.sqrt(dx**2 + dy**2)
  if np.any(rad > np.finfo(float).eps):
    dx /= rad.max()
    dy /= rad.max()
  rad = np.sqrt(dx**2 + dy**2)
  angle = np.arctan2(-dy, -dx) / np.pi
  bin_real = (angle + 1) / 2 * (wheel.shape[0] - 1)
  left = np.floor(bin_real).astype(int)
  right = (left + 1) % wheel.shape[0]
  w = (bin_real - left)[..., None]
  img = (1 - w) * wheel[left] + w * wheel[right]
  small = rad <= 1
  img[small] = 1 - rad[small, None] * (1 - img[small])
  img[~small] *= 0.75
  img[ignore] = 0
  return img


def _random_flow(rng, shape, magnitude=5.0):
  return (rng.normal(size=shape) * magnitude).astype(np.float32)


def test_color_wheel_matches_middlebury_ramps():
  wheel = flow_encoding.make_color_wheel()
  assert wheel.shape == (55, 3)
  np.testing.assert_array_equal(wheel, _reference_wheel())
  np.testing.assert_array_equal(wheel[0], [1, 0, 0])  # red
  np.testing.assert_array_equal(wheel[15], [1, 1, 0])  # yellow
  np.testing.assert_array_equal(wheel[21], [0, 1, 0])  # green


def test_flow_to_rgb_matches_reference_per_image():
  rng = np.random.default_rng(0)
  flow = _random_flow(rng, (2, 3, 16, 20, 2))  # [B, T, H, W, (dy, dx)]
  flow[0, 1] *= 40.0  # per-image normalisation: magnitudes differ between images
  flow[1, 2, 3, 4] = [np.nan, 1.0]  # unknown pixels
  flow[1, 2, 5, 6] = [0.0, 2e6]
  flow[1, 0] = 0.0  # all-zero image: no normalisation, all white
  out = np.asarray(jax.jit(flow_encoding.flow_to_rgb)(flow))
  assert out.shape == (2, 3, 16, 20, 3)
  for b in range(2):
    for t in range(3):
      ref = _reference_flow2rgb(flow[b, t, ..., ::-1].copy())
      np.testing.assert_allclose(out[b, t], ref, atol=1e-5)
  np.testing.assert_array_equal(out[1, 2, 3, 4], 0.0)
  np.testing.assert_array_equal(out[1, 2, 5, 6], 0.0)
  np.testing.assert_array_equal(out[1, 0], 1.0)


def test_max_magnitude_region_takes_the_same_branch_as_cvbase():
  # A 40x40 object moving with the largest flow: every object pixel has the maximum
  # magnitude, so the normalised magnitude must round exactly as in numpy (float32), or the
  # whole object flips between `colour` and `0.75 * colour`.
  flow = np.zeros((1, 128, 224, 2), np.float32)
  flow[0] += np.float32([0.34, -0.61])
  flow[0, 20:60, 150:190] = np.float32([7.273796, -4.8883824])
  out = np.asarray(jax.jit(flow_encoding.flow_to_rgb)(flow))[0]
  np.testing.assert_allclose(out, _reference_flow2rgb(flow[0, ..., ::-1].copy()), atol=1e-5)


def test_flow_direction_colours():
  # Pure leftward motion (dx < 0) has angle 0 -> middle of the wheel (bin 27, cyan-blue),
  # and at full magnitude the colour itself shows; half magnitude is halfway to white.
  flow = np.zeros((1, 1, 2, 2), np.float32)
  flow[0, 0, 0] = [0.0, -2.0]
  flow[0, 0, 1] = [0.0, -1.0]
  out = np.asarray(flow_encoding.flow_to_rgb(flow))[0, 0]
  wheel = flow_encoding.make_color_wheel()
  np.testing.assert_allclose(out[0], wheel[27], atol=1e-6)
  np.testing.assert_allclose(out[1], 1 - 0.5 * (1 - wheel[27]), atol=1e-6)


def test_encode_flow_rgb_range_and_scale_invariance():
  rng = np.random.default_rng(1)
  flow = _random_flow(rng, (3, 12, 12, 2))
  encoded = np.asarray(flow_encoding.encode_flow_rgb(flow))
  assert encoded.shape == (3, 12, 12, 3)
  assert encoded.min() >= -1.0 and encoded.max() <= 1.0
  np.testing.assert_allclose(
    encoded, np.clip((np.asarray(flow_encoding.flow_to_rgb(flow)) - 0.5) * 2, -1, 1), atol=1e-7
  )
  # Per-image max normalisation makes the encoding invariant to a global flow scale.
  scaled = np.asarray(flow_encoding.encode_flow_rgb(flow * 7.0))
  np.testing.assert_allclose(scaled, encoded, atol=2e-5)


def test_encode_flow_raw_swaps_to_uv():
  flow = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)
  raw = np.asarray(flow_encoding.encode_flow_raw(jnp.asarray(flow), scale=4.0))
  np.testing.assert_allclose(raw[..., 0], flow[..., 1] / 4.0)
  np.testing.assert_allclose(raw[..., 1], flow[..., 0] / 4.0)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match=r"\[\.\.\., H, W, 2\]"):
    flow_encoding.flow_to_rgb(jnp.zeros((4, 4, 3)))
  with pytest.raises(ValueError, match="scale"):
    flow_encoding.encode_flow_raw(jnp.zeros((4, 4, 2)), scale=0.0)
