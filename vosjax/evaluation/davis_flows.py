"""Motion Grouping on DAVIS-layout folders: masks for every frame, scored with the davis2016
protocol.

Called by `vosjax.evaluation.evaluate` when `config.data.source == "davis"` (the end of training and
`--mode eval`). The sequences are `config.data.sequences`, else those of
`ImageSets/480p/val.txt` (or the list of `config.data.eval_imageset`) that have frames (the official
20 val; 18 in ../shared/data/davis2016, which lacks the frames of cows and goat), so a full
train + val root is still scored on val only.
For each sequence:
  1. the evaluation flows of every frame (gaps `config.data.gaps` with Motion Grouping's fallback to
     the opposite gap), at `config.data.resolution`;
  2. the method's soft foreground of each flow (Motion Grouping: all but the slot with the most
     border mass; no ground truth involved, unlike the official evaluation's oracle slot choice),
     averaged over the flows of a frame like the official "mean" masks;
  3. bilinear upsampling of that probability to the annotation size, threshold 0.5, one indexed PNG
     per frame in `WORKDIR/davis_results/<seq>/`;
  4. the same for the motion baseline (median flow removed, Otsu threshold): its mask of each of the
     frame's flows, averaged, upsampled and thresholded like the model's, in
     `WORKDIR/davis_baseline/<seq>/` (on the 18 shared sequences the 4-flow vote scores J 0.482 /
     F 0.416; the first gap's flow alone J 0.457 / F 0.378).
Both folders are scored in-process with `vosjax.evaluation.davis_protocol` (davis2016 protocol, its
default frames); the official-layout CSVs go to `WORKDIR/davis_eval/{model,baseline}/`, the metrics
(J, F, J&F, per sequence) to `WORKDIR/eval_metrics.json`, overlays to
`WORKDIR/eval_outputs/<seq>.gif`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vosjax.core import config as config_lib
from vosjax.core import images
from vosjax.data import davis
from vosjax.data import video as video_io
from vosjax.evaluation import baselines
from vosjax.evaluation import davis_protocol
from vosjax.evaluation import report
from vosjax.methods import interface

# Flows per jitted call: a fixed size, so every sequence reuses one compiled program.
_CHUNK = 16


def _soft_foreground(foreground_fn, params, flows: np.ndarray) -> np.ndarray:
  """Soft foreground `[N, h, w]` of flows `[N, h, w, 2]`, in fixed-size chunks.

  `foreground_fn(params, flows [_CHUNK, h, w, 2]) -> [_CHUNK, h, w]` is jitted once per evaluation:
  a fresh jit per sequence would recompile for every sequence (docs/performance.md).
  """
  out = []
  for start in range(0, len(flows), _CHUNK):
    chunk = flows[start : start + _CHUNK]
    padded = (
      np.concatenate([chunk, np.zeros((_CHUNK - len(chunk),) + chunk.shape[1:], chunk.dtype)])
      if len(chunk) < _CHUNK
      else chunk
    )
    out.append(np.asarray(foreground_fn(params, jnp.asarray(padded)))[: len(chunk)])
  return np.concatenate(out)


def oracle_masks(slots: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, float]:
  """The official evaluation's masks of one frame (`src/utils.py::ensemble_hungarian_iou`).

  Each flow's slot masks are upsampled nearest to the annotation size (torch `F.interpolate`,
  float32 rule), and of each flow the slot with the highest IoU (mask > 0.5) against the ground
  truth is taken (the first on ties, as torch's max); the mean of the chosen soft masks is the
  frame's mask. An oracle: it reads the labels.

  Args:
    slots: float32 `[G, K, h, w]` soft slot masks of the frame's G flows.
    truth: bool `[H, W]` ground-truth foreground.

  Returns:
    (mean mask float32 `[H, W]`, its IoU at 0.5 with the truth as the official code computes it).
  """
  masks = images.upsample_nearest(slots.astype(np.float32), truth.shape, "torch")  # [G, K, H, W]
  gt = truth.astype(np.float32)
  binary = (masks > 0.5).astype(np.float32)
  intersection = (binary * gt).sum((-2, -1))
  iou = intersection / (binary.sum((-2, -1)) + gt.sum() - intersection + np.float32(1e-12))
  chosen = masks[np.arange(len(masks)), np.argmax(iou, axis=1)]  # [G, H, W]
  mean = chosen.mean(0)
  binary = (mean > 0.5).astype(np.float32)
  intersection = (binary * gt).sum()
  return mean, float(intersection / (binary.sum() + gt.sum() - intersection + 1e-12))


def _upsample(values: np.ndarray, size: tuple[int, int], interpolation) -> np.ndarray:
  """`[T, h, w]` -> `[T, H, W]` with OpenCV (size = (H, W))."""
  return np.stack(
    [
      cv2.resize(v, (size[1], size[0]), interpolation=interpolation)
      for v in values.astype(np.float32)
    ]
  )


def evaluation_sequences(data: ml_collections.ConfigDict) -> list[str]:
  """`data.sequences`, else the root's `ImageSets/` list of `data.eval_imageset` (default "val")
  that has frames, else every sequence with frames (`davis.split_sequences`).

  DAVIS-2016 ships `ImageSets/480p/val.txt` (one "<frame>.jpg <annotation>.png" line per frame;
  the 20 val sequences): without it, a full root (train + val) would be scored on all 50.
  """
  return davis.split_sequences(
    data.root, data.get("eval_imageset", "val"), override=tuple(data.sequences or ())
  )


def _annotations(root, sequence: str, names: list[str]) -> np.ndarray:
  """Ground-truth foreground bool `[T, H, W]` of the frames `names` (official: imread / 255 > 0)."""
  folder = Path(root) / "Annotations" / "480p" / sequence
  return np.stack([davis.read_label_png(folder / f"{name}.png") > 0 for name in names])


def _annotation_size(root, sequence: str) -> tuple[int, int]:
  folder = Path(root) / "Annotations" / "480p" / sequence
  first = sorted(folder.glob("*.png"))
  if not first:
    raise FileNotFoundError(f"no annotation PNG in {folder}")
  return davis.read_label_png(first[0]).shape[:2]


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  method,
  model,
  params,
  *,
  step: int,
  writer=None,
  write_outputs: bool = True,
) -> dict:
  """Writes and scores the masks of every `config.data.sequences` video; returns the metrics."""
  if not isinstance(method, interface.PredictsFromFlow):
    raise ValueError(
      f"DAVIS flow evaluation needs a flow method (motion_grouping), got "
      f"config.method={config.method!r}."
    )
  data = config.data
  sequences = evaluation_sequences(data)
  official = config_lib.is_official(config)
  foreground_fn = jax.jit(lambda p, f: method.foreground_probability(p, model, f, config))
  workdir = Path(workdir)
  folders = {"model": workdir / "davis_results", "baseline": workdir / "davis_baseline"}
  if official:
    slots_fn = jax.jit(lambda p, f: method.slot_masks(p, model, f, config))
    folders["labelfree"] = workdir / "davis_results_labelfree"
    official_ious = []
  for index, sequence in enumerate(sequences):
    flows = davis.evaluation_flows(
      data.root,
      sequence,
      data.resolution,
      data.flow_cache_dir,
      gaps=tuple(data.gaps),
      raft_flow_root=data.raft_flow_root,
      raft_res=data.raft_res,
    )
    num_frames, num_gaps = flows["flows"].shape[:2]
    soft = _soft_foreground(
      foreground_fn, params, flows["flows"].reshape((-1,) + flows["flows"].shape[2:])
    )
    mean = soft.reshape((num_frames, num_gaps) + soft.shape[1:]).mean(axis=1)  # [T, h, w]
    size = _annotation_size(data.root, sequence)
    # The baseline sees the same 4 flows per frame as the model: [G, T, h, w] masks -> vote.
    baseline_vote = baselines.median_flow_foreground(np.moveaxis(flows["flows"], 1, 0)).mean(axis=0)
    masks = {
      "model": _upsample(mean, size, cv2.INTER_LINEAR) > 0.5,
      "baseline": _upsample(baseline_vote, size, cv2.INTER_LINEAR) > 0.5,
    }
    if official:  # the oracle slot choice is the official number; vosjax's label-free beside it
      masks["labelfree"] = masks["model"]
      slots = _soft_foreground(
        slots_fn, params, flows["flows"].reshape((-1,) + flows["flows"].shape[2:])
      )
      slots = slots.reshape((num_frames, num_gaps) + slots.shape[1:])
      truth = _annotations(data.root, sequence, flows["names"])
      oracle = [oracle_masks(s, t) for s, t in zip(slots, truth)]
      masks["model"] = np.stack([m for m, _ in oracle]) > 0.5
      official_ious.extend(iou for _, iou in oracle)
    if jax.process_index() != 0:
      continue
    for kind, folder in folders.items():
      for name, mask in zip(flows["names"], masks[kind]):
        video_io.write_indexed_png(folder / sequence / f"{name}.png", mask.astype(np.uint8))
    if write_outputs and index < config.num_eval_videos_to_write:
      ids = (mean > 0.5).astype(np.int32)
      frames = images.to_uint8(flows["video"])
      video_io.write_gif(
        workdir / "eval_outputs" / f"{sequence}.gif", video_io.overlay_masks(frames, ids)
      )
    logging.info("DAVIS masks written for %s (%d frames).", sequence, num_frames)

  result = {"step": step, "num_videos": len(sequences)}
  if jax.process_index() == 0:
    for kind, folder in folders.items():
      scored = davis_protocol.evaluate_folders(data.root, folder, "davis2016", sequences=sequences)
      scored.write_csv(workdir / "davis_eval" / kind)
      prefix = "" if kind == "model" else f"{kind}_"
      for key, value in scored.global_results().items():
        result[prefix + key] = value
      # davis2016 scores one object (the union) per sequence: rows are named "<sequence>_1".
      result[prefix + "per_sequence"] = {
        row["Sequence"].rsplit("_", 1)[0]: {"J": row["J-Mean"], "F": row["F-Mean"]}
        for row in scored.object_rows()
      }
    if official:
      # What the official src/eval.py prints as `acc`: the IoU of every frame, averaged.
      result["official_frame_mean_iou"] = float(np.mean(official_ious))
    report.report(str(workdir), result, step, writer)
  return result
