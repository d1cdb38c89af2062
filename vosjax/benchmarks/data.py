"""Data benchmark: build the synthetic demo set, then read it.

  python -m vosjax.bench data [--data_dir DIR] [--tfds_name NAME] [--batch_size B]

Without --data_dir the set is built in a temporary folder (deleted at the
end). Prints build wall / CPU time and the read throughput of
`make_eval_iterator` (full videos) and `make_train_iterator` (clips).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time

from vosjax.data import movi


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int | None:
  parser = argparse.ArgumentParser(prog="python -m vosjax.bench data")
  parser.add_argument(
    "--data_dir", default=None, help="TFDS data dir (default: a temporary folder)"
  )
  parser.add_argument("--tfds_name", default="vosjax_synthetic/64x64")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--train_batches", type=int, default=40)
  parser.add_argument("--clip_length", type=int, default=6)
  args = parser.parse_args(argv)

  temporary = args.data_dir is None
  data_dir = tempfile.mkdtemp(prefix="vosjax_data_bench_") if temporary else args.data_dir
  config = movi.default_data_config()
  config.tfds_name = args.tfds_name
  config.data_dir = data_dir
  config.clip_length = args.clip_length
  rows = []
  try:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    builder = movi.get_builder(config)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    config.resolution = tuple(builder.info.features["video"].shape[1:3])
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    size = sum(
      os.path.getsize(os.path.join(root, f))
      for root, _, files in os.walk(builder.data_path)
      for f in files
    )
    rows.append(
      (
        "build (or open) " + args.tfds_name,
        f"{wall:.1f} s wall, {cpu:.1f} s CPU",
        f"{splits}, {size / 2**20:.0f} MiB",
      )
    )

    start = time.perf_counter()
    videos = 0
    for batch in movi.make_eval_iterator(config, args.batch_size, process_index=0, process_count=1):
      videos += int(batch["valid"].sum())
    seconds = time.perf_counter() - start
    rows.append(
      (
        "make_eval_iterator (full videos)",
        f"{videos / seconds:.1f} videos/s",
        f"{videos} videos in {seconds:.1f} s incl. setup",
      )
    )

    start = time.perf_counter()
    iterator = movi.make_train_iterator(
      config, args.batch_size, seed=0, process_index=0, process_count=1
    )
    next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.train_batches):
      next(iterator)
    seconds = time.perf_counter() - start
    clips = args.train_batches * args.batch_size
    rows.append(
      (
        f"make_train_iterator ({args.clip_length}-frame clips)",
        f"{clips / seconds:.1f} videos/s",
        f"{clips} clips in {seconds:.1f} s; first batch {first:.1f} s",
      )
    )

    start = time.perf_counter()
    next(
      movi.make_train_iterator(
        config, args.batch_size, seed=0, start_step=100_000, process_index=0, process_count=1
      )
    )
    rows.append(
      ("resume at step 100000", f"{time.perf_counter() - start:.1f} s", "first batch incl. setup")
    )
  finally:
    if temporary:
      shutil.rmtree(data_dir, ignore_errors=True)

  width = max(len(r[0]) for r in rows)
  value_width = max(len(r[1]) for r in rows)
  print(f"{'measure':<{width}}  {'result':<{value_width}}  detail")
  for name, value, detail in rows:
    print(f"{name:<{width}}  {value:<{value_width}}  {detail}")
  print(
    f"(os.cpu_count()={os.cpu_count()}, load average "
    f"{', '.join(f'{x:.1f}' for x in os.getloadavg())})"
  )
  return 0
