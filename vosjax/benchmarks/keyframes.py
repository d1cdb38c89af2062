"""Benchmark: time and memory of sparse key-frame attention and clustering vs the key-frame ratio.

`python -m vosjax.bench keyframes [--frames 24] [--ratios 10 5 1] [--max_seconds 600]`

For each ratio (key frames = every ratio-th frame) on a ViT-S/8 192 x 384 video (24 x 48 tokens,
8 heads of 48, planted objects) it reports:
- attention: the windowed key-frame attention of all query frames (each window's [3 * 1152, K']
  distributions reduced to their argmax so the output stays small);
- cluster: the whole `hierarchical_cluster`;
with compile time, run time (one call of the compiled function), the compiled temp buffer size
(`memory_analysis().temp_size_in_bytes`, the peak scratch memory XLA plans) and the process peak RSS
so far (ratios run from sparse to dense so the RSS column is the peak of that ratio). A clustering
run predicted to exceed --max_seconds (time ~ key tokens, from the previous ratio) is skipped.
"""

import argparse
import resource
import time

import jax
import jax.numpy as jnp

from vosjax.methods.betrayed import clustering
from vosjax.methods.betrayed import keyframe_attention as kfa
from vosjax.benchmarks import reference_clustering as reference

GRID = (24, 48)
HEADS, HEAD_DIM = 8, 48


def attention_argmax(q: jax.Array, k: jax.Array, ratio: int, head_dim: int = HEAD_DIM) -> jax.Array:
  """Key-frame attention of every query token, window by window, reduced to int32 [n_win, 3 * N]."""
  key_tokens = kfa.gather_key_tokens(k, ratio)
  windows, _ = kfa.pad_to_windows(q, kfa.DEFAULT_WINDOW)
  return jax.lax.map(
    lambda qw: jnp.argmax(kfa.window_attention(qw, key_tokens, head_dim**-0.5), axis=-1), windows
  )


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def measure(function, *args, **kwargs) -> tuple[float, float, float, object]:
  """(compile seconds, run seconds, temp MB, output) of one jitted call."""
  start = time.perf_counter()
  compiled = function.lower(*args, **kwargs).compile()
  compile_seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  temp_mb = memory.temp_size_in_bytes / 2**20 if memory is not None else float("nan")
  dynamic = {
    name: value for name, value in kwargs.items() if name == "tau"
  }  # static ones are baked in
  start = time.perf_counter()
  output = jax.block_until_ready(compiled(*args, **dynamic))
  return compile_seconds, time.perf_counter() - start, temp_mb, output


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    prog="vosjax.bench keyframes", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--frames", type=int, default=24)
  parser.add_argument("--ratios", type=int, nargs="+", default=[10, 5, 1])
  parser.add_argument("--tau", type=float, default=clustering.TAU_MULTI_OBJECT)
  parser.add_argument(
    "--max_seconds",
    type=float,
    default=600.0,
    help="skip a clustering run predicted to take longer",
  )
  args = parser.parse_args(argv)

  q, k = reference.planted_query_key(
    args.frames, GRID[0] * GRID[1], HEADS, HEAD_DIM, 8, 0, strength=1.0, noise=0.7
  )
  print(
    f"{args.frames} frames, {GRID[0]}x{GRID[1]} tokens, {HEADS} heads x {HEAD_DIM}, "
    f"tau {args.tau}, device {jax.devices()[0].device_kind}"
  )
  print(
    f"{'ratio':>5} {'keys':>4} {'K_prime':>7} | {'attn_run_s':>10} {'attn_temp_MB':>12} | "
    f"{'clu_compile_s':>13} {'clu_run_s':>9} {'clu_temp_MB':>11} {'clusters':>8} | "
    f"{'peak_RSS_MB':>11}"
  )
  attention = jax.jit(attention_argmax, static_argnames=("ratio", "head_dim"))
  previous = None  # (key tokens, clustering seconds)
  for ratio in args.ratios:
    num_key_frames = len(kfa.key_frame_indices(args.frames, ratio))
    num_keys = num_key_frames * GRID[0] * GRID[1]
    _, attention_seconds, attention_temp, _ = measure(attention, q, k, ratio=ratio)
    predicted = None if previous is None else previous[1] * num_keys / previous[0]
    if predicted is not None and predicted > args.max_seconds:
      cells = ("-", f"~{predicted:.0f}?", "-", "skipped")
    else:
      compile_seconds, cluster_seconds, cluster_temp, result = measure(
        clustering.hierarchical_cluster, q, k, grid_shape=GRID, tau=args.tau, ratio=ratio
      )
      previous = (num_keys, cluster_seconds)
      count = int(result.num_clusters[-1])
      cells = (
        f"{compile_seconds:.1f}",
        f"{cluster_seconds:.2f}",
        f"{cluster_temp:.0f}",
        f"{count}{'!' if result.overflow else ''}",
      )
    print(
      f"{ratio:>5} {num_key_frames:>4} {num_keys:>7} | {attention_seconds:>10.2f} "
      f"{attention_temp:>12.0f} | {cells[0]:>13} {cells[1]:>9} {cells[2]:>11} {cells[3]:>8} | "
      f"{_peak_rss_mb():>11.0f}",
      flush=True,
    )
  print(
    "'~N?': skipped, predicted N seconds. clusters: final count ('!' = capacity overflow). "
    "peak_RSS_MB: process peak so far."
  )
  return 0
