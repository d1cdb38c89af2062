"""Times the DAVIS-2016 evaluation of the OSVOS masks in shared/data.

  python -m vosjax.bench evaluate


The same data as the official-evaluator fixtures: OSVOS masks (`png > 0`) against DAVIS-2016 val
GT, 20 sequences, 1,376 frames.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import time

from vosjax import evaluate


def default_shared_dir() -> Path:
  return Path(os.environ.get("VOSJAX_SHARED", Path(__file__).resolve().parents[3] / "shared"))


def main(argv: list[str]) -> int | None:
  parser = argparse.ArgumentParser(prog="python -m vosjax.bench evaluate", description=__doc__)
  parser.add_argument(
    "--shared",
    type=Path,
    default=default_shared_dir(),
    help="the project's shared/ folder (env VOSJAX_SHARED)",
  )
  parser.add_argument("--protocol", default="davis2016", choices=sorted(evaluate.PROTOCOLS))
  parser.add_argument("--frames", default=None, choices=("all", "1:-1"))
  parser.add_argument(
    "--workers", type=int, nargs="+", default=[1, 2], help="process counts to time"
  )
  parser.add_argument("--repeats", type=int, default=1)
  args = parser.parse_args(argv)
  gt = args.shared / "data/davis2016"
  results = args.shared / "data/davis2017_eval_results/semi-supervised/osvos"
  if not gt.is_dir() or not results.is_dir():
    parser.error(f"shared data not found under {args.shared} (set --shared or VOSJAX_SHARED)")
  print(
    f"{'workers':>7}  {'run':>3}  {'sequences':>9}  {'frames':>6}  {'seconds':>8}  "
    f"{'ms/frame':>8}  {'J&F':>7}  {'J':>7}  {'F':>7}"
  )
  for workers in args.workers:
    for run in range(args.repeats):
      start = time.perf_counter()
      scores = evaluate.evaluate_folders(
        gt, results, args.protocol, frames=args.frames, workers=workers
      )
      seconds = time.perf_counter() - start
      num_frames = sum(len(s.frame_names) for s in scores.sequences)
      table = scores.global_results()
      print(
        f"{workers:>7}  {run:>3}  {len(scores.sequences):>9}  {num_frames:>6}  "
        f"{seconds:>8.2f}  {1e3 * seconds / num_frames:>8.2f}  {table['J&F-Mean']:>7.4f}  "
        f"{table['J-Mean']:>7.4f}  {table['F-Mean']:>7.4f}"
      )
  print(
    f"protocol {args.protocol}, frames {scores.frames}; load average "
    f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
  )
  return 0
