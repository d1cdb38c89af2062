"""The median-flow motion baseline against brute-force transcriptions."""

import numpy as np

from vosjax.evaluation import baselines


def _otsu_brute_force(values: np.ndarray, bins: int) -> float:
  """Every histogram cut tried explicitly; the between-class variance of each."""
  hist, edges = np.histogram(values, bins=bins)
  centers = (edges[:-1] + edges[1:]) / 2
  best, best_cut = -1.0, None
  for cut in range(bins):
    w0, w1 = hist[: cut + 1].sum(), hist[cut + 1 :].sum()
    m0 = (hist[: cut + 1] * centers[: cut + 1]).sum() / max(w0, 1)
    m1 = (hist[cut + 1 :] * centers[cut + 1 :]).sum() / max(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    if between > best:
      best, best_cut = between, edges[cut + 1]
  return float(best_cut)


def test_otsu_threshold_matches_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(20):
    values = np.concatenate(
      [
        rng.normal(0, 1, rng.integers(10, 500)),
        rng.normal(rng.uniform(2, 8), 1, rng.integers(10, 500)),
      ]
    )
    # Cuts inside a run of empty bins split the sample identically (float ties): compare splits.
    ours, reference = baselines.otsu_threshold(values, bins=32), _otsu_brute_force(values, 32)
    np.testing.assert_array_equal(values > ours, values > reference)


def _pan_with_square(height, width, camera, motion, box):
  flow = np.broadcast_to(np.asarray(camera, np.float32), (height, width, 2)).copy()
  (r0, r1), (c0, c1) = box
  flow[r0:r1, c0:c1] = np.asarray(camera) + np.asarray(motion)
  truth = np.zeros((height, width), bool)
  truth[r0:r1, c0:c1] = True
  return flow, truth


def test_camera_pan_is_removed_and_the_moving_square_found():
  rng = np.random.default_rng(1)
  flow, truth = _pan_with_square(
    32, 48, camera=(0.7, -0.4), motion=(0.3, 0.2), box=((5, 15), (20, 33))
  )
  flow += rng.normal(0, 0.01, flow.shape).astype(np.float32)
  found = baselines.median_flow_foreground(flow[None])[0]
  np.testing.assert_array_equal(found, truth)


def test_min_motion_scales_with_the_image():
  # 0.25 px of motion: above 0.2% of a 32x32 diagonal (0.09 px), below that of 480x854 (1.96 px).
  small, truth = _pan_with_square(32, 32, (0.0, 0.0), (0.25, 0.0), ((4, 12), (4, 12)))
  assert baselines.median_flow_foreground(small[None])[0].sum() == truth.sum()
  large, _ = _pan_with_square(480, 854, (0.0, 0.0), (0.25, 0.0), ((40, 120), (40, 120)))
  assert not baselines.median_flow_foreground(large[None])[0].any()
  assert baselines.median_flow_foreground(large[None], min_motion=0.1)[0].any()


def test_last_frame_uses_the_reversed_backward_flow():
  forward = np.zeros((3, 16, 16, 2), np.float32)
  backward = np.zeros_like(forward)
  forward[0, 2:6, 2:6] = (1.0, 0.0)
  forward[1, 2:6, 2:6] = (1.0, 0.0)
  backward[2, 8:12, 8:12] = (-1.0, 0.0)  # the last frame has no forward flow (MOVi stores zeros)
  found = baselines.median_flow_foreground(forward, backward)
  assert found[0, 2:6, 2:6].all() and found[0].sum() == 16
  assert found[2, 8:12, 8:12].all() and found[2].sum() == 16
