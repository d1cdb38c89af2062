"""Symmetric KL between attention rows, and the level-1 smoothing of the clustering, pruned.

Used by `vosjax.methods.betrayed.clustering` (see its docstring for the algorithm). KLsym(p, q) =
sum p log p + sum q log q - p.log q - q.log p like the official code (no epsilon); log(x) is taken
as log(max(x, float32 tiny)), so 0 * log 0 gives 0 instead of NaN; for strictly positive inputs of
normal magnitude (float32 softmax outputs in practice) this is the official value.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vosjax.methods.betrayed import keyframe_attention as kfa

# Level-1 smoothing (`smooth_rows`): rows per tile, coarse bins of the distance lower bound, and the
# margin added to tau before the bound rules a pair out (float32 rounding of either distance is
# ~1e-5 at these magnitudes).
DEFAULT_TILE = 192
_COARSE_BINS = 64
_BOUND_MARGIN = 1e-2
_PIVOT_STRIDE = 8  # rows are sorted by their first candidate among every 8th row


class _Tile(NamedTuple):
  """One tile of `smooth_rows`' sorted rows."""

  rows: jax.Array  # [tile, K']
  logs: jax.Array  # [tile, K'] safe_log(rows)
  entropy: jax.Array  # [tile] sum p log p
  valid: jax.Array  # bool [tile]


def safe_log(x: jax.Array) -> jax.Array:
  return jnp.log(jnp.maximum(x, jnp.finfo(jnp.float32).tiny))


def symmetric_kl(
  p: jax.Array, q: jax.Array, precision: kfa.Precision = jax.lax.Precision.HIGHEST
) -> jax.Array:
  """Symmetric KL between rows: [n, m] = KL(p_n || q_m) + KL(q_m || p_n).

  Args:
    p: [n, C] distributions.
    q: [m, C] distributions.
    precision: matmul precision.

  Returns:
    float32 [n, m].
  """
  log_p, log_q = safe_log(p), safe_log(q)
  neg_entropy_p = jnp.sum(p * log_p, axis=-1)
  neg_entropy_q = jnp.sum(q * log_q, axis=-1)
  cross = jnp.matmul(p, log_q.T, precision=precision) + jnp.matmul(log_p, q.T, precision=precision)
  return neg_entropy_p[:, None] + neg_entropy_q[None, :] - cross


def coarse_grain(sample: jax.Array, bins: int) -> jax.Array:
  """Sums of max(sample, tiny) over `bins` contiguous groups of columns: [M, C] -> [M, bins].

  By the log-sum inequality, KLsym of these coarse rows (`symmetric_kl` computes it for positive
  rows, normalised or not) never exceeds the clamped-log KLsym of the rows themselves, which is what
  `symmetric_kl` computes: a lower bound that costs bins / C of the exact distance. (Padding columns
  hold tiny in both rows of a pair, so they add nothing to the exact distance.)
  """
  num_rows, num_columns = sample.shape
  bins = min(bins, num_columns)
  group = -(-num_columns // bins)
  tiny = jnp.finfo(jnp.float32).tiny
  clamped = jnp.pad(
    jnp.maximum(sample, tiny), ((0, 0), (0, bins * group - num_columns)), constant_values=tiny
  )
  return clamped.reshape(num_rows, bins, group).sum(-1)


def smooth_rows(
  sample: jax.Array,
  row_valid: jax.Array,
  tau: jax.Array,
  precision: kfa.Precision,
  tile: int = DEFAULT_TILE,
  bins: int = _COARSE_BINS,
) -> jax.Array:
  """The official smoothing s~_i = normalize(sum_{j valid: KLsym(s_i, s_j) <= tau} s_j), pruned.

  The dense version costs two [M, M, K'] products (all distances, then the 0/1 matrix times the
  rows). Here rows are sorted by the first of every 8th row that the coarse lower bound
  (`coarse_grain`) does not rule out (the rows of one compact group become neighbours) and cut into
  tiles of `tile` rows; a pair of tiles is computed (its distances and its part of the sums, both
  directions at once) only if the bound of some pair in it is within tau + a rounding margin; for
  every other pair the exact distance is provably > tau. The loop runs over row tiles, then over
  the needed tiles right of each (the row tile's log is taken once, a column tile's once per pair,
  outside the products; the per-row sum p log p once for all). With every pair needed (nearly
  uniform rows: a random-weights backbone) this costs about the dense products' FLOPs and time
  without their [M, M] matrices (docs/performance.md, "Clustering").
  The result is the dense one up to float summation order. Peak memory: the sorted rows and the
  sums, [M, K'] each.

  Args:
    sample: [M, K'] attention rows.
    row_valid: bool [M]; invalid rows are never summed, and their output rows are uniform.
    tau: threshold.
    precision: matmul precision.
    tile: rows per tile (static; only speed depends on it).
    bins: coarse bins of the bound (static).

  Returns:
    float32 [M, K'] smoothed rows.
  """
  num_rows = sample.shape[0]
  tile = min(tile, num_rows)
  num_tiles = -(-num_rows // tile)
  padded = num_tiles * tile
  coarse = coarse_grain(sample, bins)
  log_coarse = safe_log(coarse)
  coarse_entropy = jnp.sum(coarse * log_coarse, axis=-1)
  stacked = jnp.concatenate([coarse, log_coarse], axis=1)  # [M, 2 bins]
  swapped = jnp.concatenate([log_coarse, coarse], axis=1)

  def candidates(rows, columns):
    """Pairs (rows x columns) that the bound does not rule out: one product, no transpose."""
    cross = jnp.matmul(stacked[rows], swapped[columns].T, precision=precision)
    bound = coarse_entropy[rows][:, None] + coarse_entropy[columns][None, :] - cross
    return bound <= tau + _BOUND_MARGIN

  # Rows sorted by the first of every `_PIVOT_STRIDE`-th row that is a candidate to them, so the
  # rows of one compact group become neighbours ([M, M / stride] bounds for this).
  pivots = np.arange(0, num_rows, _PIVOT_STRIDE)
  pivot_valid = row_valid[pivots]
  first_pivot = jnp.min(
    jnp.where(
      candidates(np.arange(num_rows), pivots) & pivot_valid[None, :],
      jnp.arange(len(pivots)),
      len(pivots),
    ),
    axis=-1,
  )
  order = jnp.argsort(jnp.where(row_valid, first_pivot, len(pivots) + 1), stable=True)
  # Padding slots (past num_rows) hold copies of the last row, invalid: never summed.
  order = jnp.concatenate([order, jnp.full((padded - num_rows,), num_rows - 1, order.dtype)])
  slot_valid = (jnp.arange(padded) < num_rows) & row_valid[order]
  candidate = candidates(order, order) & slot_valid[:, None] & slot_valid[None, :]
  tile_needed = candidate.reshape(num_tiles, tile, num_tiles, tile).any(axis=(1, 3))
  # A sorted copy, so that a tile is a contiguous slice (gathers and scatters per tile cost more);
  # materialised once rather than fused into every tile's reads.
  rows = jax.lax.optimization_barrier(sample[order])
  row_entropy = jnp.sum(rows * safe_log(rows), axis=-1)  # [padded], sum p log p
  tile_index = jnp.arange(num_tiles)

  def tile_of(index) -> _Tile:
    start = index * tile
    tile_rows = jax.lax.dynamic_slice_in_dim(rows, start, tile)
    # Materialised: fused into the products below, XLA takes the log again per GEMM block.
    log_rows = jax.lax.optimization_barrier(safe_log(tile_rows))
    return _Tile(
      tile_rows,
      log_rows,
      jax.lax.dynamic_slice_in_dim(row_entropy, start, tile),
      jax.lax.dynamic_slice_in_dim(slot_valid, start, tile),
    )

  def close_pairs(a: _Tile, b: _Tile) -> jax.Array:
    """[tile, tile] KLsym(a_i, b_j) <= tau."""
    distance = (
      a.entropy[:, None]
      + b.entropy[None, :]
      - jnp.matmul(a.rows, b.logs.T, precision=precision)
      - jnp.matmul(a.logs, b.rows.T, precision=precision)
    )
    return distance <= tau

  def weighted_sum(close: jax.Array, other: _Tile) -> jax.Array:
    """[tile, K'] sums of the valid rows of `other` that are close."""
    return jnp.matmul(
      (close & other.valid[None, :]).astype(jnp.float32), other.rows, precision=precision
    )

  def add_row_tile(a_index, sums):
    """Sums of row tile a: its diagonal pair, then each needed tile b right of it; the distances
    of (a, b) also give b's sums from a."""
    a = tile_of(a_index)
    a_sums = weighted_sum(close_pairs(a, a), a)
    right = tile_needed[a_index] & (tile_index > a_index)
    right_tiles = jnp.argsort(~right, stable=True)

    def add_column_tile(j, state):
      a_sums, sums = state
      b_index = right_tiles[j]
      b = tile_of(b_index)
      close = close_pairs(a, b)
      a_sums = a_sums + weighted_sum(close, b)
      # Materialised transpose: folded into the product, XLA runs a slower GEMM.
      close_t = jax.lax.optimization_barrier(close.T)
      start = b_index * tile
      b_sums = jax.lax.dynamic_slice_in_dim(sums, start, tile) + weighted_sum(close_t, a)
      return a_sums, jax.lax.dynamic_update_slice_in_dim(sums, b_sums, start, axis=0)

    a_sums, sums = jax.lax.fori_loop(0, jnp.sum(right), add_column_tile, (a_sums, sums))
    start = a_index * tile
    return jax.lax.dynamic_update_slice_in_dim(
      sums, jax.lax.dynamic_slice_in_dim(sums, start, tile) + a_sums, start, axis=0
    )

  # Invalid rows are sorted last: tiles holding only them are skipped.
  valid_tiles = (jnp.sum(slot_valid) + tile - 1) // tile
  sums = jax.lax.fori_loop(0, valid_tiles, add_row_tile, jnp.zeros_like(rows))
  sums = sums[jnp.argsort(order[:num_rows])]  # unsorted; order is a permutation there
  # Invalid rows have no sums: uniform rows keep them finite (they are never grouped).
  return jnp.where(
    row_valid[:, None], sums / jnp.sum(sums, axis=-1, keepdims=True), 1.0 / sample.shape[1]
  )
