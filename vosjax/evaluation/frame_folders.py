"""Evaluation of frame-folder runs (`config.data.source == "frame_clips"`): masks of every frame of
the DAVIS-layout folder `config.data.eval_root`, scored with the DAVIS-2017 unsupervised protocols.

The training frames (YouTube-VIS / YouTube-VOS layout) have no annotations in a form the paper
scores; the papers evaluate on DAVIS-2017 val. So:
  * `config.data.eval_root` unset (None): nothing to score; the run says so in the log and in
    `WORKDIR/eval_metrics.json` (`num_videos=0`) and ends normally.
  * set: for each sequence (`config.data.eval_sequences`, else those of the root's `ImageSets/`
    list of `config.data.eval_imageset` ("val": DAVIS-2017 `ImageSets/2017/val.txt`, DAVIS-2016
    `ImageSets/480p/val.txt`) with frames, else every one with frames under
    `JPEGImages/<config.data.eval_quality>/`), the frames go through the method's
    `segment_inputs` and its `predict` in windows of `config.data.eval_chunk_frames` (+2) frames
    (`vosjax.evaluation.windows`, as `vosjax.segment`), the ids are upsampled (nearest) to the frame
    size and written as DAVIS PNGs to `WORKDIR/frame_results/<seq>/<frame>.png` (cluster ids ranked
    by area: the largest segment, usually the background, is 0). Where annotations exist
    (`Annotations_unsupervised/<quality>/<seq>`, DAVIS-2017's unsupervised annotations, else
    `Annotations/<quality>/<seq>`; `annotation_folder`), both `davis2017-unsupervised` (official,
    per sequence) and `davis2017-unsupervised-perframe` (the SSL-UVOS / SMTC fork) are scored;
    their CSVs go to `WORKDIR/frame_eval/<protocol>/`.
  * methods that propose overlapping candidate masks (`interface.ProposesCandidates`, SMTC) are
    scored on the candidates, each on its own (`davis_protocol.evaluate_sequence_masks`, the SMTC
    evaluator), not on the PNGs (which show one candidate per pixel): the binary candidates on the
    prediction grid go to `WORKDIR/frame_candidates/<seq>.npz` (masks bool [T, K, h, w], valid
    bool [T, K], frame names, the nearest rule; the official `DAVIS_Twostage/<seq>.pth`) and are
    upsampled (torch nearest; computed in float32 as torch does with `config.eval.mode`
    "official") to the annotations' size when scored. Chunked methods (`PredictsInChunks`) run in
    calls of whole chunks (about `config.data.eval_chunk_frames` frames).
  * DAVIS-2016-style annotations (8-bit grayscale or binary PNGs, 0/255: one object, e.g.
    ../shared/data/davis2016), which the DAVIS-2017 protocols would read as void (255), are scored
    through a binarised copy (> 0 -> object 1, indexed PNGs) in `WORKDIR/frame_eval/annotations/`
    (`scoring_annotations`).
Multi-host: each process segments its share of the sequences on one local device; process 0 scores.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from vosjax.core import config as config_lib
from vosjax.core import images
from vosjax.core import sharding
from vosjax.data import davis
from vosjax.data import video as video_io
from vosjax.evaluation import davis_protocol
from vosjax.evaluation import proposal_scores
from vosjax.evaluation import report
from vosjax.evaluation import windows
from vosjax.methods import interface

PROTOCOLS = ("davis2017-unsupervised", "davis2017-unsupervised-perframe")
CANDIDATES_FOLDER = "frame_candidates"  # beside frame_results/


def evaluation_sequences(data: ml_collections.ConfigDict) -> list[str]:
  """`data.eval_sequences`, else the sequences of the `ImageSets/` list of `data.eval_imageset`
  (default "val"; DAVIS-2017 `ImageSets/2017/val.txt`, DAVIS-2016 `ImageSets/480p/val.txt`) with
  frames, else (no list shipped) every sequence of `data.eval_root` with frames."""
  sequences = davis.split_sequences(
    data.eval_root,
    data.get("eval_imageset", "val"),
    data.eval_quality,
    override=tuple(data.eval_sequences or ()),
  )
  if not sequences:
    raise FileNotFoundError(
      f"no sequence with frames under "
      f"{davis.frames_dir(data.eval_root, data.eval_quality)} "
      "(config.data.eval_root)"
    )
  return sequences


def annotation_folder(root, quality: str) -> Path:
  """The ground truth of the unsupervised protocols for frames `JPEGImages/<quality>`:
  `Annotations_unsupervised/<quality>` (DAVIS-2017's unsupervised annotations) where that folder
  exists, else `Annotations/<quality>`."""
  unsupervised = Path(root) / "Annotations_unsupervised" / quality
  return unsupervised if unsupervised.is_dir() else davis.annotations_dir(root, quality)


def scoring_annotations(annotations: Path, sequences: list[str], workdir: Path) -> Path:
  """`annotations`, or where they are DAVIS-2016-style masks (grayscale or binary PNGs, 0/255: one
  object; DAVIS-2017's are indexed) their copy binarised (> 0 -> id 1) as indexed PNGs under
  `workdir/frame_eval/annotations`, so that the DAVIS-2017 protocols see the object, not void."""
  first = sorted((annotations / sequences[0]).glob("*.png"))
  if not first:
    return annotations
  with Image.open(first[0]) as image:
    if image.mode not in ("L", "1"):
      return annotations
  binarised = workdir / "frame_eval" / "annotations"
  for sequence in sequences:
    for path in sorted((annotations / sequence).glob("*.png")):
      video_io.write_indexed_png(
        binarised / sequence / path.name, (davis.read_label_png(path) > 0).astype(np.uint8)
      )
  logging.info(
    "%s holds DAVIS-2016-style 0/255 masks: scored as one object each (binarised copy in %s).",
    annotations,
    binarised,
  )
  return binarised


def _segment_sequence(
  method, predict, config, root: Path, quality: str, sequence: str, out_dir: Path
) -> tuple[np.ndarray, np.ndarray]:
  """Writes the PNG masks (and candidates, if any) of one sequence; returns its uint8 frames and
  ids at the frame size."""
  paths = video_io.list_frame_files(davis.frames_dir(root, quality) / sequence)
  frames = np.stack([images.to_uint8(video_io.read_image(p)) for p in paths])
  inputs = method.segment_inputs(
    frames,
    config,
    cache_dir=out_dir.parent / "flow_cache",
    cache_key=f"{root.name}-{quality}-{sequence}",
    flow_preset="medium",
  )
  ids, candidates = windows.segment_frames(
    method,
    predict,
    inputs,
    config,
    config.data.eval_chunk_frames,
    frames.shape[1:3],
    progress=False,
  )
  for path, frame_ids in zip(paths, ids):
    video_io.write_indexed_png(out_dir / sequence / f"{path.stem}.png", frame_ids)
  if candidates is not None:
    candidates_dir = out_dir.parent / CANDIDATES_FOLDER
    candidates_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
      candidates_dir / f"{sequence}.npz",
      masks=candidates[0],
      valid=candidates[1],
      frame_names=np.array([p.stem for p in paths]),
      nearest_rule=np.array("torch" if config_lib.is_official(config) else "exact"),
    )
  return frames, ids


class _UpsampledFrames:
  """The frames' candidate masks bool [K, H, W], upsampled one frame at a time when read."""

  def __init__(self, masks: np.ndarray, size: tuple[int, int], rule: str = "exact"):
    self.masks, self.size, self.rule = masks, size, rule

  def __len__(self) -> int:
    return len(self.masks)

  def __getitem__(self, t: int) -> np.ndarray:
    return windows.upsample_nearest_floor(self.masks[t], self.size, self.rule)


class _IdFrames:
  """The PNG id maps of a sequence as proposals: frame t -> bool [num_ids, H, W] (id k + 1)."""

  def __init__(self, paths: list[Path], num_ids: int):
    self.paths, self.num_ids = paths, num_ids

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, t: int) -> np.ndarray:
    ids = davis.read_label_png(self.paths[t])
    return ids[None] == np.arange(1, self.num_ids + 1)[:, None, None]


def score_id_maps(
  annotations: Path, results: Path, sequences: list[str], protocol: str
) -> davis_protocol.EvaluationResults:
  """`davis_protocol.evaluate_folders`, except that a sequence with more ids than `protocol`
  allows proposals (official Betrayed: every cluster is one) is scored as a stack of proposals
  (`evaluate_sequence_masks`: the largest by area are kept) instead of failing."""
  limit = davis_protocol.PROTOCOLS[protocol].max_proposals
  scored = []
  for sequence in sequences:
    true_ids, num_objects, gt_paths = davis_protocol.read_annotations(
      annotations, sequence, protocol
    )
    paths = [results / sequence / p.name for p in gt_paths]
    num_ids = max(int(davis.read_label_png(p).max()) for p in paths)
    if num_ids <= limit:
      scored.extend(
        davis_protocol.evaluate_folders(annotations, results, protocol, [sequence]).sequences
      )
      continue
    logging.warning(
      "%s: %d ids, more than the %d proposals of %s: the %d largest are scored.",
      sequence,
      num_ids,
      limit,
      protocol,
      limit,
    )
    scored.append(
      davis_protocol.evaluate_sequence_masks(
        true_ids,
        _IdFrames(paths, num_ids),
        protocol,
        num_objects=num_objects,
        name=sequence,
        frame_names=[p.stem for p in gt_paths],
      )
    )
  frames = davis_protocol.PROTOCOLS[protocol].default_frames
  return davis_protocol.EvaluationResults(protocol, frames, scored)


def score_candidates(
  annotations: Path, candidates_dir: Path, sequences: list[str], protocols=PROTOCOLS
) -> dict[str, davis_protocol.EvaluationResults]:
  """Scores the candidates saved by `_segment_sequence` against the annotation folder with each
  protocol (J and F computed once; frames matched by name, the candidates of frames without
  annotation left out). Returns protocol -> results."""
  scored = {protocol: [] for protocol in protocols}
  for sequence in sequences:
    true_ids, num_objects, gt_paths = davis_protocol.read_annotations(
      annotations, sequence, protocols[0]
    )
    path = candidates_dir / f"{sequence}.npz"
    with np.load(path) as saved:
      masks, valid, names = saved["masks"], saved["valid"], list(saved["frame_names"])
      # The rule of the run's config.eval.mode ("torch": official); files from before: "exact".
      rule = str(saved["nearest_rule"]) if "nearest_rule" in saved else "exact"
    missing = [p.stem for p in gt_paths if p.stem not in names]
    if missing:
      raise ValueError(f"{path}: no candidates for the annotated frames {missing[:5]}")
    index = np.array([names.index(p.stem) for p in gt_paths])
    proposals = _UpsampledFrames(masks[index], true_ids.shape[1:], rule)
    scores = proposal_scores.score_mask_stack(
      true_ids, proposals, num_objects=num_objects, name=sequence
    )
    for protocol in protocols:
      scored[protocol].append(
        davis_protocol.evaluate_sequence_masks(
          true_ids,
          proposals,
          protocol,
          present=valid[index].T,
          num_objects=num_objects,
          name=sequence,
          frame_names=[p.stem for p in gt_paths],
          scores=scores,
        )
      )
  return {
    protocol: davis_protocol.EvaluationResults(protocol, "all", results)
    for protocol, results in scored.items()
  }


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
) -> dict:
  """Segments and scores `config.data.eval_root`; returns the metrics (see the module docstring)."""
  del mesh  # one local device per process: a video is one example
  data = config.data
  result = {"step": step, "num_videos": 0}
  if not data.eval_root:
    logging.warning(
      "No frame-folder evaluation: config.data.eval_root is not set (a DAVIS-layout "
      "folder, e.g. DAVIS-2017 val); checkpoints are saved, nothing was scored."
    )
    report.report(workdir, result, step, writer)
    return result
  if not isinstance(method, interface.SegmentsVideos):
    raise ValueError(
      f"frame-folder evaluation needs a method that segments videos; "
      f"config.method={config.method!r} does not (see vosjax.methods.interface)."
    )
  root, quality = Path(data.eval_root), data.eval_quality
  sequences = evaluation_sequences(data)
  workdir = Path(workdir)
  out_dir = workdir / "frame_results"
  local_mesh = sharding.make_mesh(jax.local_devices()[:1])
  # Replicated global arrays -> this process's copy on its first local device.
  local_params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params)
  predict = sharding.jit_predict(
    method, model, config, local_mesh, grown_config=interface.capacity_growth(method)
  )
  for index in range(jax.process_index(), len(sequences), jax.process_count()):
    sequence = sequences[index]
    frames, ids = _segment_sequence(
      method,
      lambda batch: jax.device_get(predict(local_params, batch)),
      config,
      root,
      quality,
      sequence,
      out_dir,
    )
    if write_outputs and index < config.num_eval_videos_to_write:
      video_io.write_gif(
        workdir / "eval_outputs" / f"{sequence}.gif", video_io.overlay_masks(frames, ids)
      )
    logging.info("Frame-folder masks written for %s (%d frames).", sequence, len(frames))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("frame_folders.evaluate")

  result["num_videos"] = len(sequences)
  annotations = annotation_folder(root, quality)
  scored_sequences = [s for s in sequences if (annotations / s).is_dir()]
  if jax.process_index() == 0 and scored_sequences:
    annotations = scoring_annotations(annotations, scored_sequences, workdir)
    candidates = (
      score_candidates(annotations, workdir / CANDIDATES_FOLDER, scored_sequences)
      if isinstance(method, interface.ProposesCandidates)
      else None
    )
    for protocol in PROTOCOLS:
      # The annotation folder itself (the masks are at the size of the `quality` frames; given
      # the root, the protocol would read Annotations[_unsupervised]/480p whatever the quality).
      if candidates is not None:
        scored = candidates[protocol]
      else:
        scored = score_id_maps(annotations, out_dir, scored_sequences, protocol)
      scored.write_csv(workdir / "frame_eval" / protocol)
      prefix = "" if protocol == "davis2017-unsupervised" else "perframe_"
      for key, value in scored.global_results().items():
        result[prefix + key] = value
  elif not scored_sequences:
    logging.warning(
      "No annotations under %s: masks written to %s, nothing scored.", annotations, out_dir
    )
  report.report(str(workdir), result, step, writer)
  return result
