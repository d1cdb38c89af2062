"""Official side of the README's Motion Grouping rows: the training step and the model forward.

  python benchmarks/official/motion_grouping.py --official /tmp/official_motiongrouping step
  python benchmarks/official/motion_grouping.py --official /tmp/official_motiongrouping forward

`--official` is an export of github.com/charigyang/motiongrouping (see docs/benchmarks_official.md);
its `src/model.py` (`SlotAttentionAutoEncoder`) is imported from there, never copied here.

step: one iteration of the loop body of the official `src/train.py` at its settings (2 slots, 5
iterations, Adam lr 5e-4, `--flow_to_rgb`: 3 channels, 128x224), `--pairs` flow pairs per batch:
the loader's `[b, t=2, c, h, w]` batch flattened to `(b t)` images, so `--pairs 8` runs the model on
16 flow images, as `python -m vosjax.bench train --config configs/motion_grouping.py --set
batch_size=8` does (8 pairs = 16 images). The loss is transcribed from the loop: MSE
reconstruction x1e2, mask entropy x1e-2, temporal consistency (min over the 2 slot permutations)
x1e-2; then backward and `optimizer.step()`. Model in training mode (the official never calls
`.eval()` in training; nothing in it depends on the mode).

forward: `model(flow)` under `torch.no_grad()` on `--pairs * 2` flow images.

Prints every timed step, their median and the process's peak RSS. Inputs are random (speed does
not depend on them); the first `--warmup` calls are not timed.
"""

import argparse
import os
import resource
import statistics
import sys
import time


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--official", required=True, help="export of charigyang/motiongrouping")
  parser.add_argument("mode", choices=["step", "forward"])
  parser.add_argument("--pairs", type=int, default=8, help="flow pairs (2 images each)")
  parser.add_argument("--resolution", default="128x224", help="HxW (the official is 128x224)")
  parser.add_argument("--steps", type=int, default=4, help="timed calls")
  parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
  parser.add_argument(
    "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
  )
  args = parser.parse_args()

  src = os.path.join(os.path.abspath(args.official), "src")
  if not os.path.isfile(os.path.join(src, "model.py")):
    raise SystemExit(
      f"no src/model.py in {args.official}: is --official charigyang/motiongrouping?"
    )
  sys.path.insert(0, src)
  import einops  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from model import SlotAttentionAutoEncoder  # pylint: disable=g-import-not-at-top  # official

  if args.threads:
    torch.set_num_threads(args.threads)
  height, width = (int(v) for v in args.resolution.lower().split("x"))
  torch.manual_seed(0)
  # src/train.py: resolution (128, 224), --num_slots 2, --num_iterations 5, in_out_channels 3 with
  # --flow_to_rgb; Adam at --lr 5e-4; loss_scale 1e2, ent_scale 1e-2, cons_scale 1e-2, epsilon 1e-5.
  model = SlotAttentionAutoEncoder(
    resolution=(height, width), num_slots=2, in_out_channels=3, iters=5
  )
  optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
  criterion = torch.nn.MSELoss()
  loss_scale, ent_scale, cons_scale, epsilon = 1e2, 1e-2, 1e-2, 1e-5
  batch_size = args.pairs
  sample = torch.rand(batch_size, 2, 3, height, width)  # the loader's [b, t, c, h, w] flow pairs

  def step():
    # The loop body of src/train.py (without the logging, evaluation and checkpointing).
    optimizer.zero_grad()
    flow = einops.rearrange(sample, "b t c h w -> (b t) c h w")
    recon_image, _, masks, _ = model(flow)
    recon_loss = loss_scale * criterion(flow, recon_image)
    entropy_loss = ent_scale * -(masks * torch.log(masks + epsilon)).sum(dim=1).mean()
    tmasks = einops.rearrange(masks, "(b t) s c h w -> b t s c h w", b=batch_size)
    mask_t_1 = tmasks[:, 0]
    mask_t = tmasks[:, 1]
    mask_t = einops.rearrange(mask_t, "b s c h w -> b c s h w")
    temporal_diff = torch.pow((mask_t_1 - mask_t), 2).mean([-1, -2])
    consistency_loss = cons_scale * temporal_diff.view(-1, 2 * 2).min(1)[0].mean()
    loss = recon_loss + entropy_loss + consistency_loss
    loss.backward()
    optimizer.step()
    return float(loss.detach())

  def forward():
    with torch.no_grad():
      recon_image, _, _, _ = model(einops.rearrange(sample, "b t c h w -> (b t) c h w"))
    return float(recon_image.mean())

  run = step if args.mode == "step" else forward
  for _ in range(args.warmup):
    run()
  seconds = []
  for i in range(args.steps):
    start, cpu_start = time.perf_counter(), time.process_time()
    value = run()
    seconds.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu_start  # all threads: on a busy machine, what it got of the CPUs
    print(f"{args.mode} {i}: {seconds[-1]:.2f} s, {cpu:.1f} s of CPU ({value:.4g})", flush=True)
  peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(
    f"official motion grouping {args.mode}: {batch_size} pairs = {2 * batch_size} flow images at "
    f"{height}x{width}, torch {torch.__version__}, {torch.get_num_threads()} threads: median "
    f"{statistics.median(seconds):.2f} s (min {min(seconds):.2f}, max {max(seconds):.2f}) over "
    f"{len(seconds)} calls after {args.warmup} untimed; peak RSS {peak_gib:.2f} GiB; load average "
    f"{os.getloadavg()[0]:.1f}"
  )


if __name__ == "__main__":
  main()
