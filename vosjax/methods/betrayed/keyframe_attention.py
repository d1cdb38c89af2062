"""Sparse key-frame spatio-temporal attention (Betrayed by Attention, inference).

At inference the official code (`src/eval_oneshot.py::mem_efficient_inference`) attends from every
token of every frame (queries) to the tokens of every `ratio`-th frame only (key frames), in windows
of 3 query frames. Each query token gets one distribution over the K' = n_key * N key-frame tokens:
the softmax of q k^T * scale over K', averaged over heads. Those distributions are what the
hierarchical clustering in `vosjax.methods.betrayed.clustering` groups.

Shapes: q, k are [T, N, heads, head_dim] (N = h * w tokens per frame), the per-frame queries and
keys of the spatio-temporal block's qkv projection of norm1(patch keys).

Key frames: frames arange(T // ratio) * ratio, as in the official code. A video with T < ratio
frames has no such frame: the official code then attends to no key at all (empty distributions, all
distances 0) and returns one cluster, every token in it. Here it falls back to frame 0 alone
(documented choice), so such a video is still segmented.

Memory: one window of `window` query frames is computed at a time; its attention is [window * N, K']
and the per-head logits are reduced one head at a time, so peak memory grows linearly with the
number of key frames and does not grow with T.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Precision = Optional[jax.lax.Precision]

# Official temporal window of query frames (`ts = 3`).
DEFAULT_WINDOW = 3


def key_frame_indices(num_frames: int, ratio: int) -> np.ndarray:
  """Indices of the key frames: every `ratio`-th frame from 0, at least frame 0.

  Args:
    num_frames: T, the number of frames of the video.
    ratio: key-frame sparsity (official default 10; 1 uses every frame as a key frame).

  Returns:
    int [n_key] with n_key = max(T // ratio, 1). The official code uses arange(T // ratio) * ratio,
    which is empty for T < ratio (it then returns one cluster for the whole video); we use frame 0.
  """
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  if ratio < 1:
    raise ValueError(f"key-frame ratio must be >= 1, got {ratio}")
  return np.arange(max(num_frames // ratio, 1)) * ratio


def check_query_key(q: jax.Array, k: jax.Array) -> None:
  """Raises ValueError unless q and k are matching [T, N, heads, head_dim] arrays."""
  if q.ndim != 4 or k.ndim != 4:
    raise ValueError(f"q and k must be [T, N, heads, head_dim]; got q {q.shape}, k {k.shape}")
  if q.shape != k.shape:
    raise ValueError(f"q and k must have the same shape; got q {q.shape}, k {k.shape}")


def gather_key_tokens(k: jax.Array, ratio: int) -> jax.Array:
  """Keys of the key frames, flattened to tokens.

  Args:
    k: [T, N, heads, head_dim] per-frame keys.
    ratio: key-frame sparsity.

  Returns:
    [heads, K', head_dim] with K' = n_key * N, tokens ordered (key frame, token) like the official
    rearrange 'q k h n m -> (q n) h (k m)'.
  """
  num_frames, num_tokens, num_heads, head_dim = k.shape
  keys = k[key_frame_indices(num_frames, ratio)]  # [n_key, N, heads, head_dim]
  keys = keys.reshape(-1, num_heads, head_dim)
  return jnp.transpose(keys, (1, 0, 2))


def window_attention(
  q_window: jax.Array,
  key_tokens: jax.Array,
  scale: float,
  precision: Precision = jax.lax.Precision.HIGHEST,
) -> jax.Array:
  """Head-averaged attention of a window of query frames over the key-frame tokens.

  Args:
    q_window: [W, N, heads, head_dim] queries of W frames.
    key_tokens: [heads, K', head_dim] from `gather_key_tokens`.
    scale: logit scale (official head_dim ** -0.5), applied after the product as in the official
    code. precision: matmul precision (HIGHEST keeps float32 on TPU/GPU; the distances built on
    these
      distributions are sensitive to bf16/tf32 rounding).

  Returns:
    [W * N, K'] float32, rows (frame, token); each row is a distribution (softmax per head, mean
    over heads).
  """
  num_heads = q_window.shape[2]
  queries = q_window.reshape(-1, num_heads, q_window.shape[-1]).astype(jnp.float32)
  queries = jnp.transpose(queries, (1, 0, 2))  # [heads, W*N, head_dim]
  key_tokens = key_tokens.astype(jnp.float32)

  def add_head(head, total):
    logits = jnp.matmul(queries[head], key_tokens[head].T, precision=precision) * scale
    return total + jax.nn.softmax(logits, axis=-1)

  # One head at a time keeps a single [W*N, K'] logits buffer alive instead of [heads, W*N, K'].
  initial = jnp.zeros((queries.shape[1], key_tokens.shape[1]), jnp.float32)
  return jax.lax.fori_loop(0, num_heads, add_head, initial) / num_heads


def pad_to_windows(q: jax.Array, window: int) -> tuple[jax.Array, jax.Array]:
  """Zero-pads the frames of q to a multiple of `window`, split into windows.

  Args:
    q: [T, N, heads, head_dim].
    window: frames per window.

  Returns:
    (windows [n_win, window, N, heads, head_dim], frame_valid bool [n_win, window]) where padded
    frames are False. n_win = ceil(T / window); the official loop `range(0, T, ts)` gives the same
    windows, the last one shorter.
  """
  num_frames = q.shape[0]
  num_windows = -(-num_frames // window)
  padding = num_windows * window - num_frames
  padded = jnp.pad(q, ((0, padding),) + ((0, 0),) * (q.ndim - 1))
  frame_valid = (np.arange(num_windows * window) < num_frames).reshape(num_windows, window)
  return padded.reshape((num_windows, window) + q.shape[1:]), jnp.asarray(frame_valid)


def keyframe_attention(
  q: jax.Array,
  k: jax.Array,
  *,
  ratio: int,
  window: int = DEFAULT_WINDOW,
  scale: Optional[float] = None,
  precision: Precision = jax.lax.Precision.HIGHEST,
) -> jax.Array:
  """Sparse key-frame attention of every query token, computed window by window.

  This materializes the whole [T, N, K'] result; the clustering never does (it recomputes each
  window's attention inside its loops). Useful for inspection and small videos.

  Args:
    q: [T, N, heads, head_dim] queries.
    k: [T, N, heads, head_dim] keys.
    ratio: key-frame sparsity (key frames = max(T // ratio, 1) frames 0, ratio, 2 * ratio, ...).
    window: query frames per window (official 3). Only affects memory, not the values.
    scale: logit scale, default head_dim ** -0.5.
    precision: matmul precision.

  Returns:
    float32 [T, N, K'] with K' = n_key * N.
  """
  check_query_key(q, k)
  num_frames, num_tokens, _, head_dim = q.shape
  scale = head_dim**-0.5 if scale is None else scale
  key_tokens = gather_key_tokens(k, ratio)
  windows, _ = pad_to_windows(q, window)
  attention = jax.lax.map(lambda qw: window_attention(qw, key_tokens, scale, precision), windows)
  attention = attention.reshape(-1, num_tokens, key_tokens.shape[1])
  return attention[:num_frames]
