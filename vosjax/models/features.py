"""Frozen ViT feature extraction over video batches, chunked over frames to bound memory."""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from vosjax.core import platform
from vosjax.core import shard_loops
from vosjax.models import vit

# ImageNet statistics, used by both DINO and DINOv2 preprocessing.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FeatureFn = Callable[[Any, jax.Array], dict[str, jax.Array]]

# Frames per forward pass for `frame_chunk=0` (auto), by backend. On CPU two frames keep a chunk's
# activations in cache (faster than chunks of 8, docs/performance.md); accelerators want large
# batches.
AUTO_FRAME_CHUNK = {"cpu": 2}
AUTO_FRAME_CHUNK_ACCELERATOR = 8


def resolve_frame_chunk(frame_chunk: int) -> int:
  """`frame_chunk`, or for 0 the automatic choice (`AUTO_FRAME_CHUNK`) of the platform the program
  is compiled for (`platform.target_platform()`)."""
  if frame_chunk < 0:
    raise ValueError(f"frame_chunk must be >= 1, or 0 for automatic; got {frame_chunk}")
  if frame_chunk == 0:
    return AUTO_FRAME_CHUNK.get(platform.target_platform(), AUTO_FRAME_CHUNK_ACCELERATOR)
  return frame_chunk


def make_feature_extractor(
  module: vit.VisionTransformer,
  frame_chunk: int,
  mean: Sequence[float] = IMAGENET_MEAN,
  std: Sequence[float] = IMAGENET_STD,
  output_dtype: Any = jnp.float32,
) -> FeatureFn:
  """Builds a jitted `extract(params, video) -> features` function for a frozen backbone.

  The module's dtype is the compute dtype (build it with dtype=jnp.bfloat16 for a bf16 forward;
  parameters stay float32 and are cast inside the layers). Frames are processed `frame_chunk` at a
  time with `lax.map`, so peak memory is that of one chunk; the frame count is padded up to a whole
  number of chunks and the padding is dropped from the outputs. Under a `data` mesh each device
  loops over its own clips' frames (`core.shard_loops`). No gradient flows to the params.

  Args:
    module: the ViT.
    frame_chunk: frames per forward pass (>= 1), or 0 for automatic (`resolve_frame_chunk`, at
      trace time: 2 on CPU, 8 on accelerators).
    mean: per-channel mean of the normalisation, applied to video in [0, 1].
    std: per-channel standard deviation.
    output_dtype: dtype of the returned features.

  Returns:
    extract(params, video) where params is the module's params tree (without the 'params'
    wrapper) and video is float [B, T, H, W, 3] in [0, 1]. It returns a dict:
      keys:   [B, T, h, w, C] last-block key projection (see vit.ViTOutput.keys),
      tokens: [B, T, h, w, C] last-block output tokens before the final norm,
      cls:    [B, T, C] CLS token before the final norm.
  """
  resolve_frame_chunk(frame_chunk)  # validates
  mean_array = jnp.asarray(mean, jnp.float32)
  std_array = jnp.asarray(std, jnp.float32)

  def forward(params: Any, frames: jax.Array) -> dict[str, jax.Array]:
    output = module.apply({"params": params}, frames.astype(module.dtype))
    return {
      "keys": output.keys.astype(output_dtype),
      "tokens": output.tokens.astype(output_dtype),
      "cls": output.cls.astype(output_dtype),
    }

  @jax.jit
  def extract(params: Any, video: jax.Array) -> dict[str, jax.Array]:
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"video must be [B, T, H, W, 3], got shape {video.shape}")
    batch, time, height, width, _ = video.shape
    frames = video.reshape(batch * time, height, width, 3).astype(jnp.float32)
    frames = (frames - mean_array) / std_array
    params = jax.lax.stop_gradient(params)
    # `chunk` frames of each device's own clips per forward pass (`core.shard_loops`: a loop over
    # the global frames would gather every clip onto every device).
    features = shard_loops.map_rows(
      lambda chunk_frames: forward(params, chunk_frames), frames, resolve_frame_chunk(frame_chunk)
    )
    return jax.tree.map(lambda x: x.reshape((batch, time) + x.shape[1:]), features)

  return extract
