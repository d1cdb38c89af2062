"""Official side of the README's "Betrayed clustering only" rows (T=24 and T=80, ratio 10).

  python benchmarks/official/betrayed_clustering.py --official /tmp/official_ssl_uvos \
      --frames 24 --ratio 10

`--official` is an export of github.com/shvdiwnkozbw/SSL-UVOS (see docs/benchmarks_official.md).
The clustering is `src/eval_oneshot.py`'s own `mem_efficient_hierarchical_cluster` (and its
`kl_distance`), read by name from that file and run as it is (the file itself is not imported: its
module-level imports, cv2, kornia, sklearn and tensorboard, play no part in it).

Inputs: the same planted q, k as `python -m vosjax.bench clustering --frames 24 --skip_numpy`
(`vosjax.benchmarks.reference_clustering.bench_query_key`: ViT-S/8 token grids at 192x384, 24x48
tokens, 8 heads of 48, `--objects` planted objects, `--seed`), put into the official layout as
`mem_efficient_inference` hands them over: q `[T, heads, HW, d]`, k the key frames
`arange(T // ratio) * ratio` of the same, scale `d ** -0.5`, tau 1.0, `num_iter=10000`, on the CPU,
under `torch.no_grad()`. Each repeat times one call (the official function prints its centroid
count). vosjax's side: `python -m vosjax.bench clustering --frames 24 --skip_numpy`, column
`jax_run_s` (one call of the compiled function; its compile time is a separate column).
"""

import argparse
import os
import sys
import time

import official_source

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--official", required=True, help="export of shvdiwnkozbw/SSL-UVOS")
  parser.add_argument("--frames", type=int, nargs="+", default=[24])
  parser.add_argument("--ratio", type=int, default=10, help="key-frame ratio (--ratio)")
  parser.add_argument("--tau", type=float, default=1.0, help="clustering threshold (--tau)")
  parser.add_argument("--objects", type=int, default=8, help="as vosjax.bench clustering")
  parser.add_argument("--seed", type=int, default=0, help="as vosjax.bench clustering")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
  args = parser.parse_args(argv)
  too_short = [t for t in args.frames if t < args.ratio]
  if too_short:
    # The official code selects no key frame for T < ratio (an empty key set).
    parser.error(f"--frames {too_short} below --ratio {args.ratio}: no key frame (official rule)")
  return args


def main() -> None:
  args = parse_args()
  src = official_source.official_source(args.official, "eval_oneshot.py", "shvdiwnkozbw/SSL-UVOS")
  sys.path.insert(0, REPO)  # vosjax's planted inputs (NumPy only)
  from vosjax.benchmarks import reference_clustering  # pylint: disable=g-import-not-at-top

  import einops  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  namespace = official_source.official_functions(
    os.path.join(src, "eval_oneshot.py"),
    ("kl_distance", "mem_efficient_hierarchical_cluster"),
    {"torch": torch, "einops": einops},
  )
  if args.threads:
    torch.set_num_threads(args.threads)
  head_dim = reference_clustering.BENCH_HEAD_DIM
  for frames in args.frames:
    q, k = reference_clustering.bench_query_key(frames, args.objects, args.seed)
    # vosjax's [T, N, heads, d] -> the official [T, heads, N, d] (qkv.permute(2, 0, 3, 1, 4)).
    q = torch.from_numpy(q).permute(0, 2, 1, 3).contiguous()
    k = torch.from_numpy(k).permute(0, 2, 1, 3).contiguous()
    k = k[torch.arange(frames // args.ratio) * args.ratio]
    for repeat in range(args.repeats):
      start = time.perf_counter()
      with torch.no_grad():
        masks = namespace["mem_efficient_hierarchical_cluster"](
          q, k, head_dim**-0.5, tau=args.tau, num_iter=10000, device="cpu"
        )
      seconds = time.perf_counter() - start
      print(
        f"official Betrayed clustering, T={frames}, ratio {args.ratio}, tau {args.tau}, "
        f"{q.shape[2]} tokens x {q.shape[1]} heads: {seconds:.2f} s (run {repeat}; "
        f"{masks.shape[0]} clusters); torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; load average {os.getloadavg()[0]:.1f}",
        flush=True,
      )


if __name__ == "__main__":
  main()
