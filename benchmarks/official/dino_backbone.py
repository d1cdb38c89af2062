"""Official side of the README's DINO ViT-S/8 and ViT-S/16 backbone rows (feature extraction).

  python benchmarks/official/dino_backbone.py --official /tmp/official_ssl_uvos \
      --patch-size 16 --resolution 192x384 --frames 4 --frame-chunk 1

`--official` is an export of github.com/shvdiwnkozbw/SSL-UVOS (the Betrayed by Attention code, see
docs/benchmarks_official.md); its `src/model/vision_transformer.py` (`vit_small`, the DINO ViT the
method runs) is loaded from there, never copied here. An export of github.com/facebookresearch/dino
works too (its top-level `vision_transformer.py`, the same ViT). Random weights (speed does not
depend on them), evaluation mode, `torch.no_grad()`; `get_intermediate_layers` (tokens, CLS and
the last block's keys) on chunks of `--frame-chunk` frames, as `python -m vosjax.bench backbone
--frames 4 --frame-chunk N` times its extraction: the fastest of `--repeats` timed passes over all
frames, after one untimed pass. The official inference (`src/eval_oneshot.py`) runs one frame at a
time (`bs = 1`).
"""

import argparse
import importlib.util
import os
import sys
import time


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--official", required=True, help="export of shvdiwnkozbw/SSL-UVOS")
  parser.add_argument("--patch-size", type=int, choices=[8, 16], default=16)
  parser.add_argument("--resolution", default="192x384", help="HxW, comma-separated for several")
  parser.add_argument("--frames", type=int, default=4)
  parser.add_argument("--frame-chunk", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
  args = parser.parse_args()

  import torch  # pylint: disable=g-import-not-at-top

  # SSL-UVOS keeps DINO's file (its get_intermediate_layers also returns the last keys); DINO's own
  # repository has it at the top level.
  root = os.path.abspath(args.official)
  path = os.path.join(root, "src", "model", "vision_transformer.py")
  if not os.path.exists(path):
    path = os.path.join(root, "vision_transformer.py")
  if not os.path.exists(path):
    raise SystemExit(f"no vision_transformer.py under {root}: is --official SSL-UVOS or DINO?")
  sys.path.insert(0, os.path.dirname(path))  # DINO's file imports its `utils`
  spec = importlib.util.spec_from_file_location("official_vision_transformer", path)
  official = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(official)

  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = official.vit_small(patch_size=args.patch_size).eval()
  for resolution in args.resolution.split(","):
    height, width = (int(v) for v in resolution.lower().split("x"))
    video = torch.rand(args.frames, 3, height, width)

    def extract():
      with torch.no_grad():
        for start in range(0, args.frames, args.frame_chunk):
          model.get_intermediate_layers(video[start : start + args.frame_chunk])

    extract()
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      extract()
      times.append(time.perf_counter() - start)
    print(
      f"official DINO ViT-S/{args.patch_size} {height}x{width}, {args.frames} frames in chunks of "
      f"{args.frame_chunk}: {args.frames / min(times):.2f} frames/s (best of {args.repeats}: "
      f"{', '.join(f'{t:.2f}' for t in times)} s); torch {torch.__version__}, "
      f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}",
      flush=True,
    )


if __name__ == "__main__":
  main()
