"""Label propagation (DINO protocol) against the official code, same features, same video.

  python -m vosjax.bench propagate --official /tmp/official_dino --patch 16 --frames 12 \\
      --repeats 2 [--davis ../shared/data/davis2016 --sequence dog]

The official side imports facebookresearch/dino `eval_video_segmentation.py` from --official (a
scratch export, never part of this repository) and runs its `label_propagation`, `norm_mask`
and readout per frame on CPU (`.cuda()` made a no-op), fed by a stand-in model that returns the
given features; its one-time `restrict_neighborhood` mask is timed separately. Our side runs
`vosjax.correspondence.propagation.propagate` + `readout.dino_readout`. Both get the same
float32 features (seeded random, [T, 480/p, 832/p, 384], the 480p DAVIS feature grid of a ViT-S/p)
and the same first-frame labels (a DAVIS annotation at that grid). Each side runs in its own
process (peak RSS is per side), alternated, `--repeats` times; prints per-frame wall and CPU time,
the official/ours ratio and the machine load.

  python -m vosjax.bench propagate --backbone --official /tmp/official_dino --patch 8 --frames 3

times the backbone instead: the feature extraction of the DINO protocol at 480p (854x480 frames
enter the ViT as 832x480, DINO's resize), random ViT-S/p weights. Ours: `vosjax.propagate.
video_features` (one jitted call for the video, `frame_chunk` frames per forward pass); the
official side: `eval_video_segmentation.extract_feature` per frame on the official
`vision_transformer.vit_small` (CPU, no_grad), as its loop calls it. Same alternation and output;
`--resolution` and `--depth` shrink the ViT for tests.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import resource
import subprocess
import sys
import time

import numpy as np

GRID = {16: (30, 52), 8: (60, 104)}


def _inputs(args):
  height, width = GRID[args.patch]
  rng = np.random.default_rng(0)
  features = rng.standard_normal((args.frames, height, width, 384)).astype(np.float32)
  annotation = Path(args.davis) / "Annotations/480p" / args.sequence / "00000.png"
  if annotation.is_file():
    from vosjax.data import label_propagation as inputs  # pylint: disable=g-import-not-at-top

    first = inputs.dino_first_labels(inputs.read_annotation_ids(annotation), args.patch, 480, 64)
  else:
    first = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (height, width))]
  return features, first


def _run_ours(args, features, first):
  import jax  # pylint: disable=g-import-not-at-top

  from vosjax.correspondence import propagation  # pylint: disable=g-import-not-at-top
  from vosjax.correspondence import readout  # pylint: disable=g-import-not-at-top
  from vosjax.correspondence import settings  # pylint: disable=g-import-not-at-top

  spec = settings.spec_from(settings.preset("dino"))
  normed = propagation.l2_normalize(features)
  jax.block_until_ready(propagation.propagate(normed, first, spec))  # compile
  wall, cpu = time.perf_counter(), time.process_time()
  soft = np.asarray(propagation.propagate(normed, first, spec))
  for maps in soft[1:]:
    readout.dino_readout(maps, args.patch, (480, 854))
  return time.perf_counter() - wall, time.process_time() - cpu, 0.0


def _run_official(args, features, first):
  import torch  # pylint: disable=g-import-not-at-top

  torch.Tensor.cuda = lambda self, *a, **k: self  # CPU run of the official code
  sys.path.insert(0, str(Path(args.official).resolve()))
  import eval_video_segmentation as official  # pylint: disable=g-import-not-at-top

  options = argparse.Namespace(
    n_last_frames=7, size_mask_neighborhood=12, topk=5, patch_size=args.patch
  )
  official.args = options  # restrict_neighborhood reads the module-level args
  height, width = features.shape[1:3]
  feats = torch.from_numpy(features)

  class Features:  # stands in for the ViT: returns the given frame's tokens (with a CLS slot)
    patch_embed = argparse.Namespace(patch_size=args.patch)
    index = 0

    def get_intermediate_layers(self, x, n=1):
      del x, n
      tokens = feats[self.index].reshape(1, height * width, -1)
      return [torch.cat([tokens[:, :1], tokens], 1)]

  model = Features()
  frame = torch.zeros(3, height * args.patch, width * args.patch)
  first_seg = torch.from_numpy(first).permute(2, 0, 1)[None]
  start = time.perf_counter()
  mask = official.restrict_neighborhood(height, width)
  mask_seconds = time.perf_counter() - start
  wall, cpu = time.perf_counter(), time.process_time()
  with torch.no_grad():
    frame1_feat = official.extract_feature(model, frame).T
    # The original builds the mask at its first call (one context frame) and reuses that
    # [1, hw, hw] tensor by broadcasting.
    queue, mask_neighborhood = [], mask.unsqueeze(0)
    for t in range(1, len(features)):
      model.index = t
      used_feats = [frame1_feat] + [f for f, _ in queue]
      used_segs = [first_seg] + [s for _, s in queue]
      soft, feat, _ = official.label_propagation(
        options, model, frame, used_feats, used_segs, mask_neighborhood
      )
      if len(queue) == options.n_last_frames:
        queue.pop(0)
      queue.append([feat, soft.clone()])
      up = torch.nn.functional.interpolate(
        soft,
        scale_factor=args.patch,
        mode="bilinear",
        align_corners=False,
        recompute_scale_factor=False,
      )[0]
      up = official.norm_mask(up)
      ids = np.array(torch.max(up, dim=0)[1], dtype=np.uint8)
      official.Image.fromarray(ids).resize((854, 480), 0)
  return time.perf_counter() - wall, time.process_time() - cpu, mask_seconds


def _frames(args) -> np.ndarray:
  """float32 [T, H, W, 3] normalised random frames at --resolution."""
  height, width = (int(v) for v in args.resolution.split("x"))
  return np.random.default_rng(0).standard_normal((args.frames, height, width, 3), np.float32)


def _backbone_ours(args, frames, _):
  from vosjax import propagate  # pylint: disable=g-import-not-at-top

  module, params = propagate.load_backbone(
    f"dino_vits{args.patch}", random_init=True, depth=args.depth
  )
  propagate.video_features(module, params, frames, "tokens_normed")  # compile
  wall, cpu = time.perf_counter(), time.process_time()
  propagate.video_features(module, params, frames, "tokens_normed")
  return time.perf_counter() - wall, time.process_time() - cpu, 0.0


def _backbone_official(args, frames, _):
  import torch  # pylint: disable=g-import-not-at-top

  torch.Tensor.cuda = lambda self, *a, **k: self  # CPU run of the official code
  sys.path.insert(0, str(Path(args.official).resolve()))
  import eval_video_segmentation as official  # pylint: disable=g-import-not-at-top
  import vision_transformer  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = vision_transformer.vit_small(patch_size=args.patch)
  if args.depth:
    model.blocks = model.blocks[: args.depth]
  model.eval()
  chw = torch.from_numpy(frames).permute(0, 3, 1, 2)
  with torch.no_grad():
    official.extract_feature(model, chw[0])  # warm-up, as the first call of a process
    wall, cpu = time.perf_counter(), time.process_time()
    for frame in chw:
      official.extract_feature(model, frame)
  return time.perf_counter() - wall, time.process_time() - cpu, 0.0


def _side(args) -> dict:
  if args.backbone:
    frames = _frames(args)
    run = _backbone_ours if args.side == "ours" else _backbone_official
    wall, cpu, mask_seconds = run(args, frames, None)
    frames = len(frames)
  else:
    features, first = _inputs(args)
    run = _run_ours if args.side == "ours" else _run_official
    wall, cpu, mask_seconds = run(args, features, first)
    frames = len(features) - 1
  return {
    "side": args.side,
    "wall_per_frame_s": wall / frames,
    "cpu_per_frame_s": cpu / frames,
    "official_mask_s": mask_seconds,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vosjax.bench propagate", description=__doc__)
  parser.add_argument("--official", default="/tmp/official_dino", help="dino export folder")
  parser.add_argument("--patch", type=int, default=16, choices=sorted(GRID))
  parser.add_argument("--frames", type=int, default=12)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--davis", default="../shared/data/davis2016")
  parser.add_argument("--sequence", default="dog")
  parser.add_argument("--backbone", action="store_true", help="time the ViT feature extraction")
  parser.add_argument("--resolution", default="480x832", help="--backbone: frame HxW at the ViT")
  parser.add_argument("--depth", type=int, default=0, help="--backbone: blocks (0: all 12)")
  parser.add_argument("--ours_only", action="store_true", help="skip the official side")
  parser.add_argument("--side", choices=("ours", "official"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.side:
    print(json.dumps(_side(args)))
    return 0
  sides = ("ours",) if args.ours_only else ("official", "ours")
  if not args.ours_only and not (Path(args.official) / "eval_video_segmentation.py").is_file():
    print(f"error: no eval_video_segmentation.py in {args.official}", file=sys.stderr)
    return 1
  results = {side: [] for side in sides}
  base = [sys.executable, "-m", "vosjax.bench", "propagate"] + list(
    sys.argv[2:] if argv is None else argv
  )
  for repeat in range(args.repeats):
    for side in sides:
      out = subprocess.run(base + ["--side", side], capture_output=True, text=True, check=True)
      row = json.loads(out.stdout.strip().splitlines()[-1])
      results[side].append(row)
      print(f"repeat {repeat} {side}: {row}  load {os.getloadavg()}", flush=True)
  best = {s: min(r["wall_per_frame_s"] for r in rows) for s, rows in results.items()}
  cpu = {s: min(r["cpu_per_frame_s"] for r in rows) for s, rows in results.items()}
  peak = {s: max(r["peak_rss_mb"] for r in rows) for s, rows in results.items()}
  if args.backbone:
    what = (
      f"ViT-S/{args.patch} backbone (random weights, depth {args.depth or 12}) at {args.resolution}"
    )
  else:
    what = f"ViT-S/{args.patch} propagation, 480p grid {GRID[args.patch]}"
  line = f"{what}, {args.frames} frames: per frame wall ours {best['ours']:.3f} s, CPU "
  line += f"{cpu['ours']:.3f} s, peak RSS {peak['ours']:.0f} MB"
  if "official" in results:
    line += (
      f"; official wall {best['official']:.3f} s (ratio {best['official'] / best['ours']:.2f}x), "
      f"CPU {cpu['official']:.3f} s ({cpu['official'] / cpu['ours']:.2f}x), peak RSS "
      f"{peak['official']:.0f} MB"
    )
    if not args.backbone:
      line += f"; official one-time mask {results['official'][0]['official_mask_s']:.1f} s"
  print(f"{line}; load {os.getloadavg()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
