"""Official side of the README's SMTC training-step row.

  python benchmarks/official/smtc_step.py --official /tmp/official_smtc \
      --deps /tmp/official_deps --clips 2 --steps 3

`--official` is an export of github.com/shvdiwnkozbw/SMTC (see docs/benchmarks_official.md); its
`src/model/model_twostage.py` (`SlotAttentionAutoEncoder`) and `src/utils.py` (`Augment_GPU_pre`,
which needs kornia and cvbase at import: `--deps` is a folder they were pip-installed into with
`--target`) are imported from there, never copied here. The losses are `src/train.py`'s own
`dense_transport_loss`, `sinkhorn_cluster`, `filter_valid_instance`, `matching_cost` and
`object_loss`, read by name from that file and run as they are (the file itself is not imported:
its module-level imports, tensorboard and cv2, play no part in them).

One step is the body of `train.py`'s loop at `start_twostage.sh`'s settings (16 slots x 4 instances,
3 iterations, T = 4 frames at 256x256, lr 2e-5, `--entro_cons --bi_cons`, ent/cons scale 1): the
learning rates and weight decays of the four parameter groups set as at iteration 0 (the ViT's
groups at lr x0 before `--grad_iter`), the student in training mode and the teacher in evaluation
mode, each on its own `Augment_GPU_pre` augmentation of the clips, the three losses, `backward`,
AdamW `step`, and the EMA update of the teacher (0.999, the ViT excluded). `--clips 2` is
`python -m vosjax.bench train --config configs/smtc_ytvos.py --set batch_size=2` (2 clips of 4
frames, each through student and teacher).

Weights: the official constructor loads a DINO ViT-S/16 file unconditionally
(`self.encoder.load_state_dict(torch.load(dino_path), strict=False)`). No weights can be fetched
here, so the driver saves the state dict of a freshly initialised official `vit_small(16)` (random
weights of the same shapes) to a temporary file and passes that as `dino_path`, as vosjax's side
runs with `backbone.random_init=True`; speed does not depend on the weights.

`torch.autograd.set_detect_anomaly(True)`, which the official `main` turns on (a debugging mode
that records a traceback per operation and checks every gradient for NaN), is off unless
`--detect-anomaly`: it is not part of the computation.

Prints every timed step, their median and the process's peak RSS. Inputs are random clips in
[0, 1] (the loader's RGB); the first `--warmup` steps are not timed.
"""

import argparse
import os
import random
import resource
import statistics
import sys
import tempfile
import time

import official_source

LOSSES = (
  "dense_transport_loss",
  "sinkhorn_cluster",
  "filter_valid_instance",
  "matching_cost",
  "object_loss",
)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--official", required=True, help="export of shvdiwnkozbw/SMTC")
  parser.add_argument(
    "--deps", default=None, help="folder with kornia and cvbase (pip install --target DIR ...)"
  )
  parser.add_argument("--clips", type=int, default=2, help="clips per batch (--batch_size)")
  parser.add_argument("--steps", type=int, default=3, help="timed steps")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
  parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
  parser.add_argument(
    "--detect-anomaly", action="store_true", help="as the official main (off: see above)"
  )
  args = parser.parse_args(argv)
  if args.clips < 1 or args.steps < 1 or args.warmup < 0:
    parser.error("--clips and --steps must be >= 1, --warmup >= 0")
  return args


def main() -> None:
  args = parse_args()
  src = official_source.official_source(
    args.official, os.path.join("model", "model_twostage.py"), "shvdiwnkozbw/SMTC"
  )
  if args.deps:
    if not os.path.isdir(args.deps):
      raise SystemExit(f"--deps {args.deps} is not a folder")
    sys.path.insert(1, os.path.abspath(args.deps))
  official_source.require_modules(
    ("kornia", "cvbase", "cv2", "scipy.optimize", "einops"),
    "the official SMTC utils.py imports it: pip install --target /tmp/official_deps kornia cvbase "
    "terminaltables, then pass --deps /tmp/official_deps",
  )
  import einops  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from scipy.optimize import linear_sum_assignment  # pylint: disable=g-import-not-at-top

  # The official code, imported from --official.
  import utils as official_utils  # pylint: disable=g-import-not-at-top
  from model.model_twostage import SlotAttentionAutoEncoder  # pylint: disable=g-import-not-at-top
  from model.vision_transformer import vit_small  # pylint: disable=g-import-not-at-top

  losses = official_source.official_functions(
    os.path.join(src, "train.py"),
    LOSSES,
    {
      "torch": torch,
      "F": F,
      "einops": einops,
      "np": np,
      "linear_sum_assignment": linear_sum_assignment,
    },
  )
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.autograd.set_detect_anomaly(args.detect_anomaly)
  random.seed(0)
  np.random.seed(0)
  torch.manual_seed(0)

  # start_twostage.sh and train.py's argument defaults.
  resolution, num_frames, num_slots, num_instances, iters = (256, 256), 4, 16, 4, 3
  lr, grad_iter, num_it, ent_scale, cons_scale = 2e-5, 3000, 10000, 1.0, 1.0
  aug_gpu = official_utils.Augment_GPU_pre(argparse.Namespace(resolution=resolution))

  with tempfile.TemporaryDirectory() as scratch:
    dino_path = os.path.join(scratch, "random_vit_small16.pth")
    torch.save(vit_small(16).state_dict(), dino_path)  # random weights, the DINO file's shapes

    def build(teacher: bool):
      return SlotAttentionAutoEncoder(
        resolution=resolution,
        num_slots=num_slots,
        num_instances=num_instances,
        in_channels=3,
        out_channels=3,
        hid_dim=32,
        iters=iters,
        path_drop=0.1,
        attn_drop_t=0.4,
        attn_drop_f=0.0,
        num_frames=num_frames,
        teacher=teacher,
        dino_path=dino_path,
      )

    model, teacher = build(False), build(True)
  teacher.load_state_dict(model.state_dict())
  for p in teacher.parameters():
    p.requires_grad = False

  # train.py's get_params_groups (a closure in main, so transcribed): the ViT's weights, its
  # biases and norms (no decay), the head's weights, its biases and norms (no decay).
  groups = [[], [], [], []]
  for name, param in model.named_parameters():
    if param.requires_grad:
      no_decay = name.endswith(".bias") or len(param.shape) == 1
      groups[(0 if "encoder" in name else 2) + int(no_decay)].append(param)
  optimizer = torch.optim.AdamW(
    [
      {"params": groups[0]},
      {"params": groups[1], "weight_decay": 0.0},
      {"params": groups[2]},
      {"params": groups[3], "weight_decay": 0.0},
    ],
    lr=lr,
  )
  rgb = torch.rand(args.clips, num_frames, 3, *resolution)  # the loader's [b, t, c, h, w] RGB
  flow_idxs = torch.zeros(args.clips, dtype=torch.long)  # only tested for None by the model
  it = 0  # the schedule's values at iteration 0: lr_scheduler[0] = lr, wd_scheduler[0] = 0.1

  def step() -> float:
    # The loop body of src/train.py (without the logging and checkpointing).
    for i, param_group in enumerate(optimizer.param_groups):
      weight = (0.0 if it < grad_iter else 0.01) if i < 2 else 1.0
      param_group["lr"] = lr * weight
      if i % 2 == 0:
        param_group["weight_decay"] = 0.1
    model.train()
    teacher.eval()
    optimizer.zero_grad()
    sample_weight = 1.0 - it / num_it * 0.99
    motion_mask, _, semantic, instance, objects = model(aug_gpu(rgb), sample_weight, flow_idxs)
    motion_mask_t, feat_t, semantic_t, instance_t, objects_t = teacher(
      aug_gpu(rgb), sample_weight, flow_idxs
    )
    normalized = F.normalize(motion_mask.softmax(dim=-2) + 1e-8, dim=-1)
    differ_loss = ent_scale * torch.einsum("btmc,btnc->btmn", normalized, normalized)
    mask = torch.ones_like(differ_loss)
    mask[:, :, torch.arange(num_slots), torch.arange(num_slots)] = 0
    differ_loss = torch.sum(differ_loss * mask) / torch.sum(mask)
    temporal_diff = losses["dense_transport_loss"](motion_mask, motion_mask_t, feat_t, feat_t)
    consistency_loss = cons_scale * temporal_diff
    valid_instance = losses["filter_valid_instance"](motion_mask, semantic, instance)
    valid_instance_t = losses["filter_valid_instance"](motion_mask_t, semantic_t, instance_t)
    instance_loss = losses["object_loss"](valid_instance, valid_instance_t, objects, objects_t)
    loss = consistency_loss + differ_loss + instance_loss
    loss.backward()
    optimizer.step()
    with torch.no_grad():
      momentum = 0.999
      for (name_q, param_q), (_, param_k) in zip(
        model.named_parameters(), teacher.named_parameters()
      ):
        if "encoder" in name_q:
          continue
        param_k.data = param_k.data * momentum + param_q.data * (1 - momentum)
    return float(loss.detach())

  for _ in range(args.warmup):
    step()
  seconds = []
  for i in range(args.steps):
    start, cpu_start = time.perf_counter(), time.process_time()
    value = step()
    seconds.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu_start
    print(f"step {i}: {seconds[-1]:.2f} s, {cpu:.1f} s of CPU (loss {value:.4g})", flush=True)
  peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(
    f"official SMTC step: {args.clips} clips x {num_frames} frames at {resolution[0]}x"
    f"{resolution[1]}, student + teacher, torch {torch.__version__}, {torch.get_num_threads()} "
    f"threads, anomaly detection {'on' if args.detect_anomaly else 'off'}: median "
    f"{statistics.median(seconds):.2f} s (min {min(seconds):.2f}, max {max(seconds):.2f}) over "
    f"{len(seconds)} steps after {args.warmup} untimed; peak RSS {peak_gib:.2f} GiB; load "
    f"average {os.getloadavg()[0]:.1f}",
    flush=True,
  )


if __name__ == "__main__":
  main()
