"""Plain NumPy transcription of the official Betrayed-by-Attention inference clustering.

Follows `src/eval_oneshot.py::mem_efficient_hierarchical_cluster` of shvdiwnkozbw/SSL-UVOS loop by
loop (windows of 3 query frames, smoothing, greedy grouping in index order, hierarchy until the
count stops changing, argmin assignment), in float32 like the official code. It is the reference
that tests and the clustering benchmark compare `vosjax.methods.betrayed.clustering` against.
Differences from the official code, both shared with `vosjax.methods.betrayed.clustering`:
- a video with fewer than `ratio` frames uses frame 0 as its only key frame (the official code
  selects no key frame there and returns a single cluster holding every token);
- besides the final assignment it also returns the assignment to the centroids of every level.

Layout: q, k are [T, N, heads, head_dim] (the official code uses [T, heads, N, head_dim]).

`python -m vosjax.bench reference_clustering` runs it once on a small planted video (smoke run).
"""

import argparse
import time

import numpy as np


def kl_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
  """Symmetric KL, [n, m] = KL(p_n || q_m) + KL(q_m || p_n), as cross-entropies minus entropies."""
  self_entropy = -np.sum(p * np.log(p), axis=1)[:, None] - np.sum(q * np.log(q), axis=1)[None, :]
  cross_entropy = -(p @ np.log(q).T) - (q @ np.log(p).T).T
  return cross_entropy - self_entropy


def key_frames(num_frames: int, ratio: int) -> np.ndarray:
  indices = np.arange(num_frames // ratio) * ratio
  return indices if len(indices) else np.zeros(1, np.int64)


def window_attention(q_window: np.ndarray, k_key: np.ndarray, scale: float) -> np.ndarray:
  """[W, N, H, d] queries x [n_key, N, H, d] keys -> [W * N, n_key * N] head-mean softmax."""
  num_heads, head_dim = q_window.shape[2:]
  queries = q_window.reshape(-1, num_heads, head_dim).transpose(1, 0, 2)  # [H, W*N, d]
  keys = k_key.reshape(-1, num_heads, head_dim).transpose(1, 2, 0)  # [H, d, n_key*N]
  logits = (queries @ keys).transpose(1, 0, 2) * scale  # [W*N, H, n_key*N]
  logits = logits - logits.max(axis=-1, keepdims=True)
  attention = np.exp(logits)
  attention = attention / attention.sum(axis=-1, keepdims=True)
  return attention.mean(axis=1)


def greedy_group(distance: np.ndarray, sets: np.ndarray, tau: float):
  """Greedy grouping in index order; returns (centroids list, group id per row)."""
  centroids = []
  group_ids = np.full(len(sets), -1)
  indicator = np.ones(len(sets))
  for i in range(len(sets)):
    if indicator[i] == 0:
      continue
    indices = (distance[i] <= tau) * (indicator > 0)
    centroids.append(np.mean(sets[indices], axis=0))
    group_ids[indices] = len(centroids) - 1
    indicator[indices] = 0
  return centroids, group_ids


def hierarchical_cluster(
  q: np.ndarray, k: np.ndarray, tau: float, ratio: int, window: int = 3, num_iter: int = 10000
) -> dict:
  """Official clustering.

  Returns dict(levels [L, T, N] int, num_clusters [L], labels [T, N], centroids: list of L arrays
  [K_l, n_key * N]).

  Level 0 is the assignment to the window centroids, the last level the official final assignment.
  """
  q = np.asarray(q, np.float32)
  k = np.asarray(k, np.float32)
  num_frames, num_tokens, _, head_dim = q.shape
  scale = np.float32(head_dim**-0.5)
  k_key = k[key_frames(num_frames, ratio)]

  final_set = []
  for t in range(0, num_frames, window):
    sample = window_attention(q[t : t + window], k_key, scale)
    distance = kl_distance(sample, sample)
    indices = (distance <= tau).astype(np.float32)
    keep_set = indices @ sample
    keep_set = keep_set / keep_set.sum(axis=1, keepdims=True)
    distance = kl_distance(keep_set, keep_set)
    centroids, _ = greedy_group(distance, keep_set, tau)
    final_set.extend(centroids)

  level_centroids = [np.stack(final_set)]
  for _ in range(num_iter):
    keep_set = level_centroids[-1]
    centroids, _ = greedy_group(kl_distance(keep_set, keep_set), keep_set, tau)
    if len(centroids) == len(keep_set):
      break
    level_centroids.append(np.stack(centroids))

  levels = np.zeros((len(level_centroids), num_frames, num_tokens), np.int64)
  for t in range(0, num_frames, window):
    sample = window_attention(q[t : t + window], k_key, scale)
    for level, centroids in enumerate(level_centroids):
      nearest = np.argmin(kl_distance(centroids, sample), axis=0)
      levels[level, t : t + window] = nearest.reshape(-1, num_tokens)
  return dict(
    levels=levels,
    num_clusters=np.array([len(c) for c in level_centroids]),
    labels=levels[-1],
    centroids=level_centroids,
  )


# The inputs of `python -m vosjax.bench clustering` (and of benchmarks/official/
# betrayed_clustering.py, the official side): ViT-S/8 token grids at 192x384, 8 heads of 48.
BENCH_GRID = (24, 48)
BENCH_HEADS, BENCH_HEAD_DIM = 8, 48


def bench_query_key(frames: int, objects: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The clustering benchmark's planted q, k: float32 [frames, 24 * 48, 8, 48]."""
  return planted_query_key(
    frames,
    BENCH_GRID[0] * BENCH_GRID[1],
    BENCH_HEADS,
    BENCH_HEAD_DIM,
    objects,
    seed,
    strength=1.0,
    noise=0.7,
  )


def planted_query_key(
  num_frames: int,
  num_tokens: int,
  num_heads: int,
  head_dim: int,
  num_objects: int,
  seed: int,
  strength: float = 1.5,
  noise: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
  """Random q, k with planted objects: tokens of one object share a direction in q and k.

  Objects are horizontal-ish bands of token indices that drift by one token per frame, so grouping
  is non-trivial but counts stay realistic. Returns float32 q, k [T, N, heads, head_dim].
  """
  rng = np.random.default_rng(seed)
  object_dirs = rng.normal(size=(num_objects, num_heads, head_dim)) * strength
  bounds = np.sort(rng.choice(np.arange(1, num_tokens), num_objects - 1, replace=False))
  q = np.empty((num_frames, num_tokens, num_heads, head_dim), np.float32)
  k = np.empty_like(q)
  for t in range(num_frames):
    object_of_token = np.searchsorted(
      bounds, (np.arange(num_tokens) + t) % num_tokens, side="right"
    )
    base = object_dirs[object_of_token]
    q[t] = base + noise * rng.normal(size=base.shape)
    k[t] = base + noise * rng.normal(size=base.shape)
  return q, k


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    prog="vosjax.bench reference_clustering",
    description="Smoke run of the NumPy reference clustering.",
  )
  parser.add_argument("--frames", type=int, default=6)
  parser.add_argument("--tokens", type=int, default=96)
  parser.add_argument("--tau", type=float, default=1.0)
  parser.add_argument("--ratio", type=int, default=2)
  args = parser.parse_args(argv)
  q, k = planted_query_key(args.frames, args.tokens, 8, 48, num_objects=5, seed=0)
  start = time.perf_counter()
  result = hierarchical_cluster(q, k, args.tau, args.ratio)
  print(
    f"clusters per level {result['num_clusters'].tolist()} "
    f"in {time.perf_counter() - start:.3f} s (NumPy, {args.frames} frames x {args.tokens} tokens)"
  )
  return 0
