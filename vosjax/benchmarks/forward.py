"""A flow-segmenting config's model forward on synthetic flows: `python -m vosjax.bench forward`.

  python -m vosjax.bench forward --config configs/motion_grouping.py \
      --set "data.resolution=(128,224)" --flows 16 [--repeats 3]

Times the method's `slot_masks` (`methods.interface.PredictsFromFlow`: the flow encoding, the
encoder, slot attention and the decoder, as evaluation runs the model), jitted, on `--flows` random
flows `[N, H, W, 2]` at `data.resolution`, with initialised parameters (speed does not depend on
them). Reports the compile time, every timed call, their median, and the peak memory. The
official side of the Motion Grouping row: `benchmarks/official/motion_grouping.py forward
--pairs 8` (16 flows; docs/benchmarks_official.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np

from vosjax import methods
from vosjax.benchmarks import _config_file as config_file
from vosjax.benchmarks import train as bench_train
from vosjax.core import host_memory
from vosjax.methods import interface


def benchmark(config, flows: int, repeats: int) -> dict:
  """Compiles and times `slot_masks` of `config`'s method on `flows` random flows."""
  method = methods.load_method(config)
  if not isinstance(method, interface.PredictsFromFlow):
    raise SystemExit(
      f"config method {config.method!r} does not segment from flow (no slot_masks): "
      "`bench forward` times flow-segmenting methods (e.g. configs/motion_grouping.py)"
    )
  model = method.make_model(config)
  params = method.init_params(
    model, config, jax.random.key(config.seed), method.example_batch(config)
  )
  rng = np.random.default_rng(0)
  flow = (rng.uniform(size=(flows,) + tuple(config.data.resolution) + (2,)) * 4).astype(np.float32)
  forward = jax.jit(lambda p, f: method.slot_masks(p, model, f, config))
  start = time.perf_counter()
  masks = jax.block_until_ready(forward(params, flow))  # compiles, then runs once
  first = time.perf_counter() - start
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(forward(params, flow))
    seconds.append(time.perf_counter() - start)
  memory, memory_kind = bench_train.peak_memory_bytes(jax.devices()[:1])
  return {
    "config_method": config.method,
    "flows": flows,
    "resolution": tuple(config.data.resolution),
    "slots": int(masks.shape[1]),
    "compile_s": first - statistics.median(seconds),
    "seconds": seconds,
    "median_s": statistics.median(seconds),
    "peak_memory_gib": memory / 2**30,
    "peak_memory_kind": memory_kind,
    "load_average": os.getloadavg()[0],
    "host_memory": host_memory.describe(),
  }


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m vosjax.bench forward",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--config", required=True)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--flows", type=int, default=16, help="flow images per call")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
  args = parser.parse_args(argv)
  if args.flows < 1 or args.repeats < 1:
    parser.error("--flows and --repeats must be >= 1")
  config = config_file.load_config(args.config, args.set)
  result = benchmark(config, args.flows, args.repeats)
  height, width = result["resolution"]
  print(f"{args.config} {' '.join(args.set)}")
  print(
    f"  {jax.devices()[0].device_kind}: {result['flows']} flows at {height}x{width}, "
    f"{result['slots']} slots: compile {result['compile_s']:.1f} s | median "
    f"{result['median_s']:.2f} s per call ({', '.join(f'{s:.2f}' for s in result['seconds'])}) "
    f"| {result['peak_memory_kind']} {result['peak_memory_gib']:.2f} GiB (load average "
    f"{result['load_average']:.1f})"
  )
  print(f"  host memory: {result['host_memory']}")
  return 0
