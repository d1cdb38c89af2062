"""Command: DAVIS evaluation of PNG mask folders, or of a run's overlapping candidate masks.

  python -m vosjax.evaluate --protocol P --gt DIR --results DIR [--sequences a,b] [--frames all]
  python -m vosjax.evaluate --gt DAVIS2017 --results WORKDIR/frame_candidates [--protocol P]
  python -m vosjax.evaluate --protocol jhmdb-pck --gt JHMDB_LIST --results OUT/keypoints
  python -m vosjax.evaluate --protocol vip-miou --gt VIP_Fine --results OUT

The protocols are `vosjax.evaluation.davis_protocol` (see its docstring); this module only parses
the command line, scores and prints. A results folder of `<seq>.npz` files (a run's
`frame_candidates/`: SMTC's overlapping candidate masks, `vosjax.evaluation.frame_folders`) is
scored with both DAVIS-2017 unsupervised protocols (or the one `--protocol` names), each candidate
on its own as the run's evaluation does; the CSVs go to `--output/<protocol>/`.
`jhmdb-pck` (`vosjax.evaluation.keypoints`) and `vip-miou` (`vosjax.evaluation.parts`) score
`python -m vosjax.propagate --mode keypoints|parts` results as CRW's eval_pck.py / eval_vip.py.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys
import time

from vosjax.evaluation import davis_protocol
from vosjax.evaluation import keypoints
from vosjax.evaluation import parts
from vosjax.evaluation.davis_protocol import PROTOCOLS

TASK_PROTOCOLS = ("jhmdb-pck", "vip-miou")


def _inside(path: Path, folder: Path) -> bool:
  path, folder = Path(path).resolve(), Path(folder).resolve()
  return path == folder or folder in path.parents


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m vosjax.evaluate",
    description=davis_protocol.__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--protocol",
    choices=sorted(PROTOCOLS) + list(TASK_PROTOCOLS),
    help="required for PNG folders; candidates (*.npz): default both DAVIS-2017 unsupervised",
  )
  parser.add_argument(
    "--gt", required=True, type=Path, help="DAVIS root or annotation folder; JHMDB list; VIP_Fine"
  )
  parser.add_argument("--results", required=True, type=Path, help="folder of sequence folders")
  parser.add_argument("--sequences", help="comma-separated subset (default: every GT sequence)")
  parser.add_argument("--output", type=Path, default=Path("."), help="where the CSVs go")
  parser.add_argument(
    "--frames",
    choices=("all", "1:-1"),
    help="frames scored (default: davis2016 1:-1, davis2017-* all)",
  )
  parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
  parser.add_argument("--decimals", type=int, default=3, help="CSV precision (official: 3)")
  args = parser.parse_args(argv)
  for folder in (args.gt, args.results):
    if folder.exists() and _inside(args.output, folder):
      parser.error(f"--output {args.output} is inside the input folder {folder}; choose another")
  start = time.perf_counter()
  sequences = [s.strip() for s in args.sequences.split(",")] if args.sequences else None
  if args.protocol in TASK_PROTOCOLS:
    return _score_task(args, sequences)
  if args.results.is_dir() and any(args.results.glob("*.npz")):
    return _score_candidates(args, sequences, start)
  if args.protocol is None:
    parser.error("--protocol is required for a folder of PNG masks")
  try:
    results = davis_protocol.evaluate_folders(
      args.gt, args.results, args.protocol, sequences, args.frames, args.workers
    )
    global_path, sequence_path = results.write_csv(args.output, args.decimals)
  except (FileNotFoundError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  num_objects = sum(s.j.shape[0] for s in results.sequences)
  print(
    f"{args.protocol}, frames {results.frames}: {len(results.sequences)} sequences, "
    f"{num_objects} objects, {time.perf_counter() - start:.1f} s\n"
  )
  print(results.format_table())
  print("\nper object:  J-Mean  F-Mean")
  for row in results.object_rows():
    print(f"  {row['Sequence']:<24} {row['J-Mean']:.3f}   {row['F-Mean']:.3f}")
  print(f"\nwrote {global_path} and {sequence_path}")
  return 0


def _score_task(args, sequences: list[str] | None) -> int:
  """PCK of keypoint JSONs (JHMDB) or mIoU of part PNGs (VIP)."""
  try:
    if args.protocol == "jhmdb-pck":
      scores, count = keypoints.score_jhmdb(args.gt, args.results, (0.1, 0.2), sequences)
      print(f"jhmdb-pck: {count} videos, PCK@0.1 {scores[0.1]:.2f}, PCK@0.2 {scores[0.2]:.2f}")
    else:
      miou, iou, frames = parts.score_vip(args.gt, args.results, sequences)
      print(f"vip-miou: {frames} frames, mIoU {miou:.4f}")
      print("per class IoU: " + " ".join("-" if v != v else f"{v:.3f}" for v in iou))
  except (FileNotFoundError, KeyError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  return 0


def _score_candidates(args, sequences: list[str] | None, start: float) -> int:
  """Scores a `frame_candidates/` folder (`<seq>.npz`) with DAVIS-2017 unsupervised protocols."""
  from vosjax.evaluation import frame_folders  # pylint: disable=g-import-not-at-top

  protocols = (args.protocol,) if args.protocol else frame_folders.PROTOCOLS
  wrong = [p for p in protocols if p not in frame_folders.PROTOCOLS]
  if wrong:
    print(
      f"error: candidate masks are scored with {frame_folders.PROTOCOLS}, not {wrong[0]}",
      file=sys.stderr,
    )
    return 1
  if args.frames not in (None, "all"):
    print("error: candidate masks are scored on all frames (--frames all)", file=sys.stderr)
    return 1
  sequences = sequences or sorted(p.stem for p in args.results.glob("*.npz"))
  try:
    annotations = davis_protocol.resolve_annotation_dir(args.gt, protocols[0])
    missing = [s for s in sequences if not (annotations / s).is_dir()]
    if missing:
      raise FileNotFoundError(f"no ground truth in {annotations} for {', '.join(missing)}")
    absent = [s for s in sequences if not (args.results / f"{s}.npz").is_file()]
    if absent:
      raise FileNotFoundError(f"no candidates {args.results}/<seq>.npz for {', '.join(absent)}")
    annotations = frame_folders.scoring_annotations(annotations, sequences, args.output)
    scored = frame_folders.score_candidates(annotations, args.results, sequences, protocols)
  except (FileNotFoundError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  for protocol, results in scored.items():
    global_path, sequence_path = results.write_csv(args.output / protocol, args.decimals)
    num_objects = sum(s.j.shape[0] for s in results.sequences)
    print(
      f"{protocol} (candidate masks of {args.results}), frames all: {len(results.sequences)} "
      f"sequences, {num_objects} objects, {time.perf_counter() - start:.1f} s\n"
    )
    print(results.format_table())
    print(f"\nwrote {global_path} and {sequence_path}\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
