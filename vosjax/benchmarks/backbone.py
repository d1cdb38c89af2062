"""Frozen ViT feature-extraction throughput: `python -m vosjax.bench backbone [options]`.

Prints frames/s of `vosjax.models.features` extraction (random weights: speed does not depend on
them) next to the analytic FLOPs per frame (`vit.vit_flops_per_image`: patch embedding, per-block
qkv/proj/MLP matmuls and attention), the achieved GFLOP/s and its fraction of this machine's
matmul peak, measured with a large jnp.dot. On a shared machine, numbers vary with the load.

The peak is measured next to every row, just before and just after it (the higher of the two is
the row's peak), so that a change of load between a row and its peak cannot make the row look
faster than the machine: a row still above 100% of its peak is marked "unreliable" (the load
changed during it), never printed as a result.
"""

import argparse
import dataclasses
import os
import time
from typing import Callable, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from vosjax.models import features
from vosjax.models import pretrained
from vosjax.models import vit

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def best_seconds(fn, repeats: int) -> float:
  """Fastest of `repeats` timed calls, after one untimed warm-up call (compilation)."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


# Timed calls of the peak matmul at the least: every "% peak" divides by it, and one slow sample
# (a busy moment) once made a backbone row read 145%.
PEAK_MIN_REPEATS = 5


def matmul_peak_meter(
  size: int, dtype, repeats: int, precision: jax.lax.Precision | None = None
) -> Callable[[], float]:
  """A function measuring, at each call, the GFLOP/s of a jitted [size, size] x [size, size]
  product at `precision` (None: the backend's default), best of max(repeats, 5) calls."""
  keys = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(keys[0], (size, size), dtype)
  b = jax.random.normal(keys[1], (size, size), dtype)
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, precision=precision))

  def measure() -> float:
    seconds = best_seconds(lambda: matmul(a, b), max(repeats, PEAK_MIN_REPEATS))
    return 2 * size**3 / seconds / 1e9

  return measure


def matmul_peak_gflops(
  size: int, dtype, repeats: int, precision: jax.lax.Precision | None = None
) -> float:
  """One measurement of `matmul_peak_meter`."""
  return matmul_peak_meter(size, dtype, repeats, precision)()


@dataclasses.dataclass(frozen=True)
class PeakShare:
  """A row's achieved GFLOP/s and the matmul peak measured next to it."""

  gflops: float
  peak_gflops: float

  @property
  def fraction(self) -> float:
    return self.gflops / self.peak_gflops

  @property
  def reliable(self) -> bool:
    """False when the row beat its own peak: the load changed between the measurements."""
    return self.fraction <= 1.0

  def percent(self) -> str:
    """ "63.2%", or "unreliable" for a share above 100% (not a result)."""
    return f"{100 * self.fraction:.1f}%" if self.reliable else "unreliable"


Row = TypeVar("Row")


def measure_next_to_peak(
  measure_row: Callable[[], Row], measure_peak: Callable[[], float]
) -> tuple[Row, float]:
  """(measure_row(), the higher of measure_peak() just before and just after it)."""
  before = measure_peak()
  row = measure_row()
  after = measure_peak()
  return row, max(before, after)


def parse_resolution(text: str) -> tuple[int, int]:
  height, width = text.lower().split("x")
  return int(height), int(width)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m vosjax.bench backbone",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--archs",
    default="dino_vits8,dino_vits16",
    help=f"comma-separated, from {', '.join(vit.VIT_ARCHITECTURES)}",
  )
  parser.add_argument("--resolutions", default="192x384,320x480", help="HxW, comma-separated")
  parser.add_argument("--frames", type=int, default=2, help="frames per timed call (B=1, T)")
  parser.add_argument("--frame-chunk", type=int, default=2, help="frames per forward pass")
  parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--peak-size", type=int, default=2048, help="side of the peak matmul")
  args = parser.parse_args(argv)

  dtype = _DTYPES[args.dtype]
  device = jax.devices()[0]
  print(
    f"device: {device.device_kind} ({device.platform}), {len(jax.devices())} device(s), "
    f"{os.cpu_count()} CPUs visible; load average {os.getloadavg()[0]:.1f} "
    "(a shared, busy machine makes all numbers below noisy)"
  )
  measure_peak = matmul_peak_meter(args.peak_size, dtype, args.repeats)
  print(
    f"peak: {args.peak_size}^2 {args.dtype} jnp.dot, measured just before and after each row "
    "(the higher)\n"
  )

  header = (
    f"{'backbone':<14} {'HxW':>8} {'grid':>6} {'tokens':>6} {'GFLOP/frame':>12} "
    f"{'attn %':>6} {'frames/s':>9} {'GFLOP/s':>8} {'peak':>8} {'% peak':>10}"
  )
  print(header)
  print("-" * len(header))
  rng = np.random.default_rng(0)
  unreliable = 0
  for name in args.archs.split(","):
    config = pretrained.default_backbone_config()
    config.update(name=name, random_init=True, dtype=args.dtype, frame_chunk=args.frame_chunk)
    module, params = pretrained.load_backbone(config)
    extract = features.make_feature_extractor(module, config.frame_chunk)
    for resolution in args.resolutions.split(","):
      height, width = parse_resolution(resolution)
      video = jnp.asarray(rng.uniform(size=(1, args.frames, height, width, 3)), jnp.float32)
      seconds, peak = measure_next_to_peak(
        lambda: best_seconds(lambda: extract(params, video), args.repeats), measure_peak
      )
      arch = module.arch
      flops = vit.vit_flops_per_image(arch, height, width)
      grid = arch.grid_shape(height, width)
      tokens = 1 + arch.num_register_tokens + grid[0] * grid[1]
      attention = arch.depth * 4 * tokens**2 * arch.embed_dim
      fps = args.frames / seconds
      share = PeakShare(gflops=flops * fps / 1e9, peak_gflops=peak)
      unreliable += not share.reliable
      print(
        f"{name:<14} {resolution:>8} {grid[0]:>2}x{grid[1]:<3} {tokens:>6} "
        f"{flops / 1e9:>12.1f} {100 * attention / flops:>6.1f} {fps:>9.2f} "
        f"{share.gflops:>8.1f} {share.peak_gflops:>8.1f} {share.percent():>10}"
      )
  if unreliable:
    print(
      f"\nunreliable: {unreliable} row(s) measured faster than the matmul peak measured next to "
      "them, so the machine's load changed during the measurements; rerun on a quieter machine."
    )
  return 0
