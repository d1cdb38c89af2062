"""Motion Grouping recipe benchmark: how fast does a recipe learn a foreground, against the
baseline.

  python -m vosjax.bench mg_recipes [--config configs/demo.py] [--steps 10000] [--eval_every 1000]
      [--set KEY=VALUE ...] [--eval_videos 48] [--train_videos N] [--json FILE]
  python -m vosjax.bench mg_recipes --export DIR      # write the flows as npz, then stop
  python -m vosjax.bench mg_recipes --arrays DIR ...  # train from those npz (no TFDS needed)

Trains the Motion Grouping method of `--config` (with `--set` overrides, e.g.
`--set model.decoder_instance_norm=False --set optimizer.learning_rate=2e-3`) in this process on one
device and, every `--eval_every` steps, scores the validation videos with the library's own
prediction (`method.predict`: all but the slot with the most border mass, forward/backward masks
averaged):

  fg_j         foreground J, as `python -m vosjax.main` reports it;
  oracle_fg_j  the same with each video's best slot chosen by IoU with the ground truth (the
  official
               code's slot choice): tells a wrong slot choice from no grouping at all;
  baseline_fg_j  the median-flow Otsu baseline (`vosjax.evaluation.baselines`) on the same videos.

Data: whole videos at the config's resolution are read once through the config's pipeline (TFDS) and
kept in memory; each step draws `batch_size` (video, frame) pairs uniformly with replacement from
the frames that have both flows (the training pipeline instead shuffles epochs: same distribution).
With `--export DIR` the arrays are written as `DIR/train.npz` and `DIR/validation.npz` (float16
flows, uint8 ids) so that a machine without TFDS (a rented GPU) can run `--arrays DIR`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vosjax import methods
from vosjax import train
from vosjax.benchmarks import _config_file as config_file
from vosjax.core import sharding
from vosjax.evaluation import baselines
from vosjax.evaluation import videos as validation
from vosjax.methods import motion_grouping


def read_split(config, split: str, max_videos: int | None) -> dict[str, np.ndarray]:
  """Whole videos of `split`: forward/backward float16 `[V, T, H, W, 2]`, ids uint8
  `[V, T, H, W]`."""
  from vosjax.data import pipeline  # TFDS: only when reading through the config's pipeline.

  config = config.copy_and_resolve_references()
  config.data.eval_split = split
  forward, backward, ids = [], [], []
  for batch in pipeline.make_eval_iterator(config):
    valid = np.asarray(batch["valid"], bool)
    forward.append(np.asarray(batch["forward_flow"], np.float16)[valid])
    backward.append(np.asarray(batch["backward_flow"], np.float16)[valid])
    segmentations = np.asarray(batch["segmentations"])[valid]
    if segmentations.ndim == 5:  # [B, T, H, W, 1]
      segmentations = segmentations[..., 0]
    ids.append(segmentations.astype(np.uint8))
    if max_videos and sum(len(f) for f in forward) >= max_videos:
      break
  arrays = {
    "forward": np.concatenate(forward),
    "backward": np.concatenate(backward),
    "ids": np.concatenate(ids),
  }
  return {k: v[:max_videos] if max_videos else v for k, v in arrays.items()}


def load_arrays(directory: str, split: str, max_videos: int | None) -> dict[str, np.ndarray]:
  path = os.path.join(directory, f"{split}.npz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: write it with --export {directory}.")
  with np.load(path) as data:
    return {
      k: data[k][:max_videos] if max_videos else data[k] for k in ("forward", "backward", "ids")
    }


def run(config, train_arrays, val_arrays, steps: int, eval_every: int, log=print) -> list[dict]:
  """Trains from `config`'s initial parameters; returns one record per evaluation.

  The steps are the library's (`train.create_train_state`, `train.make_train_step`) on one device,
  so a non-finite step is skipped there and reported here as `train.NonFiniteLossError` at the next
  evaluation, as the training loop reports it at its next logged step.
  """
  method = methods.load_method(config)
  if method is not motion_grouping:  # the scoring below uses Motion Grouping's own pieces
    raise ValueError(f"mg_recipes benchmarks Motion Grouping; config.method={config.method!r}.")
  model, tx = method.make_model(config), method.make_optimizer(config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  data_sharding = NamedSharding(mesh, P("data"))
  # Frames 1..T-2 have both a forward and a backward flow (MOVi: zero flow at the ends). The videos
  # stay on the device (`[V, T-2, H, W, 2]` float32 each); each step gathers its batch there.
  flows = {
    name: jax.device_put(
      np.asarray(train_arrays[key][:, 1:-1], np.float32), NamedSharding(mesh, P())
    )
    for name, key in (("forward_flow", "forward"), ("backward_flow", "backward"))
  }
  num_videos, num_frames = flows["forward_flow"].shape[:2]
  example = {name: np.asarray(flow[:1, :1]) for name, flow in flows.items()}
  state, state_shardings = train.create_train_state(method, model, config, tx, mesh, example)
  train_step = train.make_train_step(method, model, config, tx, state_shardings, data_sharding)

  @functools.partial(jax.jit, out_shardings=data_sharding)
  def gather(flows, video, frame):
    """`[B]` (video, frame) indices -> the batch of `B` one-frame clips `[B, 1, H, W, 2]` (the
    videos are an argument, not constants baked into the program)."""
    return {name: flow[video, frame][:, None] for name, flow in flows.items()}

  @jax.jit
  def video_masks(params, forward_flow, backward_flow):
    """One video's `[T, H, W, 2]` flows -> (library foreground, each slot alone) `[1 + K, T, H, W]`
    bool: `method.predict`'s composition, from one forward pass."""
    t = forward_flow.shape[0]
    both = jnp.concatenate([forward_flow, backward_flow])
    masks = model.apply({"params": params}, method.encode(both, config))["masks"]  # [2T, K, H, W]
    candidates = jnp.concatenate([method.foreground_from_masks(masks)[:, None], masks], axis=1)
    candidates = jnp.moveaxis(candidates.reshape((2, t) + candidates.shape[1:]), 2, 0)
    return jax.vmap(method.mean_over_directions)(candidates[:, :, None])[:, 0] > 0.5

  ids = val_arrays["ids"]
  baseline = validation.foreground_j(
    ids,
    baselines.median_flow_foreground(
      val_arrays["forward"].astype(np.float32), val_arrays["backward"].astype(np.float32)
    ),
  )

  def evaluate(params) -> tuple[float, float]:
    fg_j, oracle_j = [], []
    for v in range(len(ids)):
      masks = np.asarray(
        video_masks(
          params,
          jnp.asarray(val_arrays["forward"][v], jnp.float32),
          jnp.asarray(val_arrays["backward"][v], jnp.float32),
        )
      )
      scores = validation.foreground_j(np.broadcast_to(ids[v], masks.shape), masks)
      fg_j.append(scores[0])
      oracle_j.append(scores[1:].max())
    return float(np.mean(fg_j)), float(np.mean(oracle_j))

  # (video, frame) pairs drawn uniformly with replacement, on the host, from the seed.
  draws = np.random.default_rng(config.seed + 1)
  rng = jax.random.key(config.seed + 1)  # the loss's random numbers, as in `train`
  records, unchecked = [], []  # unchecked: (step, on-device finite flag) since the last evaluation
  train_seconds, segment_start = 0.0, time.perf_counter()
  for step in range(1, steps + 1):
    batch = gather(
      flows,
      draws.integers(0, num_videos, config.batch_size),
      draws.integers(0, num_frames, config.batch_size),
    )
    state, metrics = train_step(state, batch, rng)
    unchecked.append((step, metrics.pop("finite")))
    if step % eval_every == 0 or step == steps:
      metrics = jax.device_get(metrics)  # waits for the steps dispatched so far
      train_seconds += time.perf_counter() - segment_start
      skipped = [s for s, finite in jax.device_get(unchecked) if not finite]
      unchecked = []
      if skipped:
        later = f" and {len(skipped) - 1} later step(s) up to {skipped[-1]}" if skipped[1:] else ""
        raise train.NonFiniteLossError(
          f"Non-finite loss or gradient at step {skipped[0]}{later} (loss at step {step}: "
          f"{metrics['loss']}); those updates were skipped. Lower the learning rate "
          "(--set optimizer.learning_rate=...) or check the arrays for NaNs."
        )
      fg_j, oracle_j = evaluate(state.params)
      record = {
        "step": step,
        "reconstruction": float(metrics["reconstruction"]),
        "entropy": float(metrics["entropy"]),
        "fg_j": fg_j,
        "oracle_fg_j": oracle_j,
        "baseline_fg_j": float(baseline.mean()),
        "train_seconds": train_seconds,
      }
      records.append(record)
      log(
        f"step {step}/{steps}  rec {record['reconstruction']:.4f}  "
        f"ent {record['entropy']:.3f}  fg_j {fg_j:.3f}  oracle_fg_j {oracle_j:.3f}  "
        f"baseline_fg_j {record['baseline_fg_j']:.3f}  {step / train_seconds:.1f} steps/s"
      )
      segment_start = time.perf_counter()  # evaluation time is not training time
  return records


def main(argv: list[str]) -> int | None:
  parser = argparse.ArgumentParser(prog="python -m vosjax.bench mg_recipes")
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="config override, repeatable (e.g. optimizer.learning_rate=2e-3)",
  )
  parser.add_argument("--steps", type=int, default=10000)
  parser.add_argument("--eval_every", type=int, default=1000)
  parser.add_argument("--eval_videos", type=int, default=48)
  parser.add_argument("--train_videos", type=int, default=None, help="default: the whole split")
  parser.add_argument("--export", default=None, help="write DIR/{train,validation}.npz and stop")
  parser.add_argument("--arrays", default=None, help="read DIR/{train,validation}.npz (no TFDS)")
  parser.add_argument("--json", default=None, help="also write the records to this file")
  args = parser.parse_args(argv)

  config = config_file.load_config(args.config, args.set)
  if args.arrays:
    train_arrays = load_arrays(args.arrays, "train", args.train_videos)
    val_arrays = load_arrays(args.arrays, "validation", args.eval_videos)
  else:
    train_arrays = read_split(config, "train", args.train_videos)
    val_arrays = read_split(config, config.data.eval_split, args.eval_videos)
  if args.export:
    os.makedirs(args.export, exist_ok=True)
    np.savez_compressed(os.path.join(args.export, "train.npz"), **train_arrays)
    np.savez_compressed(os.path.join(args.export, "validation.npz"), **val_arrays)
    print(
      f"wrote {args.export}/train.npz ({len(train_arrays['ids'])} videos) and "
      f"validation.npz ({len(val_arrays['ids'])} videos)"
    )
    return 0
  print(
    f"{args.config} {' '.join(args.set)}: {len(train_arrays['ids'])} training videos, "
    f"{len(val_arrays['ids'])} validation videos, device {jax.devices()[0].device_kind}",
    flush=True,
  )
  records = run(
    config,
    train_arrays,
    val_arrays,
    args.steps,
    args.eval_every,
    log=lambda line: print(line, flush=True),
  )
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"config": args.config, "overrides": args.set, "records": records}, f, indent=1)
  return 0
