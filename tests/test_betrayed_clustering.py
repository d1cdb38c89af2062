"""Tests for vosjax.methods.betrayed.keyframe_attention and .clustering against a NumPy
transcription."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.methods.betrayed import clustering
from vosjax.methods.betrayed import keyframe_attention as kfa
from vosjax.methods.betrayed import smoothing
from vosjax.benchmarks import reference_clustering as reference

# Small planted videos: 7 frames (a partial last window), 4 x 6 tokens, 4 heads of 8.
FRAMES, GRID, HEADS, HEAD_DIM = 7, (4, 6), 4, 8
TOKENS = GRID[0] * GRID[1]
SMALL_CAPACITY = dict(max_window_clusters=32, max_clusters=64, max_levels=6)


def planted(seed: int, frames: int = FRAMES, objects: int = 4) -> tuple[np.ndarray, np.ndarray]:
  return reference.planted_query_key(
    frames, TOKENS, HEADS, HEAD_DIM, objects, seed, strength=1.0, noise=0.7
  )


def assert_same_assignment(
  labels: np.ndarray,
  expected: np.ndarray,
  centroids: np.ndarray,
  attention: np.ndarray,
  tolerance: float = 1e-4,
) -> None:
  """labels == expected except at float ties: there both picks must be (near-)nearest centroids.

  Window centroids of one object from different windows are near duplicates, so a token can sit at
  distance gaps of ~1e-6 from two of them, below float32 rounding of the two implementations.
  """
  labels, expected = labels.reshape(-1), expected.reshape(-1)
  differ = np.flatnonzero(labels != expected)
  assert len(differ) <= max(1, 0.01 * len(labels)), f"{len(differ)} of {len(labels)} tokens differ"
  if len(differ):
    rows = attention.reshape(-1, attention.shape[-1])[differ].astype(np.float64)
    distance = reference.kl_distance(centroids.astype(np.float64), rows)  # [K, n]
    columns = np.arange(len(differ))
    gap = distance[labels[differ], columns] - distance[expected[differ], columns]
    assert np.all(np.abs(gap) <= tolerance), f"tokens {differ} differ by distance gaps {gap}"


def test_key_frame_indices_follow_official_and_fall_back_to_frame_zero():
  np.testing.assert_array_equal(kfa.key_frame_indices(25, 10), [0, 10])
  np.testing.assert_array_equal(kfa.key_frame_indices(7, 1), np.arange(7))
  np.testing.assert_array_equal(kfa.key_frame_indices(7, 10), [0])  # official: empty, one cluster
  with pytest.raises(ValueError, match="ratio"):
    kfa.key_frame_indices(7, 0)


@pytest.mark.parametrize("ratio,window", [(1, 3), (3, 3), (10, 2)])
def test_keyframe_attention_matches_numpy(ratio, window):
  q, k = planted(seed=1)
  attention = np.asarray(kfa.keyframe_attention(q, k, ratio=ratio, window=window))
  k_key = k[reference.key_frames(FRAMES, ratio)]
  expected = reference.window_attention(q, k_key, np.float32(HEAD_DIM**-0.5))
  assert attention.shape == (FRAMES, TOKENS, len(k_key) * TOKENS)
  np.testing.assert_allclose(attention.reshape(expected.shape), expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)


def test_symmetric_kl_matches_float64_and_handles_zeros():
  rng = np.random.default_rng(0)
  p = rng.dirichlet(np.ones(6), size=4).astype(np.float32)
  q = rng.dirichlet(np.ones(6), size=5).astype(np.float32)
  expected = np.sum(p[:, None] * np.log(p[:, None] / q[None]), -1) + np.sum(
    q[None] * np.log(q[None] / p[:, None]), -1
  )
  np.testing.assert_allclose(clustering.symmetric_kl(p, q), expected, rtol=1e-4, atol=1e-5)
  with_zero = np.array([[0.5, 0.5, 0.0]], np.float32)  # official: 0 * log 0 = NaN
  distance = np.asarray(clustering.symmetric_kl(with_zero, with_zero))
  assert np.isfinite(distance).all() and abs(distance[0, 0]) < 1e-6


def test_nearest_centroid_in_chunks_matches_argmin():
  rng = np.random.default_rng(2)
  sample = rng.dirichlet(np.ones(12), size=30).astype(np.float32)
  centroids = rng.dirichlet(np.ones(12), size=10).astype(np.float32)
  # Chunks of 4 over 10 slots (the last one overlaps the previous one), then of 3 for the rest.
  for count, small_chunk in ((10, 4), (9, 4), (3, 4), (10, 3), (7, 3)):
    nearest = clustering.nearest_centroid(
      sample, centroids, jnp.int32(count), chunk=4, small_chunk=small_chunk
    )
    expected = np.argmin(
      reference.kl_distance(centroids[:count].astype(np.float64), sample.astype(np.float64)), axis=0
    )
    np.testing.assert_array_equal(nearest, expected)


def plain_greedy(distance, valid, tau):
  group_ids = np.full(len(distance), -1)
  count = 0
  for i in range(len(distance)):
    if not valid[i] or group_ids[i] >= 0:
      continue
    members = (distance[i] <= tau) & (group_ids < 0) & valid
    members[i] = True
    group_ids[members] = count
    count += 1
  return group_ids, count


def test_greedy_group_matches_plain_loop_and_flags_overflow():
  rng = np.random.default_rng(3)
  points = rng.normal(size=(40, 2))
  distance = jnp.asarray(np.linalg.norm(points[:, None] - points[None], axis=-1), jnp.float32)
  valid = rng.random(40) > 0.2
  expected_ids, expected_count = plain_greedy(np.asarray(distance), valid, 1.0)
  group_ids, count, overflow = clustering.greedy_group(
    lambda i: distance[i], valid, 1.0, max_groups=40
  )
  np.testing.assert_array_equal(group_ids, expected_ids)
  assert int(count) == expected_count and not overflow
  # Past the capacity the grouping goes on, so the count is the official one; only 2 get ids.
  group_ids, count, overflow = clustering.greedy_group(
    lambda i: distance[i], valid, 1.0, max_groups=2
  )
  assert int(count) == expected_count > 2 and bool(overflow)
  np.testing.assert_array_equal(group_ids, np.where(expected_ids < 2, expected_ids, -1))


@pytest.mark.parametrize("ratio", [1, 3, 10])  # 10 > FRAMES: frame 0 is the only key frame
def test_hierarchical_cluster_matches_official_transcription(ratio):
  q, k = planted(seed=0)
  k_key = k[reference.key_frames(FRAMES, ratio)]
  attention = reference.window_attention(q, k_key, np.float32(HEAD_DIM**-0.5))
  seen_levels = set()
  for tau in (0.5, 1.0, 1.6):
    expected = reference.hierarchical_cluster(q, k, tau, ratio)
    result = clustering.hierarchical_cluster(
      q, k, grid_shape=GRID, tau=tau, ratio=ratio, **SMALL_CAPACITY
    )
    num_levels = len(expected["num_clusters"])
    seen_levels.add(num_levels)
    assert int(result.num_levels) == num_levels and not result.overflow
    np.testing.assert_array_equal(result.num_clusters[:num_levels], expected["num_clusters"])
    assert result.levels.shape == (6, FRAMES) + GRID and result.labels.shape == (FRAMES,) + GRID
    for level in range(num_levels):
      assert_same_assignment(
        np.asarray(result.levels[level]),
        expected["levels"][level],
        expected["centroids"][level],
        attention,
      )
    np.testing.assert_array_equal(
      result.levels[num_levels:], np.broadcast_to(result.labels, (6 - num_levels, FRAMES) + GRID)
    )
    assert (result.num_clusters[num_levels:] == expected["num_clusters"][-1]).all()
  assert max(seen_levels) >= 2  # the planted inputs exercise real merges


def test_one_compilation_per_video_size():
  backend_compiles = []

  def count_compiles(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
      backend_compiles.append(duration)

  call = functools.partial(
    clustering.hierarchical_cluster, grid_shape=GRID, ratio=3, **SMALL_CAPACITY
  )
  first = jax.block_until_ready(call(*planted(seed=4), tau=1.0))  # compiles unless cached
  entries = clustering.hierarchical_cluster._cache_size()
  jax.monitoring.register_event_duration_secs_listener(count_compiles)
  try:
    second = jax.block_until_ready(call(*planted(seed=5), tau=1.6))  # other data, other tau
  finally:
    jax.monitoring.unregister_event_duration_listener(count_compiles)
  assert clustering.hierarchical_cluster._cache_size() == entries >= 1
  assert not backend_compiles
  assert not np.array_equal(first.labels, second.labels)  # really two different computations


def test_vmap_over_videos_equals_per_video():
  """vmap clusters each video as a call on that video alone: the same counts, flags and capacities,
  and the same labels except at float ties. A batched and an unbatched program need not round alike
  (on an AVX-512 Xeon one token of 1,008 went to the other of two near-equidistant centroids), so
  each differing label must sit at a distance tie of the official centroids of its level."""
  videos = [planted(seed=seed) for seed in (6, 7, 8)]
  q = np.stack([v[0] for v in videos])
  k = np.stack([v[1] for v in videos])
  cluster = functools.partial(
    clustering.hierarchical_cluster, grid_shape=GRID, tau=1.0, ratio=3, **SMALL_CAPACITY
  )
  batched = jax.vmap(cluster)(q, k)
  assert batched.levels.shape == (3, 6, FRAMES) + GRID
  for index, (video_q, video_k) in enumerate(videos):
    single = cluster(video_q, video_k)
    for field, value in zip(single._fields, single):
      if field not in ("labels", "levels"):
        np.testing.assert_array_equal(getattr(batched, field)[index], value, err_msg=field)
    expected = reference.hierarchical_cluster(video_q, video_k, 1.0, 3)
    assert int(single.num_levels) == len(expected["num_clusters"])
    attention = reference.window_attention(
      video_q, video_k[reference.key_frames(FRAMES, 3)], np.float32(HEAD_DIM**-0.5)
    )
    final = len(expected["centroids"]) - 1
    for level in range(single.levels.shape[0]):  # levels past the last repeat the final one
      assert_same_assignment(
        np.asarray(batched.levels[index, level]),
        np.asarray(single.levels[level]),
        expected["centroids"][min(level, final)],
        attention,
      )
    assert_same_assignment(
      np.asarray(batched.labels[index]),
      np.asarray(single.labels),
      expected["centroids"][final],
      attention,
    )


def test_overflow_is_reported_not_silent():
  q, k = planted(seed=0)
  call = functools.partial(clustering.hierarchical_cluster, q, k, grid_shape=GRID, tau=1.0, ratio=3)
  assert not call(**SMALL_CAPACITY).overflow
  # Each window has several groups (1 allowed); 3 windows exceed 2 centroids; those 2 still merge.
  result = call(max_window_clusters=1, max_clusters=2, max_levels=1)
  assert result.window_overflow and result.cluster_overflow and result.level_overflow
  assert result.overflow and int(result.num_clusters[0]) == 2 and int(result.num_levels) == 1
  assert result.labels.shape == (FRAMES,) + GRID and set(np.unique(result.labels)) <= {0, 1}
  # What would have sufficed: the official groups of the largest window, and of all windows.
  expected = reference.hierarchical_cluster(q, k, 1.0, 3)
  assert int(result.clusters_needed) == expected["num_clusters"][0]
  enough = call(
    max_window_clusters=int(result.window_clusters_needed),
    max_clusters=int(result.clusters_needed),
    max_levels=1 + len(expected["num_clusters"]),
  )
  assert not enough.window_overflow and not enough.cluster_overflow
  assert (
    int(result.window_clusters_needed) == int(call(**SMALL_CAPACITY).window_clusters_needed) > 1
  )
  np.testing.assert_array_equal(
    enough.num_clusters[: len(expected["num_clusters"])], expected["num_clusters"]
  )


def test_bad_inputs_raise_clear_errors():
  q, k = planted(seed=0)
  with pytest.raises(ValueError, match="grid_shape"):
    clustering.hierarchical_cluster(q, k, grid_shape=(5, 5), ratio=3)
  with pytest.raises(ValueError, match="same shape"):
    clustering.hierarchical_cluster(q, k[:3], grid_shape=GRID, ratio=3)
  with pytest.raises(ValueError, match="ratio"):
    clustering.hierarchical_cluster(q, k, grid_shape=GRID, ratio=0)


def test_upsample_labels_nearest_like_torch():
  labels = jnp.arange(2 * 3 * 4).reshape(2, 3, 4)
  np.testing.assert_array_equal(
    clustering.upsample_labels(labels, (24, 32)), np.repeat(np.repeat(labels, 8, axis=1), 8, axis=2)
  )
  # Non-integer factor: torch nearest takes floor(dst * float32(in / out)).
  upsampled = clustering.upsample_labels(np.asarray(labels), (7, 10))
  rows = [min(int(np.floor(np.float32(i) * np.float32(3 / 7))), 2) for i in range(7)]
  cols = [min(int(np.floor(np.float32(j) * np.float32(4 / 10))), 3) for j in range(10)]
  np.testing.assert_array_equal(upsampled, np.asarray(labels)[:, rows][:, :, cols])


def dense_smoothing(sample: np.ndarray, row_valid: np.ndarray, tau: float) -> np.ndarray:
  """The official smoothing in float64: normalize(sum of the valid rows within tau)."""
  sample = sample.astype(np.float64)
  close = (reference.kl_distance(sample, sample) <= tau) & row_valid[None, :]
  smoothed = close.astype(np.float64) @ sample
  return smoothed / smoothed.sum(axis=1, keepdims=True)


def test_coarse_bound_never_exceeds_the_distance():
  rng = np.random.default_rng(9)
  rows = rng.dirichlet(np.full(50, 0.3), size=40).astype(np.float32)
  rows[3, :7] = 0.0  # exact zeros: the clamped logs of symmetric_kl
  rows[3] /= rows[3].sum()
  exact = np.asarray(clustering.symmetric_kl(rows, rows))
  for bins in (1, 7, 16, 50):
    coarse = smoothing.coarse_grain(rows, bins)
    assert coarse.shape == (40, min(bins, 50))
    bound = np.asarray(clustering.symmetric_kl(coarse, coarse))
    assert np.all(bound <= exact + 1e-4), bins
  assert np.mean(bound < 0.5 * exact) < 0.5  # and it is not trivially small


@pytest.mark.parametrize("tile", [5, 8, 72])  # pruned tiles (a partial last one), one dense tile
def test_pruned_smoothing_equals_dense(tile):
  q, k = planted(seed=3)
  attention = kfa.keyframe_attention(q, k, ratio=3)[:6].reshape(-1, 2 * TOKENS)  # 2 windows of 3
  row_valid = np.arange(len(attention)) < 5 * TOKENS  # the last frame is padding
  for tau in (0.5, 1.0, 100.0):  # 100: every pair is close, every tile pair is computed
    smoothed = np.asarray(
      smoothing.smooth_rows(
        attention, row_valid, jnp.float32(tau), jax.lax.Precision.HIGHEST, tile=tile, bins=6
      )
    )
    expected = dense_smoothing(np.asarray(attention), row_valid, tau)
    np.testing.assert_allclose(smoothed[row_valid], expected[row_valid], rtol=2e-5, atol=1e-7)
    assert np.all(np.isfinite(smoothed))
    np.testing.assert_allclose(smoothed[~row_valid], 1.0 / attention.shape[1])
    if tau <= 1.0:
      coarse = smoothing.coarse_grain(attention, 6)
      ruled_out = np.asarray(clustering.symmetric_kl(coarse, coarse)) > tau + 0.01
      assert ruled_out.mean() > 0.3  # so small tiles really skip pairs here


@pytest.mark.parametrize("ratio", [1, 3])
def test_small_tiles_match_official_transcription(ratio):
  q, k = planted(seed=0)
  k_key = k[reference.key_frames(FRAMES, ratio)]
  attention = reference.window_attention(q, k_key, np.float32(HEAD_DIM**-0.5))
  expected = reference.hierarchical_cluster(q, k, 1.0, ratio)
  result = clustering.hierarchical_cluster(
    q, k, grid_shape=GRID, tau=1.0, ratio=ratio, tile=8, **SMALL_CAPACITY
  )
  num_levels = len(expected["num_clusters"])
  assert int(result.num_levels) == num_levels and not result.overflow
  np.testing.assert_array_equal(result.num_clusters[:num_levels], expected["num_clusters"])
  for level in range(num_levels):
    assert_same_assignment(
      np.asarray(result.levels[level]),
      expected["levels"][level],
      expected["centroids"][level],
      attention,
    )
