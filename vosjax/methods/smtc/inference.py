"""SMTC multi-object inference (official `src/eval_multi.py`) and the official evaluator's
post-processing of its candidate masks (`davis2017-evaluation/davis2017/results.py::load_davis`).

Inference (`predict`, jitted, static shapes): the frames are resized (bilinear) to
`model.inference_resolution` (official (480, 800)) and normalised with the Kinetics statistics of
`eval_multi.py` (`model.inference_mean`, `model.inference_std`; training uses ImageNet's). They go
through the backbone and the SMTC head with `model.inference_iterations` (5) slot-attention
iterations in independent chunks of `data.clip_length` (4) consecutive frames; the last chunk is
filled with the video's last frames (`chunk_indices`). The candidates of a frame are its S x P
instance masks whose instance slot has cosine >= `model.similarity_threshold` (0.5) with its
semantic slot. The official keeps a variable-length list; here the candidate axis is fixed, K = S *
P (candidate k = s * P + p), with a validity mask.

Post-processing (`candidate_masks`, NumPy, as the official evaluator): each candidate's token mask
is upsampled nearest to the frame size (torch `F.interpolate` default: source index floor(i * h /
H)), min-max normalised over the frame's pixels and thresholded > `model.mask_threshold` (0.3). A
mask with max == min is empty (the official divides 0 by 0, and NaN > 0.3 is False). Nearest
upsampling commutes with the threshold, so the masks are computed on the tokens the frame shows and
upsampled. Id map (PNGs): where candidates overlap, a pixel takes the one with the highest
normalised value (the lowest index on ties); id 1 + k, 0 where no candidate covers the pixel.

Instance noise: the official draws fresh noise for every frame at every call; here one draw from
`model.inference_seed` per frame position of a chunk, the same for every chunk, so that a frame's
result does not depend on how chunks are grouped into calls
(`evaluation.windows.predict_in_chunks`).
"""

from __future__ import annotations

from typing import Any

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vosjax.core import config as config_lib
from vosjax.core import images
from vosjax.data import augment
from vosjax.methods import vit_video
from vosjax.models import precision
from vosjax.models import smtc

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)  # eval_multi.py normalize_video
KINETICS_STD = (0.22803, 0.22145, 0.216989)


def chunk_indices(num_frames: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
  """Frames of each inference chunk and where each frame's result lies (official `inference`).

  Returns:
    frames: int `[num_chunks, chunk]`: consecutive frames; the last chunk is filled with the video's
      last frames (official `torch.cat([input, rgbs[:, -(n_f - bs):]])`; cyclic when T < chunk).
    positions: int `[num_frames]` index of each frame's result in the flattened chunks.
  """
  if num_frames < 1 or chunk < 1:
    raise ValueError(
      f"chunk_indices needs num_frames >= 1 and chunk >= 1, got {num_frames}, {chunk}"
    )
  frames, positions = [], []
  for index, start in enumerate(range(0, num_frames, chunk)):
    real = np.arange(start, min(start + chunk, num_frames))
    fill = np.arange(num_frames - (chunk - len(real)), num_frames) % num_frames
    frames.append(np.concatenate([real, fill]))
    positions.extend(index * chunk + np.arange(len(real)))
  return np.stack(frames), np.asarray(positions)


def resize_video(video: jax.Array, resolution) -> jax.Array:
  """Bilinear resize of `[..., H, W, 3]` to `resolution` (no antialiasing, like cv2.resize)."""
  if resolution is None or tuple(resolution) == tuple(video.shape[-3:-1]):
    return video
  return jax.image.resize(
    video, video.shape[:-3] + tuple(resolution) + (3,), "bilinear", antialias=False
  )


def instance_noise(config: ml_collections.ConfigDict, chunk: int, dim: int) -> jax.Array:
  """Standard-normal noise `[1, chunk, S, P, dim]` of the instance sample, from
  `model.inference_seed` (broadcast to every chunk by `inference_outputs`)."""
  shape = (1, chunk, config.model.num_semantic_slots, config.model.num_instances, dim)
  return jax.random.normal(jax.random.key(config.model.inference_seed), shape)


def inference_outputs(
  params: Any,
  model: Any,
  chunks: jax.Array,
  config: ml_collections.ConfigDict,
  noise: jax.Array | None = None,
) -> smtc.SMTCOutput:
  """The inference forward pass (official `model(input)` in `eval_multi.py`).

  Args:
    params: {"encoder", "head"}.
    model: `vosjax.methods.smtc.SMTCModel` (its backbone and 5-iteration `inference_head`).
    chunks: `[N, C, H, W, 3]` in [0, 1], already at the inference resolution.
    config: reads model.inference_mean / inference_std / inference_seed / num_semantic_slots /
      num_instances.
    noise: instance noise broadcastable to `[N, C, S, P, D]`; default `instance_noise`.

  Returns:
    `vosjax.models.smtc.SMTCOutput` with leading axes `[N, C]`.
  """
  num, chunk = chunks.shape[:2]
  frames = augment.normalize(chunks, config.model.inference_mean, config.model.inference_std)
  keys = model.backbone.apply(
    {"params": params["encoder"]}, frames.reshape((num * chunk,) + chunks.shape[2:])
  ).keys
  keys = keys.astype(jnp.float32).reshape((num, chunk) + keys.shape[1:])
  if noise is None:
    noise = instance_noise(config, chunk, keys.shape[-1])
  noise = jnp.broadcast_to(
    noise, (num, chunk, config.model.num_semantic_slots, config.model.num_instances, keys.shape[-1])
  )
  return precision.apply(model.inference_head, params["head"], keys, noise, dtype=model.dtype)


def candidates(out: smtc.SMTCOutput, similarity_threshold: float) -> tuple[jax.Array, jax.Array]:
  """All instance masks on a fixed candidate axis, and which ones the official keeps.

  Returns:
    masks: `[..., K, N]` (K = S * P, candidate s * P + p; official `instance_mask` rearranged
      `t k p hw -> t (k p) hw`); valid: bool `[..., K]`, similarity >= `similarity_threshold`.
  """
  masks = out.instance_masks
  masks = masks.reshape(masks.shape[:-3] + (-1, masks.shape[-1]))
  valid = out.similarity >= similarity_threshold
  return masks, valid.reshape(valid.shape[:-2] + (-1,))


def upsample_indices(grid: int, size: int, rule: str = "exact") -> np.ndarray:
  """Source index of each output pixel for nearest upsampling of `grid` cells to `size` pixels,
  torch `F.interpolate(mode="nearest")`: floor(i * grid / size), computed exactly ("exact") or in
  float32 as torch and the official evaluator do ("torch"; `core.images.NEAREST_RULES`)."""
  return images.nearest_source_indices(grid, size, rule)


def nearest_rule(config: ml_collections.ConfigDict) -> str:
  """The upsampling rule of `config.eval.mode`: "torch" (official), else "exact"."""
  return "torch" if config_lib.is_official(config) else "exact"


def predict(
  params: Any, model: Any, batch: dict, config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
  """Candidate instance masks and an id map of a video (official `eval_multi.py`).

  Args:
    batch: video `[B, T, H, W, 3]` in [0, 1] (any size; resized to model.inference_resolution).

  Returns:
    candidates: float32 `[B, T, K, h, w]` the instance masks on the token grid (K = S * P);
    candidate_valid: bool `[B, T, K]` the candidates (similarity >= model.similarity_threshold);
    ids: int32 `[B, T, H, W]` the id map of the module docstring, normalised over all tokens and
      upsampled to the input size (torch nearest); semantic_ids: int32 `[B, T, H, W]` the argmax
      of the semantic masks.
  """
  video = vit_video.check_video(batch, "prediction", "SMTC")
  batch_size, num_frames, height, width = video.shape[:4]
  video = resize_video(video, config.model.inference_resolution)
  frames, positions = chunk_indices(num_frames, config.data.clip_length)
  chunks = video[:, frames.reshape(-1)].reshape(
    (batch_size * frames.shape[0],) + frames.shape[1:] + video.shape[2:]
  )
  out = inference_outputs(params, model, chunks, config)
  select = lambda x: x.reshape((batch_size, -1) + x.shape[2:])[:, positions]
  masks, valid = candidates(out, config.model.similarity_threshold)
  masks, valid = select(masks), select(valid)  # [B, T, K, N], [B, T, K]
  grid = model.backbone.arch.grid_shape(*video.shape[2:4])
  low, high = masks.min(-1, keepdims=True), masks.max(-1, keepdims=True)
  # Each mask's maximum is exactly 1 (x / x in IEEE; XLA may multiply by a reciprocal instead),
  # so that ties at the maxima go to the lowest index as in `candidate_masks`.
  normalised = jnp.where(masks >= high, 1.0, (masks - low) / (high - low))
  normalised = jnp.where(valid[..., None] & (high > low), normalised, -1.0)
  ids = jnp.where(normalised.max(2) > config.model.mask_threshold, normalised.argmax(2) + 1, 0)
  semantic_ids = select(out.semantic_masks).argmax(2)
  rows = upsample_indices(grid[0], height, nearest_rule(config))[:, None]
  cols = upsample_indices(grid[1], width, nearest_rule(config))[None, :]
  upsample = lambda tokens: tokens.reshape(tokens.shape[:2] + grid)[:, :, rows, cols]
  return {
    "candidates": masks.reshape(masks.shape[:3] + grid).astype(jnp.float32),
    "candidate_valid": valid,
    "ids": upsample(ids).astype(jnp.int32),
    "semantic_ids": upsample(semantic_ids).astype(jnp.int32),
  }


def candidate_masks(
  candidates: np.ndarray,
  valid: np.ndarray,
  frame_size: tuple[int, int],
  config: ml_collections.ConfigDict,
) -> tuple[np.ndarray, np.ndarray]:
  """The official evaluator's binary candidate masks and the id map, on the token grid.

  Args:
    candidates: float `[T, K, h, w]` (`predict`'s candidates of one video).
    valid: bool `[T, K]`.
    frame_size: (H, W) of the frames the masks are upsampled to (torch nearest,
      `upsample_indices`, float32 as torch with `config.eval.mode` "official"); only the tokens
      that upsampling shows count in the min-max.
    config: reads model.mask_threshold, eval.mode.

  Returns:
    masks: bool `[T, K, h, w]`, empty where not valid; the frame's masks are their nearest
      upsampling to `frame_size`. ids: uint8 `[T, h, w]`, see the module docstring.
  """
  candidates = np.asarray(candidates, np.float32)
  valid = np.asarray(valid, bool)
  if candidates.ndim != 4 or valid.shape != candidates.shape[:2]:
    raise ValueError(
      f"candidates must be [T, K, h, w] and valid [T, K], got {candidates.shape} and {valid.shape}"
    )
  if candidates.shape[1] > 255:
    raise ValueError(f"{candidates.shape[1]} candidates do not fit the ids 1..255 of a DAVIS PNG")
  rule = nearest_rule(config)
  rows = np.unique(upsample_indices(candidates.shape[2], frame_size[0], rule))
  cols = np.unique(upsample_indices(candidates.shape[3], frame_size[1], rule))
  shown = candidates[:, :, rows][:, :, :, cols]
  low, high = shown.min((2, 3), keepdims=True), shown.max((2, 3), keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    normalised = (candidates - low) / (high - low)  # float32, as the official
  normalised = np.where(valid[:, :, None, None] & (high > low), normalised, -1.0)
  threshold = config.model.mask_threshold
  masks = normalised > threshold
  ids = np.where(normalised.max(1) > threshold, normalised.argmax(1) + 1, 0).astype(np.uint8)
  return masks, ids


def segment_inputs(frames: np.ndarray, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """uint8 frames `[T, H, W, 3]` -> video float32 `[T, h, w, 3]` in [0, 1] at
  `model.inference_resolution` (None: `data.resolution`) (official `readRGB`: / 255, then cv2
  bilinear resize)."""
  height, width = config.model.inference_resolution or config.data.resolution
  return {
    "video": np.stack(
      [
        cv2.resize(
          frame.astype(np.float32) / 255.0, (width, height), interpolation=cv2.INTER_LINEAR
        )
        for frame in frames
      ]
    )
  }
