"""Motion Grouping (Yang et al., ICCV 2021): method glue for `vosjax.train`.

Training sample: two optical flows of the same frame (official: two different gaps of the same
target frame). On MOVi-format data these are the frame's forward (t -> t+1) and backward (t -> t-1)
flows, so the data config uses `clip_length=1, clip_margin=1` (frames that have both); on DAVIS
folders the flow-pair reader gives gaps from {1, 2, -1, -2} directly (`flow_a`, `flow_b`). Flows are
colour-wheel encoded as in the official code (`config.model.flow_encoding="rgb"`) or fed raw
("raw").

Evaluation: each frame's forward and backward flow go through the model; in each, the background
slot is the one with more mass on the image border and the foreground is the rest (no ground truth
involved: the official evaluation picks the slot by IoU with the ground truth, an oracle); the
foreground masks of the available flows are averaged and thresholded at 0.5, like the official
"mean" masks.

The authors' released checkpoints import with `--config.init.checkpoint=PATH` (`official_checkpoint`
gives the names and layouts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vosjax.core import config as config_lib
from vosjax.core import images
from vosjax.core import optimizers
from vosjax.data import optical_flow
from vosjax.data import video as video_io
from vosjax.methods.motion_grouping import losses
from vosjax.methods.motion_grouping import official_checkpoint
from vosjax.models import precision
from vosjax.models import flow_encoding
from vosjax.models import motion_grouping as mg_model

# vosjax.segment: ids are classes (0 background, 1 foreground), joined between windows as they are.
SEGMENT_IDS = "classes"


def default_config() -> ml_collections.ConfigDict:
  """The official hyper-parameters (configs/motion_grouping.py documents them and adds the data)."""
  config = config_lib.base_config(
    "motion_grouping",
    num_train_steps=300_000,
    eval_every_steps=5_000,
    checkpoint_every_steps=5_000,
    num_eval_videos_to_write=8,
  )

  config.model = ml_collections.ConfigDict()
  config.model.flow_encoding = "rgb"  # official --flow_to_rgb; "raw" for (u, v)
  config.model.raw_flow_scale = 1.0  # "raw": (u, v) divided by this
  config.model.num_slots = 2
  config.model.num_iterations = 5
  config.model.encoder_widths = (64, 128, 256)
  config.model.slot_dim = 256
  config.model.slot_mlp_hidden_size = 256
  config.model.decoder_transpose_widths = (64, 64, 64)
  config.model.decoder_conv_width = 64
  config.model.decoder_instance_norm = True  # official; see models.motion_grouping.MotionGrouping
  config.model.gradient_mode = "full"
  config.model.dtype = "float32"  # compute dtype, "float32" or "bfloat16" (vosjax.models.precision)
  # Flows encoded / slot images decoded at a time; the backward pass recomputes each decoder
  # chunk's activations: a much lower peak memory for a little more time per step, and a faster
  # forward pass on CPU (docs/performance.md, "Motion Grouping memory"). 0: all at once.
  config.model.encoder_chunk_size = 2
  config.model.decoder_chunk_size = 4

  config.loss = ml_collections.ConfigDict()
  config.loss.recon_scale = 1e2
  config.loss.ent_scale = 1e-2
  config.loss.cons_scale = 1e-2

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 5e-4
  config.optimizer.warmup_steps = 200
  config.optimizer.decay_steps = 80_000
  config.optimizer.grad_clip_norm = ml_collections.FieldReference(None, field_type=float)
  config.optimizer.eps = 1e-8  # Adam's epsilon (PyTorch's default, which the official code keeps)
  return config


def make_model(config: ml_collections.ConfigDict) -> mg_model.MotionGrouping:
  m = config.model
  return mg_model.MotionGrouping(
    num_slots=m.num_slots,
    num_iterations=m.num_iterations,
    encoder_widths=tuple(m.encoder_widths),
    encoder_chunk_size=m.encoder_chunk_size,
    slot_dim=m.slot_dim,
    slot_mlp_hidden_size=m.slot_mlp_hidden_size,
    decoder_transpose_widths=tuple(m.decoder_transpose_widths),
    decoder_conv_width=m.decoder_conv_width,
    decoder_instance_norm=m.decoder_instance_norm,
    decoder_chunk_size=m.decoder_chunk_size,
    gradient_mode=m.gradient_mode,
  )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with the official schedule: linear warm-up, then the lr halves every `decay_steps`."""
  o = config.optimizer
  schedule = losses.motion_grouping_lr_schedule(o.learning_rate, o.warmup_steps, o.decay_steps)
  return optax.chain(
    *optimizers.gradient_clipping(o.grad_clip_norm), optax.adam(schedule, eps=o.eps)
  )


def import_params(state_dict: dict[str, np.ndarray], params, config):
  """The official checkpoint's `model_state_dict` as params (see `official_checkpoint`)."""
  return official_checkpoint.import_params(state_dict, params, config)


def encode(flow: jnp.ndarray, config: ml_collections.ConfigDict) -> jnp.ndarray:
  """`[..., H, W, 2]` flow (delta_row, delta_col) -> the network input `[..., H, W, C]`."""
  if config.model.flow_encoding == "rgb":
    return flow_encoding.encode_flow_rgb(flow)
  if config.model.flow_encoding == "raw":
    return flow_encoding.encode_flow_raw(flow, config.model.raw_flow_scale)
  raise ValueError(
    f"config.model.flow_encoding must be 'rgb' or 'raw', got {config.model.flow_encoding!r}."
  )


def flow_pair(batch: dict) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The two flows `[B, H, W, 2]` of the same frame that one training sample holds."""
  if "flow_a" in batch:
    return batch["flow_a"], batch["flow_b"]
  if batch["forward_flow"].shape[1] != 1:
    raise ValueError(
      "Motion Grouping trains on one frame per sample: set "
      "--config.data.clip_length=1 --config.data.clip_margin=1, got clips of "
      f"{batch['forward_flow'].shape[1]} frames."
    )
  return batch["forward_flow"][:, 0], batch["backward_flow"][:, 0]


def example_batch(config) -> dict[str, np.ndarray]:
  """One zero flow pair at `config.data.resolution`."""
  flow = np.zeros((1,) + tuple(config.data.resolution) + (2,), np.float32)
  return {"flow_a": flow, "flow_b": flow}


def init_params(model, config, rng, batch):
  flow_a, _ = flow_pair(batch)
  return model.init(rng, encode(jnp.asarray(flow_a[:1]), config))["params"]


def loss_fn(params, model, batch, rng, step, config, extra):
  del rng, extra  # Deterministic (learned-query slots, no dropout); no extra state.
  flow_a, flow_b = flow_pair(batch)
  inputs_a, inputs_b = encode(flow_a, config), encode(flow_b, config)
  # Both flows in one forward pass: the same parameters, half the kernel launches.
  out = precision.apply(
    model,
    params,
    jnp.concatenate([inputs_a, inputs_b], axis=0),
    dtype=precision.compute_dtype(config),
  )
  half = inputs_a.shape[0]
  out_a = jax.tree.map(lambda x: x[:half], out)
  out_b = jax.tree.map(lambda x: x[half:], out)
  total, terms = losses.motion_grouping_losses(
    out_a,
    out_b,
    inputs_a,
    inputs_b,
    step,
    recon_scale=config.loss.recon_scale,
    ent_scale=config.loss.ent_scale,
    cons_scale=config.loss.cons_scale,
    decay_steps=config.optimizer.decay_steps,
  )
  return total, terms


def border_mass(masks: jnp.ndarray) -> jnp.ndarray:
  """Mean of each mask on the one-pixel image border. `[..., K, H, W]` -> `[..., K]`."""
  border = np.zeros(masks.shape[-2:], bool)
  border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
  return jnp.sum(masks * border, axis=(-2, -1)) / border.sum()


def foreground_from_masks(masks: jnp.ndarray) -> jnp.ndarray:
  """Soft foreground `[N, H, W]` of slot masks `[N, K, H, W]` (summing to 1 over K).

  Everything but the background slot, the one with the most mass on the image border: with
  K = 2 that is the other slot's mask; with more slots, the union of the objects' slots.
  """
  background_slot = jnp.argmax(border_mass(masks), axis=-1)
  return 1.0 - jnp.take_along_axis(masks, background_slot[:, None, None, None], axis=1)[:, 0]


def slot_masks(params, model, flow: jnp.ndarray, config) -> jnp.ndarray:
  """Soft slot masks `[N, K, H, W]` (float32) of flows `[N, H, W, 2]`, computed in the configured
  `model.dtype`."""
  return precision.apply(
    model, params, encode(flow, config), dtype=precision.compute_dtype(config)
  )["masks"]


def foreground_probability(params, model, flow: jnp.ndarray, config) -> jnp.ndarray:
  """Soft foreground `[N, H, W]` of flows `[N, H, W, 2]` (see `foreground_from_masks`)."""
  return foreground_from_masks(slot_masks(params, model, flow, config))


def predict(params, model, batch, config) -> dict:
  """Foreground of each frame from its forward and backward flow (no ground truth used).

  Args:
    batch: forward_flow, backward_flow float `[B, T, H, W, 2]`.

  Returns:
    ids int32 `[B, T, H, W]` (1 foreground, 0 background) and foreground bool `[B, T, H, W]`.
  """
  forward, backward = batch["forward_flow"], batch["backward_flow"]
  b, t, h, w, _ = forward.shape
  both = jnp.concatenate([forward, backward], axis=0).reshape(2 * b * t, h, w, 2)
  prob = foreground_probability(params, model, both, config).reshape(2, b, t, h, w)
  foreground = mean_over_directions(prob) > 0.5
  return {"ids": foreground.astype(jnp.int32), "foreground": foreground}


def mean_over_directions(prob: jnp.ndarray) -> jnp.ndarray:
  """`[2, B, T, H, W]` probabilities from the forward and backward flows -> their mean
  `[B, T, H, W]` over the flows each frame has (MOVi stores zero forward flow on the last frame and
  zero backward flow on the first)."""
  t = prob.shape[2]
  has_forward = jnp.arange(t) < t - 1
  has_backward = jnp.arange(t) > 0
  weight = jnp.stack([has_forward, has_backward]).astype(prob.dtype)[:, None, :, None, None]
  return jnp.sum(prob * weight, axis=0) / jnp.maximum(jnp.sum(weight, axis=0), 1.0)


def summary_images(params, model, batch, config) -> dict:
  """Input flow (colour wheel), reconstruction and mask overlay of a few training samples."""
  flow_a, _ = flow_pair(batch)
  flow_a = jnp.asarray(flow_a[:4])
  inputs = encode(flow_a, config)
  out = model.apply({"params": params}, inputs)
  summary = {"flow": images.to_uint8(flow_encoding.flow_to_rgb(flow_a))}
  if inputs.shape[-1] == 3:
    summary["reconstruction"] = images.to_uint8(out["recon"], (-1.0, 1.0))
  ids = np.asarray(jnp.argmax(out["masks"], axis=1))
  summary["masks"] = video_io.overlay_masks(summary["flow"], ids)
  return summary


def segment_inputs(
  frames: np.ndarray, config, *, cache_dir, cache_key: str, flow_preset: str
) -> dict[str, np.ndarray]:
  """OpenCV DIS forward and backward flow `[T, h, w, 2]` of uint8 frames `[T, H, W, 3]`, computed
  at the frame size and resized to `config.data.resolution` (as on DAVIS), cached on disk."""
  flows = optical_flow.cached_video_dis_flows(
    frames, tuple(config.data.resolution), cache_dir, cache_key, flow_preset
  )
  return {"forward_flow": flows[1], "backward_flow": flows[-1]}


def model_resolution(config) -> tuple[int, int]:
  """`interface.SegmentsVideos`: the flows' `data.resolution`."""
  return tuple(config.data.resolution)
