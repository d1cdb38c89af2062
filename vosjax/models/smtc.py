"""SMTC (Qian et al., ICCV 2023) on top of a ViT's last-block keys, in flax.linen.

Official code: `shvdiwnkozbw/SMTC` `src/model/model_twostage.py::SlotAttentionAutoEncoder`. The
backbone (DINO ViT-S/16, fine-tuned) is `vosjax.models.vit`; this module takes its keys
`[B, T, h, w, C]` (`vit.ViTOutput.keys`, heads concatenated head-major as the official code does):

  1. Temporal correlation fusion (`TemporalCorrelationFusion`): each frame's keys plus a projection
     of their raw dot products with the previous frame's keys resized to a fixed grid.
  2. Two-stage slot attention over every frame's fused keys
     (`vosjax.models.smtc_slot_attention`): S semantic slots, P instance slots per semantic.
  3. `mlp_slot` (`InstanceProjection`): D -> 2D ReLU -> D, then L2 normalisation, on the instance
     slots: the embeddings of the instance consistency loss.
  4. Inference masks: semantic mask = softmax over S of the semantic logits; instance mask =
     semantic mask x softmax over P of the instance logits; similarity = cos(semantic slot,
     instance slot), the score the official inference keeps a mask by (>= 0.5).
"""

from __future__ import annotations

from typing import Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from vosjax.models import precision
from vosjax.models import smtc_slot_attention
from vosjax.models import spatiotemporal


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """`torch.nn.functional.normalize`: x / max(||x||_2, eps) along `axis`."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def previous_frame(x: jax.Array) -> jax.Array:
  """`[B, T, ...]` -> the previous frame of each frame, cyclically (frame 0 gets frame T-1), as
  the official `torch.roll(x, shifts=1, dims=1)`."""
  return jnp.roll(x, shift=1, axis=1)


class TemporalCorrelationFusion(nn.Module):
  """keys + Conv1d_1x1(correlation with the previous frame), the official `calculate_transport`.

  The previous frame's keys are bilinearly resized (PyTorch `F.interpolate(mode='bilinear')`,
  align_corners=False, no antialiasing) to `correlation_size`, whose cell count is the fixed input
  width of the projection (official: the training resolution / 16 = 16 x 16 = 256, whatever the
  inference resolution). corr[m, n] = <k_prev_resized[n], k[m]> (raw dot products, no
  normalisation); the 1x1 Conv1d over the n axis is a Dense from n to C (`transport_proj`).

  Attributes:
    correlation_size: (h', w') the previous frame's keys are resized to.
  """

  correlation_size: Sequence[int] = (16, 16)

  @nn.compact
  def __call__(self, keys: jax.Array) -> jax.Array:
    """`keys` `[B, T, h, w, C]` -> fused keys `[B, T, h, w, C]`."""
    if keys.ndim != 5:
      raise ValueError(f"keys must be [B, T, h, w, C], got shape {keys.shape}.")
    batch, time, height, width, channels = keys.shape
    grid = tuple(self.correlation_size)
    resized = jax.image.resize(
      keys, (batch, time) + grid + (channels,), "bilinear", antialias=False
    )
    resized = previous_frame(resized).reshape(batch, time, grid[0] * grid[1], channels)
    correlation = jnp.einsum("btnc,bthwc->bthwn", resized, keys)
    fan_in = grid[0] * grid[1]
    return keys + spatiotemporal.torch_dense(channels, fan_in, name="transport_proj")(correlation)


class InstanceProjection(nn.Module):
  """The official `mlp_slot`: Linear(D, 2D) - ReLU - Linear(2D, D), then L2 normalisation."""

  @nn.compact
  def __call__(self, slots: jax.Array) -> jax.Array:
    """`[..., D]` -> unit-norm embeddings `[..., D]`."""
    dim = slots.shape[-1]
    hidden = spatiotemporal.torch_dense(2 * dim, dim, name="hidden")(slots)
    return l2_normalize(spatiotemporal.torch_dense(dim, 2 * dim, name="out")(nn.relu(hidden)))


@flax.struct.dataclass
class SMTCOutput:
  """Every output of `SMTC` for a clip (S semantic slots, P instances, N = h * w tokens).

  Attributes:
    keys: `[B, T, N, C]` the backbone keys before fusion (the teacher's are the transport loss's
      tokens, the official `frame`).
    semantic_slots: `[B, T, S, C]`.
    semantic_logits: `[B, T, S, N]` last stage-1 logits.
    instance_slots: `[B, T, S, P, C]`.
    instance_logits: `[B, T, S, P, N]` last stage-2 logits.
    instance_embeddings: `[B, T, S, P, C]` unit-norm `mlp_slot` outputs (`warp_instance`).
    semantic_masks: `[B, T, S, N]` softmax over S of `semantic_logits`.
    instance_masks: `[B, T, S, P, N]` semantic mask x softmax over P of `instance_logits`.
    similarity: `[B, T, S, P]` cosine of each instance slot with its semantic slot.
  """

  keys: jax.Array
  semantic_slots: jax.Array
  semantic_logits: jax.Array
  instance_slots: jax.Array
  instance_logits: jax.Array
  instance_embeddings: jax.Array
  semantic_masks: jax.Array
  instance_masks: jax.Array
  similarity: jax.Array


class SMTC(nn.Module):
  """Fusion, two-stage slot attention and heads over backbone keys (see the module docstring).

  Attributes:
    num_semantic_slots: S (official 16).
    num_instances: P (official 4).
    num_iterations: slot-attention iterations (official 3 in training, 5 at inference; the
      parameters do not depend on it).
    correlation_size: grid of the previous-frame keys in the fusion (official (16, 16)).
  """

  num_semantic_slots: int = 16
  num_instances: int = 4
  num_iterations: int = 3
  correlation_size: Sequence[int] = (16, 16)

  @nn.compact
  def __call__(self, keys: jax.Array, instance_noise: jax.Array | None = None) -> SMTCOutput:
    """Runs the model on a clip's keys.

    Args:
      keys: `[B, T, h, w, C]` last-block ViT keys.
      instance_noise: standard-normal noise `[B, T, S, P, C]` of the instance sample; drawn from
        the 'instances' RNG stream when None.

    Returns:
      SMTCOutput.
    """
    batch, time, height, width, channels = keys.shape
    frames, tokens = batch * time, height * width
    fused = TemporalCorrelationFusion(self.correlation_size, name="fusion")(keys)
    if instance_noise is not None:
      instance_noise = instance_noise.reshape((frames,) + instance_noise.shape[2:])
    slots = smtc_slot_attention.SemanticInstanceSlotAttention(
      num_semantic_slots=self.num_semantic_slots,
      num_instances=self.num_instances,
      num_iterations=self.num_iterations,
      name="slot_attention",
    )(fused.reshape(frames, tokens, channels), instance_noise)
    per_clip = lambda x: x.reshape((batch, time) + x.shape[1:])
    semantic_slots, semantic_logits = (
      per_clip(slots.semantic_slots),
      per_clip(slots.semantic_logits),
    )
    instance_slots = per_clip(slots.instance_slots)
    instance_logits = per_clip(slots.instance_logits)
    embeddings = InstanceProjection(name="mlp_slot")(instance_slots)

    semantic_masks = precision.softmax_float32(semantic_logits, axis=2)
    instance_masks = semantic_masks[:, :, :, None] * precision.softmax_float32(
      instance_logits, axis=3
    )
    similarity = jnp.einsum(
      "btsc,btspc->btsp", l2_normalize(semantic_slots), l2_normalize(instance_slots)
    )
    return SMTCOutput(
      keys=keys.reshape(batch, time, tokens, channels),
      semantic_slots=semantic_slots,
      semantic_logits=semantic_logits,
      instance_slots=instance_slots,
      instance_logits=instance_logits,
      instance_embeddings=embeddings,
      semantic_masks=semantic_masks,
      instance_masks=instance_masks,
      similarity=similarity,
    )
