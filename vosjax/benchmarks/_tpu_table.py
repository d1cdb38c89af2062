"""docs/tpu.md's table "Compiled for TPU (on a CPU host)": `python -m vosjax.bench tpu --table`.

Every config of configs/ (pretrained backbones replaced by random ones: same shapes) has its
training step compiled for each topology of `TOPOLOGIES` at its shipped global batch (rounded up to
a multiple of the chips where it does not divide) and at the largest per-chip batch that fits:
per-chip memory is linear in the per-chip batch, so two compiles give the line, and the batch it
predicts for the chip's HBM is compiled to check it (shrunk until it compiles and fits), or with
`--predict-largest` reported as predicted from the two compiles without that third compile (memory
and FLOPs on their lines; the time per example that of the larger compile: see `_predicted`).
Where memory does not grow between the two compiles, no bound is claimed (`unbounded`).
Results are kept in `<out>.json` beside the table, cell by cell: a run that is cut short keeps
them and the next run computes only the missing cells (delete the file to recompute everything).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time

from vosjax.benchmarks import _config_file as config_file
from vosjax.core import topology

BEGIN = "<!-- table: python -m vosjax.bench tpu --table -->"
README_BEGIN = "<!-- tpu table: python -m vosjax.bench tpu --table (compact) -->"
TOPOLOGIES = ("v5e-16", "v4-32", "v5p-16", "v6e-16", "v5e-256")
# Training videos of each config's dataset (an epoch: one clip per training video) and the source.
DATASETS = {
  "demo.py": (384, "vosjax_synthetic/64x64_o1-1 train split (vosjax/data/synthetic.py)"),
  "slot_attention.py": (384, "vosjax_synthetic/64x64 train split (vosjax/data/synthetic.py)"),
  "motion_grouping.py": (9750, "MOVi-E train split (Kubric TFDS catalog, movi_e 1.0.0)"),
  "movi_e.py": (9750, "MOVi-E train split (Kubric TFDS catalog, movi_e 1.0.0)"),
  "davis2016.py": (30, "DAVIS-2016 train set (Perazzi et al. 2016: 30 of 50 sequences)"),
  "smtc_davis.py": (18, "the DAVIS-2016 sequences of ../shared/data (configs/smtc_davis.py)"),
  "smtc_ytvos.py": (3471, "YouTube-VOS 2018 train (Xu et al. 2018)"),
  "ytvis.py": (2238, "YouTube-VIS 2019 train (Yang et al. 2019)"),
}


def _overrides(config_path: str) -> list[str]:
  config = config_file.load_config(config_path, [])
  return ["backbone.random_init=True"] if "backbone" in config else []


def _cell(run, config_path: str, topology_name: str, per_chip: int, chips: int) -> dict:
  sets = _overrides(config_path) + [f"batch_size={per_chip * chips}"]
  config = config_file.load_config(config_path, sets)
  try:
    (result,) = run(config, topology_name, ("train",))
  except Exception as error:  # pylint: disable=broad-except  # recorded in the table
    return {"per_chip_batch": per_chip, "fits": False, "error": " ".join(str(error).split())[:300]}
  result.pop("compiled", None)
  result["num_train_steps"] = int(config.num_train_steps)
  print(
    f"  {os.path.basename(config_path)} {topology_name} {per_chip}/chip: fits {result['fits']}, "
    f"compile {result['compile_s']:.0f} s",
    flush=True,
  )
  return result


def _predicted(first: dict, second: dict, per_chip: int) -> dict:
  """The program at `per_chip` examples per chip from two compiled ones, marked as predicted (not
  compiled): memory and FLOPs on their lines through the two (both linear in the batch); the time
  per example that of the larger compile (a roofline's byte count is not: XLA counts a loop body
  once, and the loops' shapes change with the batch), so the throughput is that compile's."""
  b1, b2 = first["per_chip_batch"], second["per_chip_batch"]

  def line(a, b):
    return a + (b - a) / (b2 - b1) * (per_chip - b1)

  result = dict(second, per_chip_batch=per_chip, predicted=True)
  result["from_compiles"] = [
    {k: r[k] for k in ("per_chip_batch", "memory", "flops", "step_s")} for r in (first, second)
  ]
  result["memory"] = {"total": line(first["memory"]["total"], second["memory"]["total"])}
  result["flops"] = line(first["flops"], second["flops"])
  result["step_s"] = second["step_s"] * per_chip / b2
  chips, step = result["chips"], result["step_s"]
  result["examples_per_s"] = per_chip * chips / step
  result["mfu_bf16"] = result["flops"] / chips / step / result["bf16_flops_per_s"]
  result["mfu_fp32"] = result["flops"] / chips / step / result["fp32_flops_per_s"]
  result["fits"] = result["memory"]["total"] <= result["hbm_bytes"]
  return result


def _largest(run, config_path, topology_name, chips, first: dict, verify: bool) -> dict:
  """The largest per-chip batch that fits: from the memory line through two compiles, the
  predicted batch compiled to check it when `verify` (else reported as predicted)."""
  b1 = first["per_chip_batch"]
  if not first.get("fits") or "memory" not in first:
    b = b1
    while b > 1:  # halve until it fits
      b //= 2
      result = _cell(run, config_path, topology_name, b, chips)
      if result.get("fits"):
        return result
    return first
  second = _cell(run, config_path, topology_name, 2 * b1, chips)
  if not second.get("fits") or "memory" not in second:
    return first
  slope = (second["memory"]["total"] - first["memory"]["total"]) / b1
  if slope <= 0:  # memory did not grow with the batch: two compiles give no bound
    return dict(second, unbounded=True)
  fixed = first["memory"]["total"] - slope * b1
  b = int((first["hbm_bytes"] - fixed) / slope)
  if b <= 2 * b1:
    return second
  if not verify:
    return _predicted(first, second, b)
  while b > 2 * b1:
    result = _cell(run, config_path, topology_name, b, chips)
    if result.get("fits"):
      return result
    b = int(b * 0.8)
  return second


def compute(run, out_json: pathlib.Path, configs, topologies, verify: bool = True) -> dict:
  """`run`: `vosjax.benchmarks.tpu.run` (passed in: that module imports this one)."""
  results = json.loads(out_json.read_text()) if out_json.exists() else {}
  for topology_name in topologies:
    chips = len(topology.devices(topology_name))
    for path in configs:
      key = f"{os.path.basename(path)}|{topology_name}"
      if key in results and (results[key]["largest"].get("predicted") is not True or not verify):
        continue
      start = time.perf_counter()
      shipped_batch = config_file.load_config(path, []).batch_size
      shipped = _cell(run, path, topology_name, math.ceil(shipped_batch / chips), chips)
      largest = _largest(run, path, topology_name, chips, shipped, verify)
      results[key] = {"shipped_batch": shipped_batch, "shipped": shipped, "largest": largest}
      out_json.write_text(json.dumps(results, indent=1))
      print(f"{key}: {time.perf_counter() - start:.0f} s", flush=True)
  return results


def _hours(seconds: float) -> str:
  if seconds < 1:
    return f"{seconds:.2f} s"
  if seconds < 60:
    return f"{seconds:.0f} s"
  if seconds < 3600:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h"


def _mfu(r: dict) -> str:
  """MFU against the bf16 peak; above 100 % the estimate is impossible and is not shown as one."""
  share = 100 * r["mfu_bf16"]
  return f"n/a ({share:.0f}%: estimate below the FLOP bound)" if share > 100 else f"{share:.1f}%"


def _durations(name: str, r: dict, shipped_batch: int) -> tuple[str, str]:
  """The config's whole training run (num_train_steps x its shipped global batch) and one epoch
  of its dataset (`DATASETS`) at `r`'s throughput, as text ("" without a video count)."""
  videos, _ = DATASETS.get(name, (None, ""))
  run_s = r["num_train_steps"] * shipped_batch / r["examples_per_s"]
  return _hours(run_s), _hours(videos / r["examples_per_s"]) if videos else ""


def _row(name: str, topology_name: str, label: str, r: dict, shipped_batch: int) -> str:
  batch = r.get("per_chip_batch", 0) * r.get("chips", 0)
  chips = r.get("chips", "")
  if "memory" not in r:
    reason = r.get("error", "")[:90]
    head = f"| {name} | {topology_name} | {label} | {r.get('per_chip_batch')}/chip"
    return f"{head} | no | {reason} | | | | | | |"
  step = r["step_s"]
  run, epoch = _durations(name, r, shipped_batch)
  source = "" if r["step_s_source"] == "cost model" else " (roofline)"
  if r.get("predicted"):
    label += " (predicted from 2 compiles)"
  if r.get("unbounded"):
    label += " (not bounded: memory did not grow over 2 compiles; the larger shown)"
  return (
    f"| {name} | {topology_name} ({chips} chips) | {label} | {batch} ({r['per_chip_batch']}/chip)"
    f" | {'yes' if r['fits'] else 'no'} | {r['memory']['total'] / 2**30:.2f} GiB"
    f" | {step * 1e3:.2f} ms{source} | {r['examples_per_s']:.0f} | {_mfu(r)}"
    f" | {r['flops'] / 1e9:.0f} | {run} | {epoch} |"
  )


def markdown(results: dict, configs, topologies) -> str:
  lines = [
    "| config | topology | batch | global batch (per chip) | fits | memory per chip | step time "
    "| examples/s | MFU (bf16) | GFLOP/step | training run | one epoch |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  missing = []
  for path in configs:
    name = os.path.basename(path)
    for topology_name in topologies:
      cell = results.get(f"{name}|{topology_name}")
      if cell is None:
        missing.append(f"{name} on {topology_name}")
        continue
      lines.append(_row(name, topology_name, "shipped", cell["shipped"], cell["shipped_batch"]))
      lines.append(_row(name, topology_name, "largest", cell["largest"], cell["shipped_batch"]))
  if missing:
    lines.append("")
    lines.append(f"Not computed in the last run (out of time): {', '.join(missing)}.")
  return "\n".join(lines)


def _compact_row(name: str, topology_name: str, cell: dict) -> str:
  """One README row: the shipped batch's figures and, beside them, the largest batch's."""
  shipped, largest, batch = cell["shipped"], cell["largest"], cell["shipped_batch"]
  chips = shipped.get("chips") or largest.get("chips") or ""
  head = f"| {name} | {topology_name} ({chips}) |"
  if "memory" not in shipped:
    return (
      f"{head} {shipped.get('per_chip_batch')}/chip | no: {shipped.get('error', '')[:60]} |||||||"
    )

  def figures(r):
    source = "" if r["step_s_source"] == "cost model" else "*"
    return (
      f"{r['memory']['total'] / 2**30:.2f} GiB | {r['step_s'] * 1e3:.1f} ms{source}"
      f" | {r['examples_per_s']:.0f} | {_mfu(r)}"
    )

  run, epoch = _durations(name, shipped, batch)
  if "memory" in largest:
    mark = " (pred.)" if largest.get("predicted") else ""
    mark += " (no bound)" if largest.get("unbounded") else ""
    big = f"{largest['per_chip_batch'] * largest['chips']} ({largest['per_chip_batch']}){mark}"
    big += f" | {largest['examples_per_s']:.0f}"
  else:
    big = " | "
  return (
    f"{head} {shipped['per_chip_batch'] * shipped['chips']} ({shipped['per_chip_batch']})"
    f" | {'yes' if shipped['fits'] else 'no'} | {figures(shipped)} | {run} | {epoch}"
    f" | {big} |"
  )


def compact_markdown(results: dict, configs, topologies) -> str:
  """The README's table: a row per config and topology (shipped batch, and the largest batch)."""
  lines = [
    "| config | topology (chips) | global batch (per chip) | fits | memory per chip | step time "
    "| examples/s | MFU (bf16) | training run | one epoch | largest batch (per chip) "
    "| its examples/s |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  missing = {}
  for path in configs:
    name = os.path.basename(path)
    for topology_name in topologies:
      cell = results.get(f"{name}|{topology_name}")
      if cell is not None:
        lines.append(_compact_row(name, topology_name, cell))
      else:
        missing.setdefault(topology_name, []).append(name)
  if missing:
    lines.append("")
    lines.append(
      "Not computed yet: "
      + "; ".join(
        f"{t}: {'every config' if len(n) == len(configs) else ', '.join(n)}"
        for t, n in missing.items()
      )
      + "."
    )
  return "\n".join(lines)


def _replace_block(path: pathlib.Path, begin: str, end: str, table: str) -> None:
  text = path.read_text() if path.exists() else ""
  if begin in text and end in text:
    text = text[: text.index(begin) + len(begin)] + "\n" + table + "\n" + text[text.index(end) :]
  else:
    text = text + f"\n{begin}\n{table}\n{end}\n"
  path.write_text(text)


def render(out: str, configs, topologies, readme: str | None = None) -> str:
  """Writes the table of the cached results (`<out>.json`) into `out` (and the compact one into
  `readme`, between its `<!-- tpu table ... -->` markers); returns the full table."""
  out_path = pathlib.Path(out)
  out_json = out_path.with_suffix(".json")
  results = json.loads(out_json.read_text()) if out_json.exists() else {}
  table = markdown(results, configs, topologies)
  _replace_block(out_path, BEGIN, "<!-- end of table -->", table)
  if readme:
    compact = compact_markdown(results, configs, topologies)
    _replace_block(pathlib.Path(readme), README_BEGIN, "<!-- end of tpu table -->", compact)
  return table


def main(
  run,
  out: str,
  configs=None,
  topologies=TOPOLOGIES,
  verify: bool = True,
  readme: str | None = None,
  compile_cells: bool = True,
) -> int:
  configs = configs or sorted(str(p) for p in pathlib.Path("configs").glob("*.py"))
  if compile_cells:
    compute(run, pathlib.Path(out).with_suffix(".json"), configs, topologies, verify)
  print(render(out, configs, topologies, readme))
  return 0
