"""Prediction over windows of a long video, with ids kept consistent between windows, or over
whole chunks for methods that segment independent chunks (`predict_in_chunks`).

Used by `vosjax.segment` (users' videos) and the frame-folder evaluation. Long videos are processed
in windows of `chunk_frames` + 2 frames (one static shape, one compilation; the last window is
aligned to the video's end instead of padded). Neighbouring windows overlap: a window's first and
last frame are kept only where they are the video's own, because Motion Grouping's `predict` drops
the backward flow of a window's first frame and the forward flow of its last. Cluster ids (arbitrary
per window) are linked to the previous window's by IoU on the frames both label (Hungarian
matching), so ids stay the same over time.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
from scipy import optimize
import tqdm

from vosjax.core import config as config_lib
from vosjax.core import images
from vosjax.methods import interface

# Two clusters of neighbouring windows are the same segment when their IoU on the shared frames is
# at least this (the usual criterion for a match); other clusters get new ids.
LINK_MIN_IOU = 0.5


def windows(num_frames: int, chunk_frames: int) -> tuple[int, list[int]]:
  """(window length, first frames of the windows) covering a video; see the module docstring.

  Windows hold `chunk_frames + 2` frames, or the whole video when it is that short. Consecutive
  windows overlap by 2 frames; the last one ends at the video's last frame.
  """
  if chunk_frames < 1:
    raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
  window = chunk_frames + 2
  if num_frames <= window:
    return num_frames, [0]
  return window, list(range(0, num_frames - window, chunk_frames)) + [num_frames - window]


def kept_end(start: int, window: int, num_frames: int) -> int:
  """End (exclusive, a video frame index) of the frames a window's result is kept for: all but its
  last frame unless that is the video's last (it lacks a forward flow inside the window)."""
  return start + window if start + window >= num_frames else start + window - 1


def link_ids(
  previous: np.ndarray, current: np.ndarray, num_ids: int, next_id: int
) -> tuple[np.ndarray, int]:
  """Maps a window's cluster ids to video ids by IoU with the previous window's on shared frames.

  Args:
    previous: int [S, h, w] video ids of the shared frames (from the previous window).
    current: int [S, h, w] this window's cluster ids of the same frames.
    num_ids: the window's number of ids (> max(current): some clusters may miss the shared frames).
    next_id: the first unused video id.

  Returns:
    (mapping int64 [num_ids]: window id -> video id, the new first unused video id). Window ids
    matched (IoU >= LINK_MIN_IOU, Hungarian) keep the previous id; the others get new ids.
  """
  num_previous, num_current = int(previous.max()) + 1, num_ids
  intersection = np.bincount(
    (previous.astype(np.int64) * num_current + current).ravel(),
    minlength=num_previous * num_current,
  ).reshape(num_previous, num_current)
  union = intersection.sum(1, keepdims=True) + intersection.sum(0, keepdims=True) - intersection
  iou = intersection / np.maximum(union, 1)
  rows, cols = optimize.linear_sum_assignment(-iou)
  mapping = np.full(num_current, -1, np.int64)
  for row, col in zip(rows, cols):
    if iou[row, col] >= LINK_MIN_IOU:
      mapping[col] = row
  unmatched = np.flatnonzero(mapping < 0)
  mapping[unmatched] = next_id + np.arange(len(unmatched))
  return mapping, next_id + len(unmatched)


def rank_by_area(ids: np.ndarray) -> np.ndarray:
  """Relabels ids by decreasing pixel count (largest -> 0) -> uint8; ranks past 255 become 255."""
  counts = np.bincount(ids.ravel())
  order = np.argsort(-counts, kind="stable")
  rank = np.empty_like(order)
  rank[order] = np.arange(len(order))
  if np.count_nonzero(counts) > 256:
    logging.warning(
      "%d segments: the smallest %d share id 255 (PNG ids are 0..255).",
      np.count_nonzero(counts),
      np.count_nonzero(counts) - 255,
    )
  return np.minimum(rank, 255).astype(np.uint8)[ids]


class _JoinedIds:
  """One id stream of a video (`[T, h, w]`) joined from overlapping windows (see
  `predict_in_windows`)."""

  def __init__(self, num_frames: int, link_clusters: bool):
    self.num_frames, self.link_clusters = num_frames, link_clusters
    self.out = None
    self.filled = self.next_id = 0  # frames [0, filled) are labelled; ids [0, next_id) are used

  def add(self, start: int, window: int, ids: np.ndarray) -> None:
    """Joins one window's ids `[window, h, w]` starting at video frame `start`."""
    ids = ids.astype(np.int64)
    if self.out is None:
      self.out = np.zeros((self.num_frames,) + ids.shape[1:], np.int32)
    if self.link_clusters:
      if start == 0:
        mapping, self.next_id = np.arange(ids.max() + 1), int(ids.max()) + 1
      else:
        mapping, self.next_id = link_ids(
          self.out[start : self.filled],
          ids[: self.filled - start],
          int(ids.max()) + 1,
          self.next_id,
        )
      ids = mapping[ids]
    # Frames before `filled` keep the previous window's result: there the first frame of this
    # window lacks its backward flow, and cluster ids were linked on them.
    end = kept_end(start, window, self.num_frames)
    self.out[self.filled : end] = ids[self.filled - start : end - start]
    self.filled = end


def _join_windows(
  predict: Callable[[dict], dict],
  inputs: dict[str, np.ndarray],
  chunk_frames: int,
  *,
  link_clusters: bool,
  progress: bool,
  with_levels: bool = False,
  ids_key: str = "ids",
) -> tuple[np.ndarray, np.ndarray | None]:
  """(ids int32 `[T, h, w]`, and with `with_levels` the joined hierarchy levels int32
  `[L, T, h', w']` finest first, L the most levels any window has, else None)."""
  num_frames = len(next(iter(inputs.values())))
  window, starts = windows(num_frames, chunk_frames)
  joined = _JoinedIds(num_frames, link_clusters)
  levels, num_levels = [], 1
  for start in tqdm.tqdm(starts, desc="segment", unit="window", disable=not progress):
    prediction = predict(
      {k: np.asarray(v[start : start + window])[None] for k, v in inputs.items()}
    )
    if np.any(prediction.get("overflow", False)):
      logging.warning(
        "Frames %d-%d: clustering capacity exceeded (config.model.max_clusters / "
        "max_window_clusters): some clusters were dropped and their pixels went to "
        "the nearest kept one.",
        start,
        start + window - 1,
      )
    joined.add(start, window, np.asarray(prediction[ids_key])[0])
    if with_levels:
      window_levels = np.asarray(prediction["levels"])[0]  # [max_levels, window, h', w']
      levels = levels or [_JoinedIds(num_frames, link_clusters) for _ in window_levels]
      for level, ids in zip(levels, window_levels):
        level.add(start, window, ids)
      num_levels = max(num_levels, int(np.asarray(prediction["num_levels"])[0]))
  if not with_levels:
    return joined.out, None
  return joined.out, np.stack([level.out for level in levels[:num_levels]])


def predict_in_windows(
  predict: Callable[[dict], dict],
  inputs: dict[str, np.ndarray],
  chunk_frames: int,
  *,
  link_clusters: bool,
  progress: bool = True,
) -> np.ndarray:
  """Runs `predict` over windows of a video and joins the ids.

  Args:
    predict: batch dict of `[1, W, ...]` arrays -> dict with ids `[1, W, h, w]`.
    inputs: per-frame arrays `[T, ...]` (e.g. forward_flow `[T, h, w, 2]` or video `[T, h, w, 3]`).
    chunk_frames: frames kept per window; windows hold `chunk_frames + 2` frames.
    link_clusters: the ids are clusters, arbitrary per window (linked by IoU between windows);
      False: classes with a fixed meaning, joined as they are.
    progress: show a progress bar.

  Returns:
    int32 `[T, h, w]` ids, consistent over the whole video.
  """
  return _join_windows(
    predict, inputs, chunk_frames, link_clusters=link_clusters, progress=progress
  )[0]


def segment_hierarchy(
  method,
  predict: Callable[[dict], dict],
  inputs: dict[str, np.ndarray],
  chunk_frames: int,
  frame_size: tuple[int, int],
  *,
  progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """`segment_frames` for a `interface.ClustersHierarchically` method whose `predict` returns its
  levels (`with_hierarchy_levels`): the id map and every level of the hierarchy.

  Each level is joined over the windows like the ids (linked by IoU, on the token grid), upsampled
  to the prediction grid as the method upsamples its ids (torch nearest, `upsample_labels`), ranked
  by area and upsampled to `frame_size` like the ids: on a video of one window the coarsest level
  is the id map itself.

  Returns:
    (ids uint8 `[T, H, W]`, levels uint8 `[L, T, H, W]`, coarse to fine).
  """
  if not isinstance(method, interface.ClustersHierarchically):
    raise ValueError("this method has no clustering hierarchy (interface.ClustersHierarchically)")
  ids, levels = _join_windows(
    predict, inputs, chunk_frames, link_clusters=True, progress=progress, with_levels=True
  )
  grid = ids.shape[1:]
  levels = [
    upsample_nearest(rank_by_area(upsample_labels(level, grid)), frame_size)
    for level in levels[::-1]
  ]
  return upsample_nearest(rank_by_area(ids), frame_size), np.stack(levels)


def predict_in_chunks(
  predict: Callable[[dict], dict],
  inputs: dict[str, np.ndarray],
  chunks: np.ndarray,
  positions: np.ndarray,
  chunks_per_call: int,
  *,
  progress: bool = True,
) -> dict[str, np.ndarray]:
  """Runs a chunked `predict` (`interface.PredictsInChunks`) over a video, whole chunks per call.

  Each call gets `chunks_per_call` chunks of the layout back to back (the last call filled with
  copies of the last chunk, one static shape), so `predict` sees the chunks it would see on the
  whole video; the results of every frame are gathered at `positions`.

  Args:
    predict: batch dict of `[1, chunks_per_call * C, ...]` arrays -> dict of outputs; those with a
      frame axis (`[1, chunks_per_call * C, ...]`) are kept.
    inputs: per-frame arrays `[T, ...]`.
    chunks: int `[N, C]` video frames of each chunk; positions: int `[T]` (the method's
      `chunk_layout`).
    chunks_per_call: chunks per `predict` call (bounds the memory).

  Returns:
    name -> `[T, ...]` NumPy, each frame's result from its chunk.
  """
  chunks, positions = np.asarray(chunks), np.asarray(positions)
  per_call = max(1, min(int(chunks_per_call), len(chunks)))
  length = per_call * chunks.shape[1]
  outputs: dict[str, list[np.ndarray]] = {}
  for first in tqdm.tqdm(
    range(0, len(chunks), per_call), desc="segment", unit="call", disable=not progress
  ):
    group = chunks[first : first + per_call]
    kept = len(group) * chunks.shape[1]  # frames of real chunks; the rest is padding
    group = np.concatenate([group, np.repeat(group[-1:], per_call - len(group), 0)])
    frames = group.reshape(-1)
    prediction = predict({k: np.asarray(v)[frames][None] for k, v in inputs.items()})
    for name, value in prediction.items():
      value = np.asarray(value)
      if value.ndim >= 2 and value.shape[:2] == (1, length):
        outputs.setdefault(name, []).append(value[0, :kept])
  return {name: np.concatenate(parts)[positions] for name, parts in outputs.items()}


def segment_frames(
  method,
  predict: Callable[[dict], dict],
  inputs: dict[str, np.ndarray],
  config,
  chunk_frames: int,
  frame_size: tuple[int, int],
  *,
  progress: bool = True,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
  """A video's id map at the frame size, and its candidate masks where the method proposes them.

  Chunked methods (`interface.PredictsInChunks`) run in calls of whole chunks (about
  `chunk_frames` frames), the others in windows of `chunk_frames` + 2 frames (`predict_in_windows`;
  cluster ids linked between windows and ranked by area, class ids as they are, upsampled nearest).
  For methods with `interface.ProposesCandidates`, the ids are the method's resolution of the
  overlapping candidates, upsampled with torch's rule like the candidates themselves. With
  `config.eval.mode` "official", the method's `OFFICIAL_EVALUATION`
  (`interface.ReproducesOfficialEvaluation`: last frame dropped and repeated, ids upsampled from
  the official grid with torch's float32 nearest rule, every cluster a proposal).

  Args:
    method: a `SegmentsVideos` method; predict: batch dict `[1, W, ...]` -> outputs (NumPy or jax);
    inputs: per-frame arrays `[T, ...]` (`segment_inputs`); frame_size: (H, W) of the frames.

  Returns:
    (ids uint8 `[T, H, W]`, None or (masks bool `[T, K, h, w]`, valid bool `[T, K]`): the
    candidates on the prediction grid, `upsample_nearest_floor` to `frame_size`).
  """
  official = {}
  if config_lib.is_official(config) and isinstance(method, interface.ReproducesOfficialEvaluation):
    official = {"nearest_rule": "torch", **method.OFFICIAL_EVALUATION}
  num_frames = len(next(iter(inputs.values())))
  dropped = bool(official.get("drop_last_frame")) and num_frames > 1
  if dropped:
    inputs = {k: v[:-1] for k, v in inputs.items()}
    num_frames -= 1
  rule = official.get("nearest_rule", "exact")
  candidates = None
  if isinstance(method, interface.PredictsInChunks):
    chunks, positions = method.chunk_layout(num_frames, config)
    outputs = predict_in_chunks(
      predict, inputs, chunks, positions, max(1, chunk_frames // chunks.shape[1]), progress=progress
    )
  else:
    clusters = method.SEGMENT_IDS == "clusters"
    ids = _join_windows(
      predict,
      inputs,
      chunk_frames,
      link_clusters=clusters,
      progress=progress,
      ids_key=official.get("ids_key", "ids"),
    )[0]
    if clusters and official.get("every_cluster_is_a_proposal"):
      if ids.max() + 1 > 255:
        raise ValueError(
          f"{int(ids.max()) + 1} clusters do not fit the ids 1..255 of a DAVIS PNG (official "
          "evaluation: every cluster is a proposal)"
        )
      ids = ids + 1
    elif clusters:
      ids = rank_by_area(ids)
    outputs = {"ids": ids}
  if isinstance(method, interface.ProposesCandidates):
    masks, ids = method.candidate_masks(
      outputs["candidates"], outputs["candidate_valid"], tuple(frame_size), config
    )
    ids = upsample_nearest_floor(ids, frame_size, rule)
    candidates = (masks, np.asarray(outputs["candidate_valid"], bool))
  elif official:
    ids = upsample_nearest_floor(np.asarray(outputs["ids"]).astype(np.uint8), frame_size, rule)
  else:
    ids = upsample_nearest(np.asarray(outputs["ids"]).astype(np.uint8), frame_size)
  if dropped:
    # The official evaluation repeats the last segmented frame's masks for the dropped frame.
    ids = np.concatenate([ids, ids[-1:]])
    if candidates is not None:
      candidates = tuple(np.concatenate([c, c[-1:]]) for c in candidates)
  return ids, candidates


def upsample_nearest_floor(x: np.ndarray, size: tuple[int, int], rule: str = "exact") -> np.ndarray:
  """Nearest-neighbour resize of `[..., h, w]` to `[..., H, W]` with torch's
  `F.interpolate(mode="nearest")` rule, source index floor(i * h / H) computed exactly (vosjax) or
  as torch computes it in float32 (`rule="torch"`, the official evaluators; `images.NEAREST_RULES`).
  """
  return images.upsample_nearest(x, size, rule)


def upsample_nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of `[..., h, w]` to `[..., H, W]` (pixel centres, as
  jax.image.resize; `clustering.upsample_labels` copies torch's top-left alignment instead)."""
  height, width = ids.shape[-2:]
  rows = ((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64)
  cols = ((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64)
  return ids[..., rows[:, None], cols[None, :]]


def upsample_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of `[..., h, w]` to `[..., H, W]` with torch's
  `F.interpolate(mode="nearest")` as torch computes it (float32 scale, `images.NEAREST_RULES`
  "torch"; top-left aligned), as Betrayed's `clustering.upsample_labels`."""
  return images.upsample_nearest(labels, size, "torch")
