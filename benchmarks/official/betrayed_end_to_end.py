"""Official side of the README's Betrayed by Attention end-to-end row (and the clustering rows).

  python benchmarks/official/betrayed_end_to_end.py --official /tmp/official_ssl_uvos \
      --frames 24 --resolution 192x384 --ratio 10

`--official` is an export of github.com/shvdiwnkozbw/SSL-UVOS (see docs/benchmarks_official.md).
The model is its `src/model/model_cluster.py` `AttEncoder` (DINO ViT-S/8 + one spatio-temporal
block), built as `src/eval_oneshot.py` builds it, with random weights (no DINO file: speed does not
depend on the weights), in evaluation mode. The inference is `eval_oneshot.py`'s own
`mem_efficient_inference` (the ViT one frame at a time, the block's norm1 and qkv, key frames every
`--ratio` frames, `mem_efficient_hierarchical_cluster`): those functions (and `kl_distance`) are
read by name from the official file and run as they are; the file itself is not imported, because
its module-level imports (cv2, kornia, sklearn, tensorboard, matplotlib) play no part in them.
The video is random frames, normalised as `eval` does (Kinetics mean and std). Prints the whole
call's seconds and the backbone's share, `--repeats` times.

`python -m vosjax.bench all --only end_to_end --output DIR` is vosjax's side.
"""

import argparse
import os
import time

import official_source


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--official", required=True, help="export of shvdiwnkozbw/SSL-UVOS")
  parser.add_argument("--frames", type=int, default=24)
  parser.add_argument("--resolution", default="192x384", help="HxW")
  parser.add_argument("--ratio", type=int, default=10, help="key-frame ratio (--ratio)")
  parser.add_argument("--tau", type=float, default=1.0, help="clustering threshold (--tau)")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
  args = parser.parse_args()

  src = official_source.official_source(
    args.official, os.path.join("model", "model_cluster.py"), "shvdiwnkozbw/SSL-UVOS"
  )
  import einops  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from model.model_cluster import AttEncoder  # pylint: disable=g-import-not-at-top  # official

  namespace = official_source.official_functions(
    os.path.join(src, "eval_oneshot.py"),
    ("kl_distance", "mem_efficient_hierarchical_cluster", "mem_efficient_inference"),
    {"torch": torch, "einops": einops, "F": F},
  )
  if args.threads:
    torch.set_num_threads(args.threads)
  height, width = (int(v) for v in args.resolution.lower().split("x"))
  torch.manual_seed(0)
  # eval_oneshot.main: AttEncoder(resolution, path_drop, attn_drop_t, num_t=1), then model.eval().
  model = AttEncoder(resolution=(height, width), num_t=1).eval()
  mean = torch.tensor([0.43216, 0.394666, 0.37645]).view(1, 1, 3, 1, 1)
  std = torch.tensor([0.22803, 0.22145, 0.216989]).view(1, 1, 3, 1, 1)
  rgbs = (torch.rand(1, args.frames, 3, height, width) - mean) / std

  # The backbone's share: the same per-frame loop as mem_efficient_inference's first part.
  def backbone_only():
    with torch.no_grad():
      for i in range(args.frames):
        model.encoder(rgbs[0, i : i + 1])

  for repeat in range(args.repeats):
    start = time.perf_counter()
    with torch.no_grad():
      masks = namespace["mem_efficient_inference"](
        {i: [] for i in range(args.frames)},
        rgbs,
        None,
        model,
        args.frames,
        args.ratio,
        args.tau,
        "cpu",
      )
    total = time.perf_counter() - start
    start = time.perf_counter()
    backbone_only()
    backbone = time.perf_counter() - start
    print(
      f"official Betrayed end to end, T={args.frames} {height}x{width} ratio {args.ratio}: "
      f"{total:.2f} s (run {repeat}; the backbone alone {backbone:.2f} s; "
      f"{masks[0][0].shape[1]} clusters); torch {torch.__version__}, {torch.get_num_threads()} "
      f"threads; load average {os.getloadavg()[0]:.1f}",
      flush=True,
    )


if __name__ == "__main__":
  main()
