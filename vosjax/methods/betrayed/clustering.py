"""Hierarchical clustering of sparse key-frame attention (Betrayed by Attention inference),
jit-compiled.

A faithful, fixed-shape version of `src/eval_oneshot.py::mem_efficient_hierarchical_cluster`
(shvdiwnkozbw/SSL-UVOS; see docs/betrayed.md, "Inference: key frames and hierarchical
clustering"):

1. Level 1, per window of 3 query frames with attention rows S
   (`vosjax.methods.betrayed.keyframe_attention`): D = KLsym(S, S); smooth s~_i = normalize(sum_{j:
   D_ij <= tau} s_j); D' = KLsym(s~, s~); greedy grouping in index order (each still unassigned row
   i opens the group {j unassigned: D'_ij <= tau}); the group means are the window's centroids.
   Centroids of all windows are concatenated in order.
2. Higher levels: greedy grouping of the centroids (same tau, mean of members) until the count stops
   changing.
3. Assignment: every token goes to the centroid with the smallest KLsym (attention recomputed per
   window). Besides the final level we assign to the centroids of every level (parts -> objects).

Fixed shapes: centroid sets live in [max_clusters, K'] buffers with a count; window groups in
[max_window_clusters, K']; the hierarchy keeps at most `max_levels` levels. Exceeding a capacity
sets a flag (`ClusterResult.overflow`; the extra groups are dropped, the extra levels not merged)
instead of failing silently, and the grouping still counts the groups it could not keep
(`ClusterResult.window_clusters_needed`, `clusters_needed`), so one re-run with those capacities
gives the official result (`vosjax.methods.betrayed.grown_config`, used by
`core.sharding.jit_predict`). Greedy grouping is a `lax.while_loop` that jumps to the first
unassigned row, which is the row the official loop over i in index order would process next, so it
runs once per group rather than per row, and it computes only those rows of D' (the official code
builds all of D'). D and the smoothing (two [M, M, K'] products if dense) are computed only on the
tiles of row pairs that a cheap lower bound of KLsym (coarse-grained rows, log-sum inequality)
cannot rule out (`smoothing.smooth_rows`; about a third of the pairs on planted ViT-S/8 inputs); the
final assignment compares chunks of 128 centroids, the rest in chunks of 32, so a level of a few
clusters costs little.

Numerics: KLsym(p, q) = sum p log p + sum q log q - p.log q - q.log p like the official code (no
epsilon). log(x) is taken as log(max(x, float32 tiny)), so 0 * log 0 gives 0 instead of NaN; for
strictly positive inputs of normal magnitude (float32 softmax outputs in practice) this is the
official value. All products run at `precision` (HIGHEST by default: TPU/GPU defaults round float32
matmuls to bf16/tf32, which would move distances across tau).
"""

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vosjax.methods.betrayed import keyframe_attention as kfa
from vosjax.methods.betrayed import smoothing

# Official thresholds: 1.0 (multi-object, code default), 1.6 (single-object, paper appendix).
TAU_MULTI_OBJECT = 1.0
TAU_SINGLE_OBJECT = 1.6
symmetric_kl = smoothing.symmetric_kl  # KLsym between rows, [n, m]
# Centroids compared per step in the final assignment (bounds the [chunk, window * N] distance
# block): full chunks, then small ones for the rest (final levels hold a few centroids).
_ASSIGN_CHUNK = 128
_ASSIGN_SMALL_CHUNK = 32


class ClusterResult(NamedTuple):
  """Output of `hierarchical_cluster` (for one video; vmap adds a leading batch axis to each field).

  Attributes:
    labels: int32 [T, h, w], index of the nearest final centroid (the official segmentation; cluster
      i is the i-th row of the official `final_mask`).
    levels: int32 [max_levels, T, h, w], assignment to the centroids of each level, level 0 = window
      centroids; levels >= num_levels repeat the final level, so levels[-1] == labels.
    num_clusters: int32 [max_levels], clusters per level (repeating the final count after the last).
    num_levels: int32 [], number of distinct levels (>= 1).
    window_overflow: bool [], some window had more than `max_window_clusters` groups (the groups
      past the capacity are dropped from the centroids; their rows are still assigned at the end).
    cluster_overflow: bool [], the windows together kept more than `max_clusters` centroids (the
      later ones are dropped).
    level_overflow: bool [], the hierarchy would merge again after `max_levels` levels (the last
      kept level is returned as final).
    window_clusters_needed: int32 [], the most groups any window formed (dropped ones included):
      the `max_window_clusters` that suffices.
    clusters_needed: int32 [], the groups of all windows together: the `max_clusters` that suffices
      (once no window overflows).
    When any flag is set (`overflow`), results are approximate: raise the capacity.
  """

  labels: jax.Array
  levels: jax.Array
  num_clusters: jax.Array
  num_levels: jax.Array
  window_overflow: jax.Array
  cluster_overflow: jax.Array
  level_overflow: jax.Array
  window_clusters_needed: jax.Array
  clusters_needed: jax.Array

  @property
  def overflow(self) -> jax.Array:
    """bool [] (or [B] under vmap): some capacity was exceeded."""
    return self.window_overflow | self.cluster_overflow | self.level_overflow


def greedy_group(
  distance_row: Callable[[jax.Array], jax.Array], valid: jax.Array, tau: jax.Array, max_groups: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Official greedy grouping in index order, with fixed shapes.

  For i = 0, 1, ...: skip i if assigned; else open group G = {j unassigned: distance[i, j] <= tau}
  (plus i itself, which the official code gets from distance[i, i] = 0), mark G assigned.

  Only the rows that open a group are ever read, so the distance matrix is given as a function of
  the row index and rows are computed on demand (tens of rows instead of an [M, M] product).
  Grouping always runs to the end; groups past the capacity are formed (so the later groups are the
  official ones) and counted, but their rows get id -1.

  Args:
    distance_row: i (int32 []) -> distance[i] [M].
    valid: bool [M]; invalid rows are never grouped nor members.
    tau: scalar threshold.
    max_groups: static capacity: the first `max_groups` groups get ids.

  Returns:
    (group_ids int32 [M] with -1 for invalid rows and rows of groups past the capacity,
     num_groups int32 [] = every group formed (may exceed `max_groups`),
     overflow bool [] = num_groups > max_groups).
  """
  valid = jnp.asarray(valid, bool)
  num_rows = valid.shape[0]
  row_index = jnp.arange(num_rows)

  def not_done(state):
    assigned, _, _ = state
    return jnp.any(~assigned)

  def open_group(state):
    assigned, group_ids, count = state
    first = jnp.argmax(~assigned)  # first unassigned row = next row the official loop processes
    members = ((distance_row(first) <= tau) & ~assigned) | (row_index == first)
    group_ids = jnp.where(members, jnp.where(count < max_groups, count, -1), group_ids)
    return assigned | members, group_ids, count + 1

  initial = (~valid, jnp.full((num_rows,), -1, jnp.int32), jnp.zeros((), jnp.int32))
  _, group_ids, count = jax.lax.while_loop(not_done, open_group, initial)
  return group_ids, count, count > max_groups


def _self_symmetric_kl_rows(
  p: jax.Array, precision: kfa.Precision
) -> Callable[[jax.Array], jax.Array]:
  """Row function of symmetric_kl(p, p): i -> [n], two matrix-vector products per row."""
  log_p = smoothing.safe_log(p)
  neg_entropy = jnp.sum(p * log_p, axis=-1)

  def row(i):
    cross = jnp.matmul(p, log_p[i], precision=precision) + jnp.matmul(
      log_p, p[i], precision=precision
    )
    return neg_entropy[i] + neg_entropy - cross

  return row


def group_means(x: jax.Array, group_ids: jax.Array, num_groups: int) -> jax.Array:
  """Mean of the rows of each group: [M, C], ids [M] (out of range dropped) -> [num_groups, C]."""
  sums = jax.ops.segment_sum(x, group_ids, num_segments=num_groups)
  sizes = jax.ops.segment_sum(jnp.ones_like(group_ids, jnp.float32), group_ids, num_groups)
  return sums / jnp.maximum(sizes, 1.0)[:, None]


def _window_centroids(
  sample: jax.Array,
  row_valid: jax.Array,
  tau: jax.Array,
  max_groups: int,
  precision: kfa.Precision,
  tile: int = smoothing.DEFAULT_TILE,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Level 1 of one window: smoothing then greedy grouping of attention rows.

  Args:
    sample: [M, K'] attention rows of the window (M = window * N).
    row_valid: bool [M], False for rows of padded frames.

  Returns:
    (centroids [max_groups, K'] (the first min(count, max_groups) valid), count int32 [] of groups
     formed, overflow bool []).
  """
  smoothed = smoothing.smooth_rows(sample, row_valid, tau, precision, tile)
  group_ids, count, overflow = greedy_group(
    _self_symmetric_kl_rows(smoothed, precision), row_valid, tau, max_groups
  )
  return group_means(smoothed, group_ids, max_groups), count, overflow


def row_statistics(sample: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(log rows [M, C], sum p log p [M]) of distributions [M, C], as `nearest_centroid` uses them."""
  log_sample = smoothing.safe_log(sample)
  return log_sample, jnp.sum(sample * log_sample, axis=-1)


def nearest_centroid(
  sample: jax.Array,
  centroids: jax.Array,
  count: jax.Array,
  precision: kfa.Precision = jax.lax.Precision.HIGHEST,
  chunk: int = _ASSIGN_CHUNK,
  small_chunk: int = _ASSIGN_SMALL_CHUNK,
  statistics: Optional[tuple[jax.Array, jax.Array]] = None,
) -> jax.Array:
  """Index of the centroid with the smallest KLsym for each row, first index on ties (like argmin).

  Only the first `count` centroids are valid; they are compared in chunks of `chunk`, the rest in
  chunks of `small_chunk`, so the cost follows `count`, not the buffer size (a chunk costs a pass
  over the rows, however few centroids it holds).

  Args:
    sample: [M, K'] attention rows.
    centroids: [Kmax, K'] buffer.
    count: int32 [], number of valid centroids (>= 1).
    precision: matmul precision.
    chunk: centroids per step while at least that many remain (static).
    small_chunk: centroids per step for the remainder (static).
    statistics: `row_statistics(sample)` when the caller already has it (several levels).

  Returns:
    int32 [M].
  """
  capacity = centroids.shape[0]
  chunk = min(chunk, capacity)
  small_chunk = min(small_chunk, chunk)
  log_sample, neg_entropy_sample = row_statistics(sample) if statistics is None else statistics

  def compare(size, first):
    def compare_chunk(c, best):
      best_distance, best_index = best
      # The last chunk may overlap earlier ones: equal distances never replace (first index wins).
      start = jnp.minimum(first + c * size, capacity - size)
      block = jax.lax.dynamic_slice_in_dim(centroids, start, size)
      log_block = smoothing.safe_log(block)
      distance = (
        jnp.sum(block * log_block, axis=-1)[:, None]
        + neg_entropy_sample[None, :]
        - jnp.matmul(block, log_sample.T, precision=precision)
        - jnp.matmul(log_block, sample.T, precision=precision)
      )  # [size, M]
      index = start + jnp.arange(size)
      distance = jnp.where((index < count)[:, None], distance, jnp.inf)
      chunk_best = jnp.argmin(distance, axis=0)
      chunk_distance = jnp.min(distance, axis=0)
      better = chunk_distance < best_distance
      return (
        jnp.where(better, chunk_distance, best_distance),
        jnp.where(better, index[chunk_best], best_index),
      )

    return compare_chunk

  num_rows = sample.shape[0]
  best = (jnp.full((num_rows,), jnp.inf, jnp.float32), jnp.zeros((num_rows,), jnp.int32))
  num_chunks = count // chunk
  best = jax.lax.fori_loop(0, num_chunks, compare(chunk, 0), best)
  done = num_chunks * chunk
  num_small = (count - done + small_chunk - 1) // small_chunk
  return jax.lax.fori_loop(0, num_small, compare(small_chunk, done), best)[1]


@functools.partial(
  jax.jit,
  static_argnames=(
    "grid_shape",
    "ratio",
    "window",
    "scale",
    "max_window_clusters",
    "max_clusters",
    "max_levels",
    "precision",
    "tile",
  ),
)
def hierarchical_cluster(
  q: jax.Array,
  k: jax.Array,
  *,
  grid_shape: tuple[int, int],
  tau: float = TAU_MULTI_OBJECT,
  ratio: int = 10,
  window: int = kfa.DEFAULT_WINDOW,
  scale: Optional[float] = None,
  max_window_clusters: int = 128,
  max_clusters: int = 1024,
  max_levels: int = 16,
  precision: kfa.Precision = jax.lax.Precision.HIGHEST,
  tile: int = smoothing.DEFAULT_TILE,
) -> ClusterResult:
  """Segments a video by hierarchical clustering of its sparse key-frame attention.

  One compilation per (T, N, heads, head_dim, static arguments); tau is traced. Works under vmap
  (batch of videos of equal size), but a batch is faster through lax.map: under vmap every
  data-dependent loop runs the longest trip count of the batch with a select over its whole carry.

  Args:
    q: [T, N, heads, head_dim] queries of the spatio-temporal block (N = h * w).
    k: [T, N, heads, head_dim] keys.
    grid_shape: (h, w) token grid, h * w == N.
    tau: distance threshold (1.0 multi-object, 1.6 single-object).
    ratio: key-frame sparsity (key frames 0, ratio, ...; frame 0 alone if T < ratio).
    window: query frames per level-1 window (official 3).
    scale: attention logit scale, default head_dim ** -0.5.
    max_window_clusters: capacity of level-1 groups per window.
    max_clusters: capacity of the concatenated window centroids (and so of every level).
    max_levels: capacity of hierarchy levels (level 0 = window centroids).
    precision: matmul precision.
    tile: rows per tile of the pruned level-1 smoothing (`smooth_rows`); only speed depends on it.

  Returns:
    ClusterResult (shapes in its docstring).
  """
  kfa.check_query_key(q, k)
  num_frames, num_tokens, _, head_dim = q.shape
  if len(grid_shape) != 2 or grid_shape[0] * grid_shape[1] != num_tokens:
    raise ValueError(
      f"grid_shape {grid_shape} does not match N = {num_tokens} tokens of q {q.shape}"
    )
  for name, value in (
    ("window", window),
    ("max_window_clusters", max_window_clusters),
    ("max_clusters", max_clusters),
    ("max_levels", max_levels),
  ):
    if value < 1:
      raise ValueError(f"{name} must be >= 1, got {value}")
  scale = head_dim**-0.5 if scale is None else scale
  tau = jnp.asarray(tau, jnp.float32)
  key_tokens = kfa.gather_key_tokens(k, ratio)  # [heads, K', head_dim]; validates ratio
  windows, frame_valid = kfa.pad_to_windows(q, window)
  num_keys = key_tokens.shape[1]

  def attention(q_window):
    return kfa.window_attention(q_window, key_tokens, scale, precision)

  # Level 1: window centroids, appended in window order to one buffer.
  def add_window(carry, inputs):
    buffer, kept_total, most_in_window, all_windows = carry
    q_window, valid_frames = inputs
    row_valid = jnp.repeat(valid_frames, num_tokens)
    centroids, count, _ = _window_centroids(
      attention(q_window), row_valid, tau, max_window_clusters, precision, tile
    )
    kept = jnp.minimum(count, max_window_clusters)
    slot = jnp.arange(max_window_clusters)
    slot = jnp.where(slot < kept, kept_total + slot, max_clusters)  # out of range -> dropped
    buffer = buffer.at[slot].set(centroids, mode="drop")
    return (
      buffer,
      kept_total + kept,
      jnp.maximum(most_in_window, count),
      all_windows + count,
    ), None

  zero = jnp.zeros((), jnp.int32)
  initial = (jnp.zeros((max_clusters, num_keys), jnp.float32), zero, zero, zero)
  (level_one, kept_total, window_clusters_needed, clusters_needed), _ = jax.lax.scan(
    add_window, initial, (windows, frame_valid)
  )
  window_overflow = window_clusters_needed > max_window_clusters
  cluster_overflow = kept_total > max_clusters
  level_one_count = jnp.minimum(kept_total, max_clusters)

  # Higher levels: regroup until the count stops changing. parents[l] maps level-l clusters to
  # level l+1; level centroids are recomputed from it in the assignment pass instead of being
  # stored.
  cluster_index = jnp.arange(max_clusters)

  def merge_level(state):
    centroids, level, counts, parents, done, overflow = state
    count = counts[level]
    group_ids, new_count, _ = greedy_group(
      _self_symmetric_kl_rows(centroids, precision), cluster_index < count, tau, max_clusters
    )
    merged = new_count < count
    has_room = level + 1 < max_levels
    record = merged & has_room
    centroids = jnp.where(record, group_means(centroids, group_ids, max_clusters), centroids)
    counts = counts.at[level + 1].set(new_count, mode="drop")
    parents = jnp.where(record, parents.at[level].set(group_ids), parents)
    return (
      centroids,
      level + record.astype(jnp.int32),
      counts,
      parents,
      ~record,
      overflow | (merged & ~has_room),
    )

  counts = jnp.zeros((max_levels,), jnp.int32).at[0].set(level_one_count)
  parents = jnp.zeros((max_levels, max_clusters), jnp.int32)
  _, last_level, counts, parents, _, level_overflow = jax.lax.while_loop(
    lambda state: ~state[4],
    merge_level,
    (
      level_one,
      jnp.zeros((), jnp.int32),
      counts,
      parents,
      jnp.zeros((), bool),
      jnp.zeros((), bool),
    ),
  )
  num_levels = last_level + 1

  # Assignment of every token at every level, window by window.
  def assign_window(q_window):
    sample = attention(q_window)
    statistics = row_statistics(sample)  # once for all levels

    def assign_level(level, state):
      centroids, labels = state
      labels = labels.at[level].set(
        nearest_centroid(sample, centroids, counts[level], precision, statistics=statistics)
      )
      return group_means(centroids, parents[level], max_clusters), labels

    labels = jnp.zeros((max_levels, sample.shape[0]), jnp.int32)
    return jax.lax.fori_loop(0, num_levels, assign_level, (level_one, labels))[1]

  levels = jax.lax.map(assign_window, windows)  # [n_win, L, window * N]
  levels = jnp.swapaxes(levels, 0, 1).reshape(max_levels, -1, *grid_shape)[:, :num_frames]
  last = jnp.minimum(jnp.arange(max_levels), last_level)
  levels = levels[last]
  counts = counts[last]
  return ClusterResult(
    labels=levels[-1],
    levels=levels,
    num_clusters=counts,
    num_levels=num_levels,
    window_overflow=window_overflow,
    cluster_overflow=cluster_overflow,
    level_overflow=level_overflow,
    window_clusters_needed=window_clusters_needed,
    clusters_needed=clusters_needed,
  )


def upsample_labels(labels: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Nearest-neighbour upsampling of label maps, like torch F.interpolate(mode='nearest').

  The official post-processing upsamples one-hot masks with the default nearest mode (then
  thresholds at 0.3, a no-op for nearest); upsampling the label map picks the same source pixels:
  source index = min(floor(dst * float32(in / out)), in - 1).

  Args:
    labels: [..., h, w] integer label maps.
    size: (H, W) output size.

  Returns:
    [..., H, W] same dtype.
  """
  height, width = labels.shape[-2:]

  def source_index(in_size: int, out_size: int) -> np.ndarray:
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, in_size - 1)

  rows = source_index(height, size[0])
  cols = source_index(width, size[1])
  return labels[..., rows[:, None], cols[None, :]]
