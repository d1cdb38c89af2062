"""A config's training step and inference, AOT-compiled for a TPU topology on this (CPU) host.

  python -m vosjax.bench tpu --config configs/movi_e.py --topology v5e:4x4 [--set KEY=VALUE ...]
      [--programs train,predict] [--json FILE]
  python -m vosjax.bench tpu --table [--out docs/tpu.md] [--config A,B] [--topology X,Y]
      (docs/tpu.md's table; resumable, see vosjax/benchmarks/_tpu_table.py)

Needs libtpu (`pip install 'jax[tpu]'` of our jax version; the test extra installs it). Nothing
runs on a TPU: every number is XLA's estimate for the compiled program.

Programs:
  train    the loop's own step (`vosjax.train.train_step_function`: the method's loss and
           gradients, its optimizer, the TrainState with its extra state, the non-finite guard),
           jitted as `vosjax.train` jits it over the 1-D `data` mesh of `core.sharding` across every
           chip of the topology; the state replicated, the global batch `config.batch_size` sharded
           on its leading axis as `make_array_from_process_local_data` places it.
  predict  the method's `predict` on one video per chip (global batch = chips): the frames of one
           inference call (`data.eval_chunk_frames`, else `data.eval_frames`, else 24: a MOVi
           video) at `data.resolution`, turned into the method's inputs by its `segment_inputs`
           (e.g. optical flow), at the method's inference resolution.

Reported per program: chips and hosts, per-chip batch, per-chip memory from XLA's memory analysis
(arguments + outputs - aliased + temporaries + code) against the chip's published HBM, FLOPs per
step (matmul FLOPs with loops multiplied out, `core.flops`; XLA's own count, which counts a loop
body once, beside it), XLA's cost-model step time and, where that is not positive, the roofline
max(FLOPs / bf16 peak, bytes accessed / HBM bandwidth) per chip instead; examples/s for the
topology; MFU against the bf16 peak and the derived true-float32 peak; the compile time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vosjax import methods
from vosjax import train
from vosjax.benchmarks import _config_file as config_file
from vosjax.core import flops as flops_lib
from vosjax.core import sharding
from vosjax.core import topology
from vosjax.methods import interface

PROGRAMS = ("train", "predict")
DEFAULT_PREDICT_FRAMES = 24  # a MOVi video


def abstract(tree, sharding_):
  """Arrays or shape structs -> `jax.ShapeDtypeStruct`s carrying `sharding_`."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding_), tree
  )


def global_batch_structs(example: dict, global_batch: int, data_sharding) -> dict:
  """`example` (one example `[1, ...]`) as the global batch `[global_batch, ...]` that
  `make_array_from_process_local_data(data_sharding, ...)` assembles from every host's rows."""
  return {
    k: jax.ShapeDtypeStruct(
      (global_batch,) + np.shape(v)[1:], np.asarray(v).dtype, sharding=data_sharding
    )
    for k, v in example.items()
  }


def predict_example(method, config) -> dict:
  """One video's inputs `[1, T, ...]` for `predict`, from black frames through `segment_inputs`."""
  data = config.data
  frames = data.get("eval_chunk_frames") or data.get("eval_frames") or DEFAULT_PREDICT_FRAMES
  height, width = tuple(data.resolution)
  video = np.zeros((int(frames), height, width, 3), np.uint8)
  with tempfile.TemporaryDirectory() as cache_dir:
    inputs = method.segment_inputs(
      video, config, cache_dir=cache_dir, cache_key="tpu_bench", flow_preset="fast"
    )
  return {k: np.asarray(v)[None] for k, v in inputs.items()}


def build(config, devices, programs=PROGRAMS) -> dict:
  """name -> (jitted function, abstract arguments, the unjitted function) for each program, over
  a `data` mesh of `devices`, and the mesh."""
  method = methods.load_method(config)
  topology.check_divisible(config.batch_size, devices, "batch_size")
  mesh = sharding.make_mesh(devices)
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  model, tx = method.make_model(config), method.make_optimizer(config)
  if isinstance(model, flax.linen.Module):
    model_argument, bind = None, (lambda argument: model)
  else:  # a pytree model holding frozen arrays, replicated (`sharding.place_model`)
    model_argument, bind = abstract(model, replicated), (lambda argument: argument)
  example = method.example_batch(config)
  init_extra, _ = interface.extra_state_hooks(method)

  def init_state(rng):  # as `train.create_train_state` builds it
    params = method.init_params(model, config, rng, example)
    return train.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      extra=init_extra(params, config),
    )

  state_shapes = jax.eval_shape(init_state, jax.random.key(config.seed))
  state = abstract(state_shapes, replicated)
  state_shardings = jax.tree.map(lambda _: replicated, state_shapes)
  rng = abstract(jax.eval_shape(lambda: jax.random.key(0)), replicated)
  built = {}
  if "train" in programs:
    step = train.train_step_function(method, config, tx, bind)
    jitted = train.jit_train_step(step, state_shardings, data_sharding)
    batch = global_batch_structs(example, config.batch_size, data_sharding)
    built["train"] = (jitted, (state, batch, rng, model_argument), step, config.batch_size)
  if "predict" in programs:
    inputs = global_batch_structs(predict_example(method, config), len(devices), data_sharding)

    def predict(params, batch, model_argument):
      return method.predict(params, bind(model_argument), batch, config)

    jitted = jax.jit(predict, in_shardings=(replicated, data_sharding, replicated))
    built["predict"] = (jitted, (state.params, inputs, model_argument), predict, len(devices))
  return built, mesh


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  memory = {
    "argument": m.argument_size_in_bytes,
    "output": m.output_size_in_bytes,
    "alias": m.alias_size_in_bytes,
    "temp": m.temp_size_in_bytes,
    "code": m.generated_code_size_in_bytes,
  }
  memory["total"] = (
    memory["argument"] + memory["output"] - memory["alias"] + memory["temp"] + memory["code"]
  )
  return memory


def per_chip_batch(compiled, global_batch: int) -> int:
  """The leading-axis size of each chip's shard of the batch, read from the compiled shardings."""
  batch_sharding = jax.tree.leaves(compiled.input_shardings[0][1])[0]
  return batch_sharding.shard_shape((global_batch, 1))[0]


def analyse(name, jitted, args, function, global_batch, devices, mesh) -> dict:
  """Compiles one program for `devices` and reads XLA's analyses; see the module docstring."""
  chip = topology.chip(devices[0])
  result = {
    "program": name,
    "device_kind": devices[0].device_kind,
    "chips": len(devices),
    "hosts": topology.hosts(devices),
    "global_batch": global_batch,
    "hbm_bytes": chip.hbm_bytes,
    "bf16_flops_per_s": chip.bf16_flops_per_s,
    "fp32_flops_per_s": chip.fp32_flops_per_s,
    "hbm_bytes_per_s": chip.hbm_bytes_per_s,
    "chip_source": chip.source,
  }
  with jax.set_mesh(mesh):
    count = flops_lib.matmul_flops(function, *args)
    start = time.perf_counter()
    try:
      compiled = jitted.lower(*args).compile()
    except Exception as error:  # pylint: disable=broad-except  # XLA refuses: the reason is data
      message = " ".join(str(error).split())
      if "RESOURCE_EXHAUSTED" not in message and "exceeds" not in message:
        raise
      result.update(fits=False, error=message[:400], compile_s=time.perf_counter() - start)
      result.update(per_chip_batch=global_batch // len(devices), flops=count.flops)
      return result
  result["compile_s"] = time.perf_counter() - start
  cost, memory = _cost(compiled), _memory(compiled)
  flops_per_chip = count.flops / len(devices)
  bytes_accessed = float(cost.get("bytes accessed", 0.0))
  cost_model_s = float(cost.get("optimal_seconds", 0.0))
  roofline_s = max(flops_per_chip / chip.bf16_flops_per_s, bytes_accessed / chip.hbm_bytes_per_s)
  usable = cost_model_s > 0
  step_s = cost_model_s if usable else roofline_s
  result.update(
    fits=memory["total"] <= chip.hbm_bytes,
    per_chip_batch=per_chip_batch(compiled, global_batch),
    memory=memory,
    flops=count.flops,
    unbounded_loops=count.unbounded_loops,
    xla_flops_per_chip=float(cost.get("flops", 0.0)),
    xla_bytes_accessed_per_chip=bytes_accessed,
    cost_model_s=cost_model_s,
    roofline_s=roofline_s,
    step_s=step_s,
    step_s_source="cost model" if usable else "roofline (cost model not positive)",
    examples_per_s=global_batch / step_s if step_s > 0 else None,
    mfu_bf16=flops_per_chip / step_s / chip.bf16_flops_per_s if step_s > 0 else None,
    mfu_fp32=flops_per_chip / step_s / chip.fp32_flops_per_s if step_s > 0 else None,
    hlo_cpu_only="cpu_only/" in compiled.as_text(),
    compiled=compiled,
  )
  return result


def run(config, topology_name: str, programs=PROGRAMS) -> list[dict]:
  """Builds and compiles `programs` of `config` for `topology_name`; one result per program."""
  devices = topology.devices(topology_name)
  built, mesh = build(config, devices, programs)
  results = []
  for name, (jitted, args, function, global_batch) in built.items():
    result = analyse(name, jitted, args, function, global_batch, devices, mesh)
    result.update(topology=topology_name, config_method=config.method)
    results.append(result)
  return results


def _gib(n) -> str:
  return f"{n / 2**30:.2f} GiB"


def _fp32_share(r: dict) -> str:
  """The share of the derived float32 peak, or why it is not a bound (above 100 %: the step's
  float32 matmuls run as one bf16 pass at XLA's default precision, not as six)."""
  share = 100 * r["mfu_fp32"]
  if share > 100:
    return f"n/a ({share:.0f}%: its float32 matmuls run as single bf16 passes, default precision)"
  return f"{share:.1f}%"


def describe(r: dict) -> str:
  head = (
    f"{r['program']} on {r['topology']} ({r['device_kind']}: {r['chips']} chips, {r['hosts']} "
    f"hosts), global batch {r['global_batch']} = {r['per_chip_batch']} per chip"
  )
  if "memory" not in r:
    return f"{head}\n  does NOT fit: {r['error']}"
  m = r["memory"]
  lines = [
    head,
    f"  memory per chip (XLA): {_gib(m['total'])} of {_gib(r['hbm_bytes'])} HBM "
    f"({'fits' if r['fits'] else 'does NOT fit'}): args {_gib(m['argument'])}, temp "
    f"{_gib(m['temp'])}, output {_gib(m['output'])} (aliased {_gib(m['alias'])}), code "
    f"{_gib(m['code'])}",
    f"  FLOPs per step: {r['flops'] / 1e12:.4g} TFLOP (matmul, loops multiplied out; XLA's count "
    f"{r['xla_flops_per_chip'] * r['chips'] / 1e12:.4g} TFLOP counts loop bodies once)",
    f"  step time (XLA estimate): {r['step_s'] * 1e3:.3f} ms from the {r['step_s_source']}"
    f" (cost model {r['cost_model_s'] * 1e3:.3f} ms; roofline max(FLOPs/{r['bf16_flops_per_s']:.3g}"
    f", bytes/{r['hbm_bytes_per_s']:.3g}) = {r['roofline_s'] * 1e3:.3f} ms)",
    f"  {r['examples_per_s']:.1f} examples/s for the topology; MFU {100 * r['mfu_bf16']:.1f}% of "
    f"the bf16 peak {r['bf16_flops_per_s'] / 1e12:.0f} TFLOP/s, {_fp32_share(r)} of "
    f"the float32 peak {r['fp32_flops_per_s'] / 1e12:.1f} TFLOP/s (bf16 / 6, derived) per chip "
    f"({r['chip_source']})",
    f"  compile {r['compile_s']:.1f} s; CPU-only code paths in the program: "
    f"{'YES' if r['hlo_cpu_only'] else 'none'}",
  ]
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m vosjax.bench tpu",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--config")
  parser.add_argument("--topology", default=None, help="default v5e:4x4 (--table: its five)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--programs", default=",".join(PROGRAMS))
  parser.add_argument("--json", default=None, help="also write the results to this file")
  parser.add_argument("--table", action="store_true", help="regenerate docs/tpu.md's table")
  parser.add_argument("--out", default="docs/tpu.md", help="with --table: the file to write")
  parser.add_argument(
    "--predict-largest",
    action="store_true",
    help="with --table: the largest batch from two compiles' memory line, not compiled to check",
  )
  parser.add_argument(
    "--readme",
    default="README.md",
    help="with --table: also write the compact table here ('' for no)",
  )
  parser.add_argument(
    "--render-only", action="store_true", help="with --table: rewrite the tables from the JSON only"
  )
  args = parser.parse_args(argv)
  if args.table:
    from vosjax.benchmarks import _tpu_table as tpu_table  # pylint: disable=g-import-not-at-top

    try:
      return tpu_table.main(
        run,
        args.out,
        configs=args.config.split(",") if args.config else None,
        topologies=args.topology.split(",") if args.topology else tpu_table.TOPOLOGIES,
        verify=not args.predict_largest,
        readme=args.readme or None,
        compile_cells=not args.render_only,
      )
    except topology.TopologyError as error:
      print(f"vosjax.bench tpu: {error}", file=sys.stderr)
      return 2
  if not args.config:
    parser.error("--config is required (or --table)")
  programs = tuple(p for p in args.programs.split(",") if p)
  unknown = sorted(set(programs) - set(PROGRAMS))
  if unknown:
    parser.error(f"unknown programs {unknown}; choose from {list(PROGRAMS)}")
  config = config_file.load_config(args.config, args.set)
  try:
    results = run(config, args.topology or "v5e:4x4", programs)
  except (topology.TopologyError, ValueError) as error:
    print(f"vosjax.bench tpu: {error}", file=sys.stderr)
    return 2
  print(f"{args.config} {' '.join(args.set)} (every number is XLA's estimate, not a measurement)")
  for r in results:
    print(describe(r))
    r.pop("compiled", None)
    r.update(config=args.config, overrides=args.set)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  return 0
