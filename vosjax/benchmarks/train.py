"""Any config's jitted training step on synthetic inputs: `python -m vosjax.bench train`.

  python -m vosjax.bench train --config configs/motion_grouping.py [--set KEY=VALUE ...]
      [--steps 20] [--devices N] [--json FILE]

The batch has the configured shapes (`method.example_batch(config)` repeated to
`config.batch_size`, random values: speed does not depend on them) and goes through the loop's own
step (`vosjax.train.make_train_step`: loss, gradients, optimizer, non-finite guard, extra state)
on a `data` mesh of the first `--devices` devices (default all). Reports the compile time, steps/s,
examples/s, images/s (an image: one `[H, W, C]` plane of an input, e.g. each of Motion Grouping's
two flows, or each frame of a clip) and the peak memory: the device's peak bytes where the backend
reports them (GPU, TPU), else the process's peak resident memory (CPU).

Configs that load pretrained weights need `--set backbone.random_init=True` where none are here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vosjax import methods
from vosjax import train
from vosjax.benchmarks import _config_file as config_file
from vosjax.core import flops as flops_lib
from vosjax.core import host_memory
from vosjax.core import sharding


def synthetic_batch(example: dict, batch_size: int, seed: int = 0) -> dict:
  """`example` (arrays `[1, ...]`) -> random arrays `[batch_size, ...]` of the same dtypes: uniform
  [0, 1) floats (frames) scaled by 4 for 2-channel inputs (flow in pixels), zeros for ints."""
  rng = np.random.default_rng(seed)
  batch = {}
  for name, value in example.items():
    shape = (batch_size,) + np.shape(value)[1:]
    if np.issubdtype(np.asarray(value).dtype, np.floating):
      scale = 4.0 if shape[-1] == 2 else 1.0
      batch[name] = (rng.uniform(size=shape) * scale).astype(np.asarray(value).dtype)
    else:
      batch[name] = np.zeros(shape, np.asarray(value).dtype)
  return batch


def images_per_example(example: dict) -> int:
  """Planes `[H, W, C]` per example: over inputs of >= 4 dims, the product of the dims between the
  batch axis and the last three."""
  return sum(int(np.prod(np.shape(v)[1:-3])) for v in example.values() if np.ndim(v) >= 4)


def peak_memory_bytes(devices) -> tuple[int, str]:
  stats = [d.memory_stats() for d in devices]
  if all(s and "peak_bytes_in_use" in s for s in stats):
    return max(s["peak_bytes_in_use"] for s in stats), "device peak"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def step_flops(step_fn, state, batch, rng) -> tuple[float, float | None]:
  """FLOPs of one training step: (matmul FLOPs with loops multiplied out, `core.flops`, the figure
  MFU is computed from; XLA's cost analysis of the step's program, lowered again and not run, in
  which a loop body counts once, or None where the backend gives none)."""
  counted = flops_lib.matmul_flops(step_fn, state, batch, rng).flops
  try:
    lowered = jax.jit(step_fn).lower(state, batch, rng)
    cost = lowered.cost_analysis() or lowered.compile().cost_analysis()
  except Exception:  # pylint: disable=broad-except  # XLA's figure is only shown beside ours
    return counted, None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return counted, (float(flops) if flops and flops > 0 else None)


def benchmark(config, steps: int, devices=None) -> dict:
  """Compiles and times the training step of `config`; returns the measurements."""
  devices = jax.devices() if devices is None else devices
  method = methods.load_method(config)
  mesh = sharding.make_mesh(devices)
  if config.batch_size % len(devices):
    raise ValueError(
      f"config.batch_size={config.batch_size} is not divisible by {len(devices)} "
      "devices; set --set batch_size=... or --devices."
    )
  data_sharding = NamedSharding(mesh, P("data"))
  model, tx = method.make_model(config), method.make_optimizer(config)
  example = method.example_batch(config)
  state, state_shardings = train.create_train_state(method, model, config, tx, mesh)
  batch = sharding.to_global(synthetic_batch(example, config.batch_size), data_sharding)
  step_fn = train.make_train_step(method, model, config, tx, state_shardings, data_sharding)
  rng = jax.random.key(config.seed)

  start = time.perf_counter()
  state, metrics = step_fn(state, batch, rng)  # compiles, then runs once
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, batch, rng)
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - start
  steps_per_s = steps / seconds
  memory, memory_kind = peak_memory_bytes(devices)
  flops, xla_flops = step_flops(step_fn, state, batch, rng)
  return {
    "config_method": config.method,
    "batch_size": config.batch_size,
    "devices": len(devices),
    "device_kind": devices[0].device_kind,
    "compile_s": first - seconds / steps,  # the first call minus one step
    "steps_per_s": steps_per_s,
    "examples_per_s": steps_per_s * config.batch_size,
    "images_per_s": steps_per_s * config.batch_size * images_per_example(example),
    "peak_memory_gib": memory / 2**30,
    "peak_memory_kind": memory_kind,
    "loss": float(metrics["loss"]),
    "finite": bool(metrics["finite"]),
    "flops_per_step": flops,  # matmul FLOPs, loops multiplied out (`core.flops`)
    "xla_flops_per_step": xla_flops,  # XLA's count: a loop body once
    "load_average": os.getloadavg()[0],
    "host_memory": host_memory.describe(),
  }


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m vosjax.bench train",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--config", required=True)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--steps", type=int, default=20, help="timed steps after the first")
  parser.add_argument("--devices", type=int, default=None, help="default: every device")
  parser.add_argument("--json", default=None, help="also write the result to this file")
  args = parser.parse_args(argv)
  config = config_file.load_config(args.config, args.set)
  devices = jax.devices()[: args.devices] if args.devices else jax.devices()
  result = benchmark(config, args.steps, devices)
  result.update(config=args.config, overrides=args.set)
  print(f"{args.config} {' '.join(args.set)}")
  print(
    f"  {result['device_kind']} x {result['devices']}, batch {result['batch_size']}: "
    f"compile {result['compile_s']:.1f} s | {result['steps_per_s']:.2f} steps/s "
    f"({1 / result['steps_per_s']:.2f} s/step, mean of {args.steps}) | "
    f"{result['examples_per_s']:.1f} examples/s | {result['images_per_s']:.1f} images/s | "
    f"{result['peak_memory_kind']} {result['peak_memory_gib']:.2f} GiB | "
    f"{result['flops_per_step'] / 1e9:.1f} GFLOP/step (matmul, loops multiplied out) | loss "
    f"{result['loss']:.4g} (load average {result['load_average']:.1f})"
  )
  print(f"  host memory: {result['host_memory']}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return 0
