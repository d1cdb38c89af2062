"""Training losses of Betrayed by Attention, exactly as coded in `src/train_RGB_cluster.py`.

Inputs, per clip of T frames with N patch tokens each:
  attention: `[B, T*N, T*N]` head-averaged spatio-temporal attention without CLS rows/columns (row i
  is
    query token i, rows and columns ordered (frame, token); not renormalized, dropout-perturbed).
  tokens: `[B, T, N, C]` output patch tokens of the spatio-temporal block.
  query_indices: int `[P]` spatial token indices (official P = 8, `torch.randperm(N)[:8]`), the same
    for every frame and every batch element.

Both losses pick positives/negatives by sorting attention values (official `argsort`), which carries
no gradient. Ties are broken arbitrarily here as in the official code (CUDA argsort is not stable);
ties do occur in practice because attention dropout zeroes 40 % of the entries, so the bottom-k
negatives of a row are mostly an arbitrary subset of its dropped entries in both implementations.

All functions are jittable with static shapes (counts are Python ints).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# `F.normalize` clamps the norm from below with this epsilon.
_NORMALIZE_EPS = 1e-12
# The official log(x + 1e-10) in the motion similarity and entropy.
LOG_EPS = 1e-10


def sample_query_indices(rng: jax.Array, num_tokens: int, num_queries: int) -> jax.Array:
  """`torch.randperm(N)[:P]`: P distinct token indices, int32 `[P]`."""
  if not 0 < num_queries <= num_tokens:
    raise ValueError(f"num_queries={num_queries} must be in [1, num_tokens={num_tokens}].")
  return jax.random.permutation(rng, num_tokens)[:num_queries].astype(jnp.int32)


def _check(attention: jax.Array, num_frames: int, what: str, count: int) -> int:
  if attention.ndim != 3 or attention.shape[1] != attention.shape[2]:
    raise ValueError(f"attention must be [B, T*N, T*N], got {attention.shape}.")
  if attention.shape[1] % num_frames:
    raise ValueError(f"attention size {attention.shape[1]} is not a multiple of T={num_frames}.")
  num_tokens = attention.shape[1] // num_frames
  if count > num_tokens:
    raise ValueError(
      f"{what}={count} exceeds the {num_tokens} tokens per frame; lower it in the config."
    )
  return num_tokens


def _top_indices(values: jax.Array, count: int) -> jax.Array:
  """Indices of the `count` largest entries along the last axis (order irrelevant to the losses)."""
  return jax.lax.top_k(values, count)[1]


def _bottom_indices(values: jax.Array, count: int) -> jax.Array:
  """Indices of the `count` smallest entries along the last axis (the tail of a descending
  argsort)."""
  return jax.lax.top_k(-values, count)[1]


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _NORMALIZE_EPS)


def _l1_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.sum(jnp.abs(x), axis=-1, keepdims=True), _NORMALIZE_EPS)


def semantic_consistency_loss(
  tokens: jax.Array,
  attention: jax.Array,
  query_indices: jax.Array,
  *,
  num_positives: int = 30,
  num_negatives: int = 200,
  positive_margin: float = 0.9,
  negative_margin: float = 0.1,
) -> jax.Array:
  """The official "slot loss" on the output tokens.

  For each query (b, t, s_p) and each frame t' (t' = t included, as in the code), the keys of frame
  t' are ranked by the query's attention; the top `num_positives` are positives, the bottom
  `num_negatives` negatives. With cosine similarities on `tokens`:

    L = mean(relu(positive_margin - cos(z_q, z_pos))) + mean(relu(cos(z_q, z_neg) -
    negative_margin))

  the means running over (b, t, p, t', k).

  Args:
    tokens: `[B, T, N, C]`.
    attention: `[B, T*N, T*N]`.
    query_indices: int `[P]`.
    num_positives, num_negatives: official 30 and 200.
    positive_margin, negative_margin: official 0.9 and 0.1.

  Returns:
    Scalar loss.
  """
  batch, frames, num_tokens, _ = tokens.shape
  if (
    _check(attention, frames, "num_positives/num_negatives", max(num_positives, num_negatives))
    != num_tokens
  ):
    raise ValueError(f"tokens {tokens.shape} and attention {attention.shape} disagree on N.")
  rows = attention.reshape(batch, frames, num_tokens, frames, num_tokens)[:, :, query_indices]
  positives = _top_indices(rows, num_positives)  # [B, T, P, T, k]
  negatives = _bottom_indices(rows, num_negatives)
  unit = _l2_normalize(tokens)
  # Cosine of every query with every token of every frame: [B, T, P, T', N].
  cosine = jnp.einsum("btpc,bsnc->btpsn", unit[:, :, query_indices], unit)
  positive_cosine = jnp.take_along_axis(cosine, positives, axis=-1)
  negative_cosine = jnp.take_along_axis(cosine, negatives, axis=-1)
  return jnp.mean(jax.nn.relu(positive_margin - positive_cosine)) + jnp.mean(
    jax.nn.relu(negative_cosine - negative_margin)
  )


def motion_consistency_loss(
  attention: jax.Array,
  query_indices: jax.Array,
  *,
  num_frames: int,
  num_positives: int = 10,
  num_negatives: int = 50,
  margin: float = 1.0,
) -> jax.Array:
  """The official "motion loss" on attention rows, with entropy-based query weights.

  Every token's attention row a_i (over all T*N keys) is a "motion vector". For the query (b, t,
  s_p), positives / negatives are the tokens of the SAME frame t with the top `num_positives` /
  bottom `num_negatives` intra-frame attention A[(t, s_p), (t, .)]. With â = a / |a|_1, the
  (detached) query q and sim(q, k) = sum_c q̂_c log(k̂_c + 1e-10):

    m[p, n, k] = relu(sim(q_p, neg_n) - sim(q_p, pos_k) + margin)
    w_p = softmax_p(sum_c q̂_c log(q̂_c + 1e-10))          (per (b, t), over the P queries)
    L = mean_{b, t, n, k} sum_p w_p m[p, n, k]

  Args:
    attention: `[B, T*N, T*N]`.
    query_indices: int `[P]`.
    num_frames: T.
    num_positives, num_negatives: official 10 and 50.
    margin: official 1.

  Returns:
    Scalar loss.
  """
  num_tokens = _check(
    attention, num_frames, "num_positives/num_negatives", max(num_positives, num_negatives)
  )
  batch = attention.shape[0]
  rows = attention.reshape(batch, num_frames, num_tokens, num_frames * num_tokens)
  frame_index = jnp.arange(num_frames)
  # Intra-frame attention of the queries: A[(t, s_p), (t, .)] -> [B, T, P, N].
  blocks = rows.reshape(batch, num_frames, num_tokens, num_frames, num_tokens)
  intra = blocks[:, frame_index, :, frame_index]  # [T, B, N, N] (advanced indices first)
  intra = jnp.swapaxes(intra, 0, 1)[:, :, query_indices]
  positives = _top_indices(intra, num_positives)  # [B, T, P, k] token indices in frame t
  negatives = _bottom_indices(intra, num_negatives)

  query = _l1_normalize(jax.lax.stop_gradient(rows[:, :, query_indices]))  # [B, T, P, TN]
  query_weight = jax.nn.softmax(jnp.sum(query * jnp.log(query + LOG_EPS), axis=-1), axis=-1)
  # sim(q_p, a_n) for every token n of frame t at once, then pick positives / negatives: [B, T, P,
  # N].
  log_rows = jnp.log(_l1_normalize(rows) + LOG_EPS)
  similarity = jnp.einsum("btpc,btnc->btpn", query, log_rows)
  positive_sim = jnp.take_along_axis(similarity, positives, axis=-1)
  negative_sim = jnp.take_along_axis(similarity, negatives, axis=-1)
  hinge = jax.nn.relu(
    negative_sim[..., :, None] - positive_sim[..., None, :] + margin
  )  # [B,T,P,n,k]
  return jnp.mean(jnp.einsum("btp,btpnk->btnk", query_weight, hinge))
