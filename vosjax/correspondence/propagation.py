"""Label propagation with a blocked, windowed top-k affinity (jitted, static shapes).

Each later frame t takes its soft label map from context frames: the first frame (long-term
memory) and a ring buffer of the `context_frames` most recent propagated frames (short-term
memory). For every query position the affinities to all context positions are computed, only
the top-k over the whole context are kept, and the context labels are averaged with those
weights. Two weightings, one per protocol family:

- `exp_threshold` (facebookresearch/dino `eval_video_segmentation.py`): w = exp(<q, k> / T) times
  the window mask (0 outside), entries below the k-th largest zeroed (ties at the k-th value are
  kept, as `aff[aff < kth] = 0` does, up to EXTRA_TIES of them), renormalised to sum 1.
- `softmax_topk` (CRW test code as SMTC runs it): s = (<q, k> + mask) / T with mask 0 inside the
  window and -1e10 outside, exactly k entries taken (`topk`), softmax over their values.

Windows restrict which context positions a query may see: `square` (|dy| <= r and |dx| <= r,
DINO's `restrict_neighborhood`), `circle` (sqrt(dy^2 + dx^2) < r, CRW's `MaskedAttention`) or
`none`. `window_first_frame` says whether the first frame is windowed too (DINO: yes; CRW: its
long-term memory is not).

Memory and work: the affinity is never formed for the whole context at once. Queries are
processed in tiles of `block_rows` x `block_cols` grid cells, and each tile only meets the band of
key rows and columns its window can reach, so a tile's scores are [rows * cols, frames *
band_rows * band_cols] (plus h * w for an unwindowed first frame), with band_rows = rows + 2 *
reach (at most h) and likewise for columns. The tile shape is chosen per grid to need the fewest
score entries (choose_block_shape), which also skips most of the matrix product the dense
original computes. Everything is static-shaped and runs in one `lax.scan` over frames.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

WEIGHTINGS = ("exp_threshold", "softmax_topk")
WINDOWS = ("square", "circle", "none")
# CRW adds this to the scores of keys outside the window (before dividing by the temperature).
CRW_MASK_VALUE = -1e10
# Entries tied with the k-th largest DINO weight that are kept like the original keeps them.
EXTRA_TIES = 3
# Default budget for one tile's score tensor, bytes (block_rows/cols = 0 pick a tile that fits).
BLOCK_BYTES = 64 * 2**20
# Fewest queries per automatic tile: thinner tiles make the affinity matrix products slow.
MIN_TILE_QUERIES = 96


@dataclasses.dataclass(frozen=True)
class PropagationSpec:
  """How labels flow from the context to a frame (hashable: a static jit argument).

  Attributes:
    context_frames: ring buffer length of recent frames (DINO `n_last_frames` 7, CRW `videoLen`).
    prefill_context: start with the buffer full of first-frame copies (CRW's padded start) rather
      than empty (DINO's queue).
    topk: neighbours kept per query over the whole context.
    temperature: affinity temperature.
    weighting: one of WEIGHTINGS.
    window: one of WINDOWS; radius: its size in grid cells (see the module docstring).
    window_first_frame: apply the window to the first frame as well.
    block_rows, block_cols: query rows and columns per tile; 0 picks them (choose_block_shape).
  """

  context_frames: int
  prefill_context: bool
  topk: int
  temperature: float
  weighting: str
  window: str
  radius: float
  window_first_frame: bool
  block_rows: int = 0
  block_cols: int = 0

  def __post_init__(self):
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
    if self.window not in WINDOWS:
      raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")
    if self.context_frames < 0 or self.topk < 1 or min(self.block_rows, self.block_cols) < 0:
      raise ValueError(
        f"need context_frames >= 0, topk >= 1, block_rows/cols >= 0; got {self.context_frames}, "
        f"{self.topk}, {self.block_rows}, {self.block_cols}"
      )
    if self.temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")


def window_reach(window: str, radius: float, height: int) -> int:
  """Rows above and below a query that its window can reach (the band half-height)."""
  if window == "square":
    return min(int(radius), height)
  if window == "circle":
    return min(max(int(math.ceil(radius)) - 1, 0), height)
  return height


def window_inside(window: str, radius: float, dy, dx):
  """May a query see a key dy rows and dx columns away? The originals' own tests: DINO's integer
  offsets within +-r, CRW's float32 sqrt of the squared distance < r. Works on NumPy and jnp."""
  xp = jnp if isinstance(dy, jax.Array) or isinstance(dx, jax.Array) else np
  if window == "square":
    return (xp.abs(dy) <= radius) & (xp.abs(dx) <= radius)
  if window == "circle":
    distance = xp.sqrt((dy * dy + dx * dx).astype(xp.float32))
    return distance < xp.float32(radius)
  return xp.ones(xp.broadcast_shapes(xp.shape(dy), xp.shape(dx)), bool)


def relative_window(window: str, radius: float, rows: int, reach: int, width: int) -> np.ndarray:
  """bool [rows * width, (rows + 2 * reach) * width]: may query (i, x) see band cell (j, x'),
  band row j lying dy = j - reach - i rows from query row i?"""
  dy = (
    np.arange(rows + 2 * reach)[None, None, :, None] - reach - np.arange(rows)[:, None, None, None]
  )
  dx = np.arange(width)[None, None, None, :] - np.arange(width)[None, :, None, None]
  inside = np.broadcast_to(
    window_inside(window, radius, dy, dx), (rows, width, rows + 2 * reach, width)
  )
  return inside.reshape(rows * width, (rows + 2 * reach) * width)


def choose_block_shape(spec: PropagationSpec, height: int, width: int) -> tuple[int, int]:
  """(rows, cols) of one query tile: spec.block_rows / spec.block_cols where set, else the tile
  that needs the fewest score entries per frame (padded queries times the keys each tile meets)
  among tiles of at least MIN_TILE_QUERIES queries (smaller tiles make matrix products too thin to
  run at full speed) whose score tensor fits BLOCK_BYTES (at least one cell)."""
  reach_y = window_reach(spec.window, spec.radius, height)
  reach_x = window_reach(spec.window, spec.radius, width)
  banded = spec.context_frames + int(spec.window_first_frame)
  full = 0 if spec.window_first_frame else height * width
  row_options = [spec.block_rows] if spec.block_rows else range(1, height + 1)
  col_options = [spec.block_cols] if spec.block_cols else range(1, width + 1)
  least = min(MIN_TILE_QUERIES, height * width)
  best, best_key = (1, 1), None
  for rows in row_options:
    rows = min(rows, height)
    row_blocks = -(-height // rows)
    rows = -(-height // row_blocks)  # the same number of tiles with the least padding
    for cols in col_options:
      cols = min(cols, width)
      col_blocks = -(-width // cols)
      cols = -(-width // col_blocks)
      keys = banded * min(rows + 2 * reach_y, height) * min(cols + 2 * reach_x, width) + full
      fits = rows * cols * keys * 4 <= BLOCK_BYTES
      big = rows * cols >= least or (spec.block_rows and spec.block_cols)
      entries = row_blocks * rows * col_blocks * cols * keys
      # Prefer tiles that fit and are big enough, then fewer score entries, then fewer tiles.
      key = (not fits, not big, entries, row_blocks * col_blocks)
      if best_key is None or key < best_key:
        best, best_key = (rows, cols), key
  return best


def l2_normalize(features: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) over the last axis (torch.nn.functional.normalize)."""
  norm = jnp.sqrt(jnp.sum(features * features, axis=-1, keepdims=True))
  return features / jnp.maximum(norm, eps)


def _weigh(spec: PropagationSpec, scores, valid, labels):
  """scores/valid [Q, N], labels [N, K] -> [Q, K] (see the module docstring)."""
  if spec.weighting == "exp_threshold":
    # Entries below the k-th largest weight are zeroed, ties with it kept: taken from the top
    # k + EXTRA_TIES logits (exp is monotonic), so up to EXTRA_TIES entries tied with the k-th
    # are kept as the original keeps them; the label average then gathers only those entries.
    logits = jnp.where(valid, scores / spec.temperature, -jnp.inf)
    values, indices = jax.lax.top_k(logits, min(spec.topk + EXTRA_TIES, logits.shape[1]))
    weights = jnp.exp(values)
    weights = jnp.where(weights < weights[:, spec.topk - 1 : spec.topk], 0.0, weights)
    weights = weights / jnp.sum(weights, axis=1, keepdims=True)
    return jnp.einsum("qk,qkc->qc", weights, labels[indices])
  logits = (scores + jnp.where(valid, 0.0, CRW_MASK_VALUE)) / spec.temperature
  values, indices = jax.lax.top_k(logits, spec.topk)
  weights = jax.nn.softmax(values, axis=1)
  return jnp.einsum("qk,qkc->qc", weights, labels[indices])


@functools.partial(jax.jit, static_argnames=("spec",))
def propagate(features: jax.Array, first_labels: jax.Array, spec: PropagationSpec) -> jax.Array:
  """Soft label maps of every frame.

  Args:
    features: float32 [T, h, w, C], already L2-normalised over C (the affinity is a dot product).
    first_labels: float32 [h, w, K] soft labels of frame 0 (one-hot or downsampled one-hot).
    spec: the protocol (see PropagationSpec).

  Returns:
    float32 [T, h, w, K]: frame 0's labels, then each later frame's propagated soft map (the map
    the protocol stores in its context; no normalisation or argmax).
  """
  if features.ndim != 4 or first_labels.ndim != 3 or features.shape[1:3] != first_labels.shape[:2]:
    raise ValueError(
      f"features [T, h, w, C] and first_labels [h, w, K] must share (h, w); got "
      f"{features.shape} and {first_labels.shape}"
    )
  num_frames, height, width, channels = features.shape
  num_labels = first_labels.shape[-1]
  features = features.astype(jnp.float32)
  first_labels = first_labels.astype(jnp.float32)
  memory = spec.context_frames
  reach_y = window_reach(spec.window, spec.radius, height)
  reach_x = window_reach(spec.window, spec.radius, width)
  rows, cols = choose_block_shape(spec, height, width)
  row_blocks, col_blocks = -(-height // rows), -(-width // cols)
  band_rows, band_cols = min(rows + 2 * reach_y, height), min(cols + 2 * reach_x, width)
  if spec.prefill_context:
    ring = (
      jnp.broadcast_to(features[0], (memory,) + features.shape[1:]),
      jnp.broadcast_to(first_labels, (memory,) + first_labels.shape),
      jnp.ones((memory,), bool),
    )
  else:
    ring = (
      jnp.zeros((memory,) + features.shape[1:], jnp.float32),
      jnp.zeros((memory,) + first_labels.shape, jnp.float32),
      jnp.zeros((memory,), bool),
    )
  flat_first_features = features[0].reshape(height * width, -1)
  flat_first_labels = first_labels.reshape(height * width, num_labels)

  def frame_step(carry, query):
    ring_features, ring_labels, ring_valid, slot = carry
    if spec.window_first_frame:
      band_features = jnp.concatenate([features[:1], ring_features])
      band_labels = jnp.concatenate([first_labels[None], ring_labels])
      band_valid = jnp.concatenate([jnp.ones((1,), bool), ring_valid])
    else:
      band_features, band_labels, band_valid = ring_features, ring_labels, ring_valid
    padded_query = jnp.pad(
      query, ((0, row_blocks * rows - height), (0, col_blocks * cols - width), (0, 0))
    )

    def tile(index):
      row_start, col_start = (index // col_blocks) * rows, (index % col_blocks) * cols
      band_row_start = jnp.clip(row_start - reach_y, 0, height - band_rows)
      band_col_start = jnp.clip(col_start - reach_x, 0, width - band_cols)
      q = jax.lax.dynamic_slice(padded_query, (row_start, col_start, 0), (rows, cols, channels))
      q = q.reshape(rows * cols, channels)
      slots = band_features.shape[0]
      keys = jax.lax.dynamic_slice(
        band_features,
        (0, band_row_start, band_col_start, 0),
        (slots, band_rows, band_cols, channels),
      ).reshape(slots * band_rows * band_cols, channels)
      labels = jax.lax.dynamic_slice(
        band_labels,
        (0, band_row_start, band_col_start, 0),
        (slots, band_rows, band_cols, num_labels),
      ).reshape(slots * band_rows * band_cols, num_labels)
      dy = (band_row_start + jnp.arange(band_rows))[None, None, :, None] - (
        row_start + jnp.arange(rows)
      )[:, None, None, None]
      dx = (band_col_start + jnp.arange(band_cols))[None, None, None, :] - (
        col_start + jnp.arange(cols)
      )[None, :, None, None]
      inside = window_inside(spec.window, spec.radius, dy, dx)
      inside = jnp.broadcast_to(inside, (rows, cols, band_rows, band_cols))
      inside = inside.reshape(rows * cols, 1, band_rows * band_cols)
      valid = (inside & band_valid[None, :, None]).reshape(rows * cols, -1)
      scores = q @ keys.T
      if not spec.window_first_frame:
        scores = jnp.concatenate([q @ flat_first_features.T, scores], axis=1)
        valid = jnp.concatenate([jnp.ones((rows * cols, height * width), bool), valid], axis=1)
        labels = jnp.concatenate([flat_first_labels, labels])
      return _weigh(spec, scores, valid, labels).reshape(rows, cols, num_labels)

    soft = jax.lax.map(tile, jnp.arange(row_blocks * col_blocks))
    soft = soft.reshape(row_blocks, col_blocks, rows, cols, num_labels).transpose(0, 2, 1, 3, 4)
    soft = soft.reshape(row_blocks * rows, col_blocks * cols, num_labels)[:height, :width]
    if memory:
      ring_features = jax.lax.dynamic_update_index_in_dim(ring_features, query, slot, 0)
      ring_labels = jax.lax.dynamic_update_index_in_dim(ring_labels, soft, slot, 0)
      ring_valid = ring_valid.at[slot].set(True)
      slot = (slot + 1) % memory
    return (ring_features, ring_labels, ring_valid, slot), soft

  if num_frames == 1:
    return first_labels[None]
  _, later = jax.lax.scan(frame_step, ring + (jnp.int32(0),), features[1:])
  return jnp.concatenate([first_labels[None], later])
