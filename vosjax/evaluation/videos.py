"""Evaluation on full MOVi-format validation videos (TFDS) during and after training.

Scores, per video and then averaged over the split: FG-ARI (one contingency table over all frames,
background excluded), mIoU (one Hungarian matching over the whole video) and, for methods that
predict a foreground (Motion Grouping), foreground J (mean over frames of the IoU with the union of
all ground-truth objects). The foreground is chosen by the method without looking at the ground
truth. Beside it, the scores to beat: the motion baseline (median-flow-removed magnitude threshold)
on the same videos (`baseline_fg_j`) and every pixel foreground (`all_foreground_fg_j`).

Writes `WORKDIR/eval_metrics.json`, and for the first videos labelled panels (frame | flow |
predicted | ground truth, >= 128 px each) as `videoNNN.gif` and a `videoNNN.png` strip, plus the
predicted indexed PNGs in `videoNNN/`, in `WORKDIR/eval_outputs/`; then prints one `EVAL ...` line.
"""

from __future__ import annotations

import collections
import logging
import os
import tempfile

from etils import epath
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vosjax.core import images
from vosjax.core import sharding
from vosjax.data import pipeline
from vosjax.data import video as video_io
from vosjax.evaluation import baselines
from vosjax.evaluation import metrics as metrics_lib
from vosjax.evaluation import panels as panels_lib
from vosjax.evaluation import report as report_lib
from vosjax.methods import interface
from vosjax.models import flow_encoding


def foreground_j(true_ids: np.ndarray, foreground: np.ndarray) -> np.ndarray:
  """Mean over frames of IoU(foreground, true_ids > 0); a frame empty in both counts as 1.

  Args:
    true_ids: int [B, T, H, W], 0 = background.
    foreground: bool [B, T, H, W].
  Returns:
    float64 [B].
  """
  gt = true_ids > 0
  inter = np.sum(gt & foreground, axis=(2, 3))
  union = np.sum(gt | foreground, axis=(2, 3))
  iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
  return iou.mean(axis=1)


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  method,
  model,
  params,
  mesh,
  *,
  step: int,
  writer=None,
  write_outputs: bool = True,
  max_videos: int | None = None,
) -> dict:
  """Evaluates `params` on `config.data.eval_split`; returns the averaged metrics.

  `max_videos`: score only the first ceil(max_videos / eval_batch_size) batches (a fixed handful
  of videos: the cheap evaluation during training); None: the whole split.
  """
  sharding.check_batch_size(config.eval_batch_size, "config.eval_batch_size")
  data_sharding = NamedSharding(mesh, P("data"))
  predict = sharding.jit_predict(
    method, model, config, mesh, grown_config=interface.capacity_growth(method)
  )
  sums = collections.defaultdict(float)
  count = 0
  outputs_written = 0
  # Images are written locally first; a bucket WORKDIR (gs://) gets a copy at the end.
  remote = "://" in str(workdir)
  out_dir = tempfile.mkdtemp() if remote else os.path.join(workdir, "eval_outputs")
  max_batches = None if max_videos is None else -(-max_videos // config.eval_batch_size)
  for batch_index, batch in enumerate(pipeline.make_eval_iterator(config)):
    if max_batches is not None and batch_index >= max_batches:
      break  # the same count on every process: the batches are global arrays
    valid = np.asarray(batch["valid"], bool)
    # The prediction must not see the ground truth.
    inputs = {k: v for k, v in batch.items() if k not in ("segmentations", "valid")}
    prediction = sharding.to_host_local(
      predict(params, sharding.to_global(inputs, data_sharding)), mesh
    )
    true_ids = np.asarray(batch["segmentations"])
    per_video = {
      "fg_ari": metrics_lib.fg_ari(true_ids, prediction["ids"]),
      "miou": metrics_lib.video_miou(true_ids, prediction["ids"]),
    }
    if "foreground" in prediction:
      per_video["fg_j"] = foreground_j(true_ids, prediction["foreground"])
      # The trivial score to beat: every pixel foreground.
      per_video["all_foreground_fg_j"] = foreground_j(true_ids, np.ones(true_ids.shape, bool))
    if "forward_flow" in batch:
      per_video["baseline_fg_j"] = foreground_j(
        true_ids, baselines.median_flow_foreground(batch["forward_flow"], batch["backward_flow"])
      )
    for key, values in per_video.items():
      sums[key] += float(np.sum(np.asarray(values)[valid]))
    count += int(valid.sum())
    if write_outputs and jax.process_index() == 0:
      for i in np.flatnonzero(valid):
        if outputs_written >= config.num_eval_videos_to_write:
          break
        _write_video_outputs(
          out_dir, f"video{outputs_written:03d}", batch, i, prediction["ids"][i], true_ids[i]
        )
        outputs_written += 1

  if remote and outputs_written:
    _copy_tree(out_dir, epath.Path(workdir) / "eval_outputs")
  keys = sorted(sums)
  totals = np.array([sums[k] for k in keys] + [count], np.float64)
  if jax.process_count() > 1:
    totals = multihost_utils.process_allgather(totals).sum(axis=0)
  num_videos = int(totals[-1])
  if num_videos == 0:
    raise ValueError(f"The evaluation split {config.data.eval_split!r} yielded no videos.")
  result = {k: float(v) / num_videos for k, v in zip(keys, totals[:-1])}
  result.update(step=step, num_videos=num_videos)
  report_lib.report(workdir, result, step, writer)
  logging.info("Evaluation at step %d: %s", step, result)
  return result


def _copy_tree(local_dir: str, target: epath.Path) -> None:
  for root, _, files in os.walk(local_dir):
    for name in files:
      source = os.path.join(root, name)
      destination = target / os.path.relpath(source, local_dir)
      destination.parent.mkdir(parents=True, exist_ok=True)
      epath.Path(source).copy(destination, overwrite=True)


def _write_video_outputs(
  out_dir: str, name: str, batch: dict, index: int, pred_ids: np.ndarray, true_ids: np.ndarray
) -> None:
  """Labelled panels (frame | flow | predicted mask | ground truth) as `name.gif` and a `name.png`
  strip, and one indexed PNG per frame of the prediction in `name/`."""
  frames = images.to_uint8(batch["video"][index])
  panels = [("frame", frames)]
  if "forward_flow" in batch:
    # Forward flow; the last frame has none (zeros in MOVi), so it shows its backward flow.
    flow = np.concatenate([batch["forward_flow"][index][:-1], batch["backward_flow"][index][-1:]])
    panels.append(("flow", np.asarray(flow_encoding.flow_to_rgb(flow))))
  panels += [
    ("predicted", video_io.overlay_masks(frames, pred_ids)),
    ("ground truth", video_io.overlay_masks(frames, true_ids)),
  ]
  panels_lib.write_panels(out_dir, name, panels)
  for t, ids in enumerate(pred_ids):
    video_io.write_indexed_png(os.path.join(out_dir, name, f"{t:05d}.png"), ids)
