"""Benchmark: jitted hierarchical clustering vs the NumPy transcription of the official algorithm.

`python -m vosjax.bench clustering [--frames 8 24 80] [--max_seconds 1200]`

Inputs are ViT-S/8 token grids at 192 x 384 (24 x 48 = 1152 tokens per frame, 8 heads of 48) with
planted objects (random q, k sharing one direction per object, drifting over time), so the number
of clusters stays realistic (tens). Both implementations run on the same inputs and key-frame ratio;
the table shows the JAX compile and run times (run = one call of the compiled function), the NumPy
time, the speed-up (NumPy / JAX run) and how many final labels agree. A run predicted (from the
previous size, time ~ windows x key tokens) to exceed --max_seconds is skipped and its estimate
shown.
"""

import argparse
import time
from typing import Optional

import jax
import numpy as np

from vosjax.methods.betrayed import clustering
from vosjax.methods.betrayed import keyframe_attention as kfa
from vosjax.benchmarks import reference_clustering as reference

GRID = reference.BENCH_GRID
HEADS, HEAD_DIM = reference.BENCH_HEADS, reference.BENCH_HEAD_DIM


def _work(frames: int, ratio: int) -> int:
  """Relative cost: number of windows x key tokens (the big products are [M, M, K'] per window)."""
  return -(-frames // 3) * len(kfa.key_frame_indices(frames, ratio))


def _predict(history: list[tuple[int, float]], work: int) -> Optional[float]:
  return None if not history else history[-1][1] * work / history[-1][0]


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    prog="vosjax.bench clustering", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--frames", type=int, nargs="+", default=[8, 24, 80])
  parser.add_argument("--tau", type=float, default=clustering.TAU_MULTI_OBJECT)
  parser.add_argument("--ratio", type=int, default=10)
  parser.add_argument("--objects", type=int, default=8, help="planted objects per video")
  parser.add_argument(
    "--max_seconds",
    type=float,
    default=1200.0,
    help="skip a run predicted to take longer (per implementation)",
  )
  parser.add_argument("--skip_numpy", action="store_true")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  print(
    f"hierarchical clustering, tau {args.tau}, key-frame ratio {args.ratio}, {GRID[0]}x{GRID[1]} "
    f"tokens, {HEADS} heads x {HEAD_DIM}, {args.objects} planted objects, "
    f"device {jax.devices()[0].device_kind}"
  )
  header = (
    f"{'frames':>6} {'K_prime':>7} {'clusters/level':>16} {'jax_compile_s':>13} "
    f"{'jax_run_s':>9} {'jax_temp_MB':>11} {'numpy_s':>9} {'speed_up':>8} {'agree':>6}"
  )
  print(header)
  jax_history: list[tuple[int, float]] = []
  numpy_history: list[tuple[int, float]] = []
  for frames in args.frames:
    q, k = reference.bench_query_key(frames, args.objects, args.seed)
    work = _work(frames, args.ratio)
    num_keys = len(kfa.key_frame_indices(frames, args.ratio)) * GRID[0] * GRID[1]

    jax_cell = compile_cell = temp_cell = clusters_cell = "skipped"
    result = jax_seconds = None
    estimate = _predict(jax_history, work)
    if estimate is not None and estimate > args.max_seconds:
      jax_cell = f"~{estimate:.0f}?"
    else:
      start = time.perf_counter()
      compiled = clustering.hierarchical_cluster.lower(
        q, k, grid_shape=GRID, tau=args.tau, ratio=args.ratio
      ).compile()
      compile_cell = f"{time.perf_counter() - start:.1f}"
      temp_cell = f"{compiled.memory_analysis().temp_size_in_bytes / 2**20:.0f}"
      start = time.perf_counter()
      result = jax.block_until_ready(compiled(q, k, tau=args.tau))
      jax_seconds = time.perf_counter() - start
      jax_history.append((work, jax_seconds))
      jax_cell = f"{jax_seconds:.2f}"
      num_levels = int(result.num_levels)
      clusters_cell = "-".join(str(c) for c in np.asarray(result.num_clusters[:num_levels]))
      if result.overflow:
        clusters_cell += " OVERFLOW"

    numpy_cell = speed_cell = agree_cell = "-"
    if not args.skip_numpy:
      estimate = _predict(numpy_history, work)
      if estimate is not None and estimate > args.max_seconds:
        numpy_cell = f"~{estimate:.0f}?"
      else:
        start = time.perf_counter()
        expected = reference.hierarchical_cluster(q, k, args.tau, args.ratio)
        numpy_seconds = time.perf_counter() - start
        numpy_history.append((work, numpy_seconds))
        numpy_cell = f"{numpy_seconds:.2f}"
        if result is not None:
          speed_cell = f"{numpy_seconds / jax_seconds:.2f}x"
          same = np.asarray(result.labels).reshape(frames, -1) == expected["labels"]
          agree_cell = f"{same.mean():.4f}"
          if not np.array_equal(result.num_clusters[:num_levels], expected["num_clusters"]):
            agree_cell += f" (numpy clusters {'-'.join(map(str, expected['num_clusters']))})"
    print(
      f"{frames:>6} {num_keys:>7} {clusters_cell:>16} {compile_cell:>13} {jax_cell:>9} "
      f"{temp_cell:>11} {numpy_cell:>9} {speed_cell:>8} {agree_cell:>6}",
      flush=True,
    )
  print(
    "'~N?': skipped, predicted N seconds (> --max_seconds). agree: fraction of equal final "
    "labels (cluster order is the official one, so no relabelling)."
  )
  return 0
