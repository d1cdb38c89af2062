"""Every benchmark in one run, for a new machine.

  python -m vosjax.bench all --output DIR [--quick]


Runs, at the official shapes, on `jax.devices()` (CPU, GPU or TPU alike):
- matmul peaks: a square [n, n] x [n, n] jnp.dot in float32 at HIGHEST precision (true float32),
  float32 at the default precision (what the models get: TF32 on recent GPUs, bf16 passes on TPU)
  and bfloat16, timed, in GFLOP/s;
- backbone: DINO ViT-S/8 and ViT-S/16 feature extraction (random weights) at 192x384 and 320x480,
  8 frames, in float32 (and bfloat16 on an accelerator): frames/s, GFLOP/s and MFU (matmul FLOPs
  per frame with loops multiplied out, `core.flops`, next to XLA's cost analysis of one forward
  pass and the analytic count; MFU against the peak of the same dtype at the default precision,
  measured next to the row: see below);
- clustering: Betrayed's hierarchical clustering at T = 24 and 80, key-frame ratio 10, 24x48 tokens
  (planted objects, as `python -m vosjax.bench clustering`): compile s, run s, XLA temp MB;
- keyframes: key-frame attention and clustering at T = 24 for ratios 10, 5, 1 (a clustering
  predicted to exceed --max-seconds from the previous ratio is skipped);
- end_to_end: Betrayed `predict` (ViT-S/8 + spatio-temporal block + clustering) of a 24-frame
  192x384 video, ratio 10 (configs/ytvis.py, random backbone);
- train: the loop's training step (`python -m vosjax.bench train`) of Motion Grouping at the
  official widths, 8 flow pairs at 128x224 (configs/motion_grouping.py), and of Betrayed, 8 clips
  of 3 frames at 192x384 (configs/ytvis.py): steps/s, images/s, peak memory, GFLOP/s and MFU (matmul
  FLOPs of one step with loops multiplied out, `core.flops`; XLA's cost analysis, which counts a
  loop body such as the decoder's chunk `scan` once, is reported beside it).

MFU: the peak of a row is measured just before and just after it (the higher of the two), not once
for the whole run, so that a change of load cannot make a row look faster than the machine. A row
still above 100% of its own peak is marked "unreliable" (`mfu` None, the ratio in
`mfu_unreliable`), never reported as a result.

Writes DIR/benchmarks.json (after every section, so a run cut short keeps what it measured) and
DIR/benchmarks.md (a table with the machine, device count, dtype and measured peaks). `--quick` runs
the same code on tiny shapes (seconds on a CPU; numbers meaningless), `--only` picks sections.
A section that fails is recorded with its error and the run goes on (exit status 1 at the end).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from vosjax import methods
from vosjax.benchmarks import _config_file as config_file
from vosjax.benchmarks import backbone as backbone_bench
from vosjax.benchmarks import keyframes as keyframes_bench
from vosjax.benchmarks import reference_clustering as reference
from vosjax.benchmarks import train as train_bench
from vosjax.core import flops as flops_lib
from vosjax.core import host_memory
from vosjax.core import sharding
from vosjax.methods.betrayed import clustering
from vosjax.methods.betrayed import keyframe_attention as kfa
from vosjax.models import features
from vosjax.models import pretrained
from vosjax.models import vit

SECTIONS = ("backbone", "clustering", "keyframes", "end_to_end", "train")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_TINY_VIT = dict(embed_dim=32, depth=1, num_heads=2)
_TINY_BETRAYED = [
  "backbone.random_init=True",
  "backbone.arch_overrides.embed_dim=32",
  "backbone.arch_overrides.depth=1",
  "backbone.arch_overrides.num_heads=2",
  "model.num_heads=4",
  "loss.num_queries=4",
  "loss.semantic_positives=3",
  "loss.semantic_negatives=6",
  "loss.motion_positives=2",
  "loss.motion_negatives=5",
]
_TINY_MOTION_GROUPING = [
  "model.encoder_widths=(8,8,8)",
  "model.slot_dim=8",
  "model.slot_mlp_hidden_size=8",
  "model.decoder_transpose_widths=(8,8,8)",
  "model.decoder_conv_width=8",
  "model.num_iterations=2",
]


def shapes(quick: bool, accelerator: bool) -> dict:
  """The workloads: official shapes, or tiny ones with `quick` (same code paths)."""
  if quick:
    return dict(
      peak_size=256,
      archs=("dino_vits16",),
      vit_overrides=_TINY_VIT,
      resolutions=((32, 64),),
      frames=2,
      frame_chunk=2,
      dtypes=("float32", "bfloat16"),
      clustering_frames=(7,),
      grid=(4, 6),
      heads=(4, 8),
      ratio=3,
      keyframe_frames=7,
      keyframe_ratios=(3, 1),
      e2e=dict(frames=4, resolution=(32, 64), overrides=_TINY_BETRAYED),
      train=(
        ("configs/demo.py", ["batch_size=2", "data.resolution=(16,16)"] + _TINY_MOTION_GROUPING),
        ("configs/ytvis.py", ["batch_size=2", "data.resolution=(32,32)"] + _TINY_BETRAYED),
      ),
    )
  return dict(
    peak_size=8192 if accelerator else 2048,
    archs=("dino_vits8", "dino_vits16"),
    vit_overrides={},
    resolutions=((192, 384), (320, 480)),
    frames=8,
    frame_chunk=8,
    dtypes=("float32", "bfloat16") if accelerator else ("float32",),
    clustering_frames=(24, 80),
    grid=(24, 48),
    heads=(8, 48),
    ratio=10,
    keyframe_frames=24,
    keyframe_ratios=(10, 5, 1),
    e2e=dict(frames=24, resolution=(192, 384), overrides=["backbone.random_init=True"]),
    train=(
      ("configs/motion_grouping.py", ["batch_size=8", "data.resolution=(128,224)"]),
      ("configs/ytvis.py", ["batch_size=8", "backbone.random_init=True"]),
    ),
  )


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict:
  devices = jax.devices()
  return {
    "cpu": cpu_model(),
    "cpu_count": os.cpu_count(),
    "platform": devices[0].platform,
    "device_kind": devices[0].device_kind,
    "device_count": len(devices),
    "jax_version": jax.__version__,
    "load_average": os.getloadavg()[0],
    "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    "host_memory": host_memory.describe(),
  }


def matmul_peak_meters(size: int, repeats: int) -> dict:
  """name -> a function measuring the GFLOP/s of a jitted [size, size]^2 product (best of
  max(repeats, 5) calls) at each call: float32 at HIGHEST precision, float32 at the default
  precision, bfloat16."""
  settings = (
    ("float32_highest", jnp.float32, jax.lax.Precision.HIGHEST),
    ("float32", jnp.float32, None),
    ("bfloat16", jnp.bfloat16, None),
  )
  return {
    name: backbone_bench.matmul_peak_meter(size, dtype, repeats, precision)
    for name, dtype, precision in settings
  }


def xla_flops(function, *args) -> float | None:
  """FLOPs of `function(*args)` by XLA's cost analysis (None where the backend gives none)."""
  try:
    lowered = jax.jit(function).lower(*args)
    try:
      cost = lowered.cost_analysis()
    except Exception:  # pylint: disable=broad-except
      cost = None
    if not cost:
      cost = lowered.compile().cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def mfu_fields(gflops: float | None, peak: float | None) -> dict:
  """The row's `peak_gflops` (measured next to it) and `mfu`; a share above 1 is no result: `mfu`
  None and the ratio in `mfu_unreliable`."""
  if not gflops or not peak:
    return {"peak_gflops": peak, "mfu": None}
  share = backbone_bench.PeakShare(gflops, peak)
  if share.reliable:
    return {"peak_gflops": peak, "mfu": share.fraction}
  return {"peak_gflops": peak, "mfu": None, "mfu_unreliable": share.fraction}


def bench_backbone(s: dict, peak_meters: dict, repeats: int) -> list[dict]:
  rows = []
  rng = np.random.default_rng(0)
  for name in s["archs"]:
    arch = pretrained.resolve_architecture(name)
    arch = dataclasses.replace(arch, **s["vit_overrides"])
    params = pretrained.random_params(arch, seed=0)
    for dtype in s["dtypes"]:
      module = vit.VisionTransformer(arch, dtype=_DTYPES[dtype])
      extract = features.make_feature_extractor(module, s["frame_chunk"])
      for height, width in s["resolutions"]:
        video = jnp.asarray(rng.uniform(size=(1, s["frames"], height, width, 3)), jnp.float32)
        start = time.perf_counter()
        jax.block_until_ready(extract(params, video))
        first = time.perf_counter() - start
        seconds, peak = backbone_bench.measure_next_to_peak(
          lambda: backbone_bench.best_seconds(lambda: extract(params, video), repeats),
          peak_meters[dtype],
        )
        chunk = jnp.zeros((s["frame_chunk"], height, width, 3), _DTYPES[dtype])
        # Counted on the full-attention program (maps returned): the query-chunked attention that
        # the extraction runs on CPU does the same FLOPs in a `while` loop, counted once by XLA.
        flops = xla_flops(
          lambda p, x: module.apply({"params": p}, x, return_attention=True), params, chunk
        )
        flops = flops / s["frame_chunk"] if flops else None
        # What MFU is computed from: the extraction's own matmul FLOPs, loops multiplied out.
        counted = flops_lib.matmul_flops(extract, params, video).flops / s["frames"]
        analytic = vit.vit_flops_per_image(arch, height, width)
        fps = s["frames"] / seconds
        gflops = counted * fps / 1e9
        rows.append(
          {
            "arch": name,
            "resolution": f"{height}x{width}",
            "frames": s["frames"],
            "dtype": dtype,
            "compile_s": first - seconds,
            "run_s": seconds,
            "frames_per_s": fps,
            "flops_per_frame": counted,
            "xla_flops_per_frame": flops,
            "analytic_flops_per_frame": analytic,
            "gflops_per_s": gflops,
            **mfu_fields(gflops, peak),
          }
        )
  return rows


def _cluster_once(q, k, grid, ratio) -> dict:
  start = time.perf_counter()
  compiled = clustering.hierarchical_cluster.lower(
    q, k, grid_shape=grid, tau=clustering.TAU_MULTI_OBJECT, ratio=ratio
  ).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  start = time.perf_counter()
  result = jax.block_until_ready(compiled(q, k, tau=clustering.TAU_MULTI_OBJECT))
  levels = int(result.num_levels)
  return {
    "compile_s": compile_s,
    "run_s": time.perf_counter() - start,
    "temp_mb": memory.temp_size_in_bytes / 2**20 if memory is not None else None,
    "clusters_per_level": [int(c) for c in np.asarray(result.num_clusters[:levels])],
    "overflow": bool(result.overflow),
  }


def _planted(s: dict, frames: int):
  heads, head_dim = s["heads"]
  return reference.planted_query_key(
    frames, s["grid"][0] * s["grid"][1], heads, head_dim, 8, 0, strength=1.0, noise=0.7
  )


def bench_clustering(s: dict) -> list[dict]:
  rows = []
  for frames in s["clustering_frames"]:
    q, k = _planted(s, frames)
    keys = len(kfa.key_frame_indices(frames, s["ratio"])) * s["grid"][0] * s["grid"][1]
    rows.append(
      {
        "frames": frames,
        "ratio": s["ratio"],
        "grid": list(s["grid"]),
        "key_tokens": keys,
        **_cluster_once(q, k, s["grid"], s["ratio"]),
      }
    )
  return rows


def bench_keyframes(s: dict, max_seconds: float) -> list[dict]:
  rows = []
  frames = s["keyframe_frames"]
  q, k = _planted(s, frames)
  attention = jax.jit(keyframes_bench.attention_argmax, static_argnames=("ratio", "head_dim"))
  previous = None  # (key tokens, clustering seconds)
  for ratio in s["keyframe_ratios"]:
    keys = len(kfa.key_frame_indices(frames, ratio)) * s["grid"][0] * s["grid"][1]
    _, attention_s, attention_mb, _ = keyframes_bench.measure(
      attention, q, k, ratio=ratio, head_dim=s["heads"][1]
    )
    row = {
      "frames": frames,
      "ratio": ratio,
      "key_tokens": keys,
      "attention_run_s": attention_s,
      "attention_temp_mb": attention_mb,
    }
    predicted = None if previous is None else previous[1] * keys / previous[0]
    if predicted is not None and predicted > max_seconds:
      row["clustering_skipped_predicted_s"] = predicted
    else:
      measured = _cluster_once(q, k, s["grid"], ratio)
      previous = (keys, measured["run_s"])
      row.update({f"clustering_{name}": value for name, value in measured.items()})
    rows.append(row)
  return rows


def bench_end_to_end(s: dict) -> list[dict]:
  e2e = s["e2e"]
  config = config_file.load_config(
    "configs/ytvis.py", e2e["overrides"] + ["model.inference_resolution=None", "batch_size=1"]
  )
  method = methods.load_method(config)
  model = method.make_model(config)
  params = method.init_params(model, config, jax.random.key(0), method.example_batch(config))
  mesh = sharding.make_mesh(jax.devices()[:1])
  predict = sharding.jit_predict(method, model, config, mesh, getattr(method, "grown_config", None))
  video = (
    np.random.default_rng(0)
    .uniform(size=(1, e2e["frames"]) + tuple(e2e["resolution"]) + (3,))
    .astype(np.float32)
  )
  batch = {"video": jnp.asarray(video)}
  start = time.perf_counter()
  jax.block_until_ready(predict(params, batch))
  first = time.perf_counter() - start
  start = time.perf_counter()
  prediction = jax.block_until_ready(predict(params, batch))
  seconds = time.perf_counter() - start
  return [
    {
      "method": config.method,
      "frames": e2e["frames"],
      "resolution": "x".join(map(str, e2e["resolution"])),
      "ratio": config.model.key_frame_ratio,
      "compile_s": first - seconds,
      "run_s": seconds,
      "frames_per_s": e2e["frames"] / seconds,
      "clusters": int(np.asarray(prediction["num_clusters"])[0]),
    }
  ]


def bench_train(s: dict, peak_meters: dict, steps: int) -> list[dict]:
  rows = []
  for path, overrides in s["train"]:
    config = config_file.load_config(path, overrides)
    result, peak = backbone_bench.measure_next_to_peak(
      lambda: train_bench.benchmark(config, steps),
      peak_meters["float32"],
    )
    gflops = (
      result["flops_per_step"] * result["steps_per_s"] / 1e9 if result["flops_per_step"] else None
    )
    rows.append(
      {
        "config": path,
        "overrides": overrides,
        **result,
        "gflops_per_s": gflops,
        **mfu_fields(gflops, peak),
      }
    )
  return rows


def _cell(value, digits: int = 2) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def _mfu_cell(row: dict) -> str:
  if row.get("mfu_unreliable") is not None:
    return "unreliable"
  return "-" if row.get("mfu") is None else f"{100 * row['mfu']:.1f}%"


def markdown(report: dict) -> str:
  m, peaks = report["machine"], report.get("matmul_peak_gflops", {})
  lines = [
    f"# vosjax benchmarks ({'quick, tiny shapes' if report['quick'] else 'official shapes'})",
    "",
    f"- machine: {m['cpu']} ({m['cpu_count']} CPUs), device {m['device_kind']} "
    f"({m['platform']}) x {m['device_count']}; jax {m['jax_version']}; "
    f"load average {m['load_average']:.1f}; {m['date_utc']} UTC",
    f"- host memory: {m['host_memory']}",
    f"- measured matmul peak at the start ({report['peak_size']}^2 jnp.dot, GFLOP/s): float32 "
    f"(HIGHEST) {_cell(peaks.get('float32_highest'), 1)}, float32 (default precision) "
    f"{_cell(peaks.get('float32'), 1)}, bfloat16 {_cell(peaks.get('bfloat16'), 1)}",
    "- MFU: achieved GFLOP/s over the peak of the same dtype at the default precision, measured "
    "just before and after the row (the higher); FLOPs from XLA's cost analysis (backbone: per "
    'forward pass; train: per step); "unreliable": the row beat its own peak, so the load '
    "changed during the measurements (rerun on a quieter machine)",
    "",
    "| benchmark | workload | dtype | compile s | run s | throughput | GFLOP/s | MFU |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for row in report.get("backbone", []):
    lines.append(
      f"| backbone | {row['arch']} {row['resolution']}, {row['frames']} frames | "
      f"{row['dtype']} | {_cell(row['compile_s'], 1)} | {_cell(row['run_s'])} | "
      f"{row['frames_per_s']:.2f} frames/s | {row['gflops_per_s']:.1f} | "
      f"{_mfu_cell(row)} |"
    )
  for row in report.get("clustering", []):
    lines.append(
      f"| clustering | T={row['frames']} ratio {row['ratio']}, "
      f"{row['grid'][0]}x{row['grid'][1]} tokens, K'={row['key_tokens']} | float32 | "
      f"{_cell(row['compile_s'], 1)} | {_cell(row['run_s'])} | clusters "
      f"{'-'.join(map(str, row['clusters_per_level']))}, temp "
      f"{_cell(row['temp_mb'], 0)} MB | - | - |"
    )
  for row in report.get("keyframes", []):
    run = row.get("clustering_run_s")
    skipped = row.get("clustering_skipped_predicted_s")
    cluster = (
      f"clustering {run:.2f} s" if run is not None else f"clustering skipped (~{skipped:.0f} s)"
    )
    lines.append(
      f"| keyframes | T={row['frames']} ratio {row['ratio']}, K'={row['key_tokens']} "
      f"| float32 | {_cell(row.get('clustering_compile_s'), 1)} | "
      f"{_cell(row['attention_run_s'])} (attention) | {cluster} | - | - |"
    )
  for row in report.get("end_to_end", []):
    lines.append(
      f"| end_to_end | {row['method']} predict, T={row['frames']} {row['resolution']} "
      f"ratio {row['ratio']} | float32 | {_cell(row['compile_s'], 1)} | "
      f"{_cell(row['run_s'])} | {row['frames_per_s']:.2f} frames/s | - | - |"
    )
  for row in report.get("train", []):
    lines.append(
      f"| train | {row['config']} {row['config_method']}, batch {row['batch_size']} | "
      f"float32 | {_cell(row['compile_s'], 1)} | {1 / row['steps_per_s']:.3f} /step | "
      f"{row['images_per_s']:.1f} images/s, {row['peak_memory_gib']:.2f} GiB "
      f"({row['peak_memory_kind']}) | {_cell(row['gflops_per_s'], 1)} | "
      f"{_mfu_cell(row)} |"
    )
  for name, error in report.get("errors", {}).items():
    lines.append(f"| {name} | FAILED: {error.splitlines()[-1][:200]} | | | | | | |")
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m vosjax.bench all",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--output", required=True, help="folder for benchmarks.json and .md")
  parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke run in seconds")
  parser.add_argument(
    "--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}"
  )
  parser.add_argument("--repeats", type=int, default=None, help="timed calls, best of (2; quick 1)")
  parser.add_argument(
    "--train-steps", type=int, default=None, help="timed training steps (5; quick 1)"
  )
  parser.add_argument(
    "--max-seconds",
    type=float,
    default=600.0,
    help="keyframes: skip a clustering predicted to take longer",
  )
  args = parser.parse_args(argv)
  sections = [name for name in args.only.split(",") if name]
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    parser.error(f"--only: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")

  repeats = args.repeats or (1 if args.quick else 2)
  train_steps = args.train_steps or (1 if args.quick else 5)
  info = machine()
  s = shapes(args.quick, accelerator=info["platform"] != "cpu")
  output = pathlib.Path(args.output)
  output.mkdir(parents=True, exist_ok=True)
  report = {"quick": args.quick, "machine": info, "peak_size": s["peak_size"], "errors": {}}

  def write():
    report["machine"]["load_average_end"] = os.getloadavg()[0]
    (output / "benchmarks.json").write_text(json.dumps(report, indent=1))
    (output / "benchmarks.md").write_text(markdown(report))

  print(
    f"{info['device_kind']} x {info['device_count']} ({info['platform']}), {info['cpu']}",
    flush=True,
  )
  peak_meters = matmul_peak_meters(s["peak_size"], repeats)
  report["matmul_peak_gflops"] = {name: measure() for name, measure in peak_meters.items()}
  print(f"matmul peak GFLOP/s: {report['matmul_peak_gflops']}", flush=True)
  runners = {
    "backbone": lambda: bench_backbone(s, peak_meters, repeats),
    "clustering": lambda: bench_clustering(s),
    "keyframes": lambda: bench_keyframes(s, args.max_seconds),
    "end_to_end": lambda: bench_end_to_end(s),
    "train": lambda: bench_train(s, peak_meters, train_steps),
  }
  for name in sections:
    start = time.perf_counter()
    try:
      report[name] = runners[name]()
    except Exception:  # pylint: disable=broad-except  # keep the other sections' numbers
      report["errors"][name] = traceback.format_exc()
      print(f"{name}: FAILED\n{report['errors'][name]}", flush=True)
    print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    write()
  write()
  print((output / "benchmarks.md").read_text())
  return 1 if report["errors"] else 0
