"""Slot Attention object discovery (Locatello et al. 2020): method glue for `vosjax.train`.

An autoencoder on single RGB frames (scaled to [-1, 1] as the official code): CNN encoder, K slots
from Gaussian samples, spatial-broadcast decoder, masks by softmax over slots; loss = MSE
reconstruction. Schedule as the official object-discovery run: linear warm-up, then lr * 0.5 **
(step / decay_steps).

Evaluation segments every frame of a validation video; all frames use the same slot noise so that
slot order tends to stay the same over time (the video-level FG-ARI counts a relabelled object as an
error).
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
from vosjax.data import video as video_io
from vosjax.models import autoencoder
from vosjax.models import precision


def default_config() -> ml_collections.ConfigDict:
  """Object discovery hyper-parameters; configs/slot_attention.py adds the data (single frames
  of the synthetic MOVi-format set at 64x64)."""
  config = config_lib.base_config(
    "slot_attention", num_train_steps=1500, log_every_steps=50, checkpoint_every_steps=500
  )

  config.model = ml_collections.ConfigDict()
  config.model.num_slots = 7  # up to 6 objects + background in the synthetic 64x64 set
  config.model.num_iterations = 3
  config.model.encoder_widths = (32, 32, 32, 32)
  config.model.slot_dim = 64
  config.model.slot_mlp_hidden_size = 128
  config.model.decoder_initial_size = (8, 8)
  config.model.decoder_width = 32
  config.model.gradient_mode = "full"
  config.model.dtype = "float32"  # compute dtype, "float32" or "bfloat16" (vosjax.models.precision)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 4e-4
  config.optimizer.warmup_steps = 150  # official 10k of 500k steps
  config.optimizer.decay_steps = 1000  # official 100k: lr halves every decay_steps
  config.optimizer.grad_clip_norm = ml_collections.FieldReference(None, field_type=float)
  config.optimizer.eps = 1e-8  # Adam's epsilon (optax's default)
  return config


def make_model(config: ml_collections.ConfigDict) -> autoencoder.SlotAttentionAutoEncoder:
  m = config.model
  return autoencoder.SlotAttentionAutoEncoder(
    num_slots=m.num_slots,
    num_iterations=m.num_iterations,
    encoder_widths=tuple(m.encoder_widths),
    slot_dim=m.slot_dim,
    slot_mlp_hidden_size=m.slot_mlp_hidden_size,
    decoder_initial_size=tuple(m.decoder_initial_size),
    decoder_width=m.decoder_width,
    gradient_mode=m.gradient_mode,
  )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o = config.optimizer
  warmup = optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps)
  decay = optax.exponential_decay(o.learning_rate, o.decay_steps, 0.5)
  schedule = optax.join_schedules([warmup, lambda step: decay(step)], [o.warmup_steps])
  return optax.chain(
    *optimizers.gradient_clipping(o.grad_clip_norm), optax.adam(schedule, eps=o.eps)
  )


def frames(batch: dict) -> jnp.ndarray:
  """`[B, T, H, W, 3]` video in [0, 1] -> `[B * T, H, W, 3]` in [-1, 1]."""
  video = batch["video"]
  return video.reshape((-1,) + video.shape[2:]) * 2.0 - 1.0


def example_batch(config) -> dict[str, np.ndarray]:
  """One zero frame `[1, 1, H, W, 3]` at `config.data.resolution`."""
  return {"video": np.zeros((1, 1) + tuple(config.data.resolution) + (3,), np.float32)}


def init_params(model, config, rng, batch):
  params_rng, slots_rng = jax.random.split(rng)
  return model.init({"params": params_rng, "slots": slots_rng}, frames(batch)[:1])["params"]


def autoencoder_loss(recon: jnp.ndarray, image: jnp.ndarray) -> jnp.ndarray:
  """MSE over every element (the original `l2_loss`)."""
  if recon.shape != image.shape:
    raise ValueError(
      f"reconstruction shape {recon.shape} differs from the image shape {image.shape}"
    )
  return jnp.mean(jnp.square(recon - image))


def loss_fn(params, model, batch, rng, step, config, extra):
  del step, extra
  inputs = frames(batch)
  out = precision.apply(
    model, params, inputs, dtype=precision.compute_dtype(config), rngs={"slots": rng}
  )
  loss = autoencoder_loss(out["recon"], inputs)
  return loss, {"recon": loss}


def predict(params, model, batch, config) -> dict:
  """Slot argmax of every frame, `ids` int32 `[B, T, H, W]`, with one slot noise for all frames."""
  b, t, h, w, _ = batch["video"].shape
  m = config.model
  noise = jax.random.normal(jax.random.key(0), (1, m.num_slots, m.slot_dim))
  out = precision.apply(
    model,
    params,
    frames(batch),
    dtype=precision.compute_dtype(config),
    slot_noise=jnp.broadcast_to(noise, (b * t, m.num_slots, m.slot_dim)),
  )
  ids = jnp.argmax(out["masks"], axis=1).astype(jnp.int32)
  return {"ids": ids.reshape(b, t, h, w)}


def summary_images(params, model, batch, config) -> dict:
  inputs = frames(batch)[:4]
  out = model.apply({"params": params}, jnp.asarray(inputs), rngs={"slots": jax.random.key(0)})
  inputs = images.to_uint8(inputs, (-1.0, 1.0))
  return {
    "input": inputs,
    "reconstruction": images.to_uint8(out["recon"], (-1.0, 1.0)),
    "masks": video_io.overlay_masks(inputs, np.asarray(jnp.argmax(out["masks"], axis=1))),
  }
