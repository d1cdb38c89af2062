"""SMTC, Semantics Meets Temporal Correspondence (Qian et al., ICCV 2023): method glue for `vosjax.train`.

Training (`src/train.py`, `start_twostage.sh`): a clip of T = 4 frames is augmented twice,
independently (`vosjax.data.augment`, ImageNet-normalized), for a student and a teacher. Both run the
DINO ViT-S/16 (`vosjax.models.vit`; the student's is fine-tuned) and the SMTC head
(`vosjax.models.smtc`: temporal correlation fusion, two-stage slot attention, `mlp_slot`) with 3
iterations. Loss = dense optimal-transport semantic consistency + differ loss + instance consistency
(`vosjax.methods.smtc.losses`), every weight 1. The teacher (extra state, `OwnsExtraState`) starts as a
copy of the initial parameters; after every step its head follows the student's by an EMA of momentum
0.999, its encoder stays at the initialisation (DINO). AdamW, cosine lr -> 0.1 lr without warm-up,
weight decay 0.1 on >= 2-D parameters (the official groups); the encoder's lr is x0 before step 3000,
then x0.01 (its Adam moments update from step 0, as PyTorch's with lr 0).

Inference (`src/eval_multi.py`): 5 iterations over chunks of `data.clip_length` frames (the tail padded
with the video's last frames); the candidate instance masks are those whose instance slot has cosine
>= 0.5 with its semantic slot. `predict` turns them into ids (see there).

The authors' checkpoints (`src/train.py`'s `model_state_dict`, the released ViT-S/16 model) import
with `--config.init.checkpoint=PATH` or `python -m vosjax.convert` (`official_checkpoint`).

Config keys read here (`default_config`; a config adds `data` with `resolution` and `clip_length`):
backbone.*, model.*, loss.*, augment.*, optimizer.*, ema_momentum, num_train_steps.

The student's backbone has the official stochastic depth (drop-path rising linearly from 0 at the
first block to `backbone.drop_path_rate` = 0.1 at the last, per frame and residual branch,
`vosjax.models.vit.drop_path`) in `loss_fn` only; the teacher's backbone and inference are
deterministic (the official teacher runs in eval mode).

Differences from the official code: the stochastic-depth draws come from JAX's generator, not
PyTorch's (same distribution, other numbers); the cosine schedule decays over
`num_train_steps` (the official over whole 78-iteration epochs, 9984 of the 10000 steps); the instance
noise of `predict` comes from a fixed key (`model.inference_seed`; the official resamples at every
call); one normalization (ImageNet) for training and inference (the official inference uses Kinetics
statistics); the blur sigma of the augmentation is drawn per clip (see `vosjax.data.augment`).
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vosjax.core import config as config_lib
from vosjax.core import images
from vosjax.core import optimizers
from vosjax.data import augment
from vosjax.methods import vit_video
from vosjax.methods.smtc import losses
from vosjax.methods.smtc import official_checkpoint
from vosjax.models import pretrained
from vosjax.models import smtc
from vosjax.models import vit


NAME = "SMTC"  # in error messages


def default_config() -> ml_collections.ConfigDict:
  """The official shipped recipe (`start_twostage.sh`, `eval_multi.sh`); no `data` section."""
  config = config_lib.base_config(
      "smtc", seed=0, batch_size=128,  # 4 GPUs x 32 clips
      num_train_steps=10_000, checkpoint_every_steps=500)
  config.backbone = pretrained.default_backbone_config()
  config.backbone.name = "dino_vits16"
  config.backbone.arch_overrides = ml_collections.ConfigDict()  # tests only (random_init)
  config.backbone.drop_path_rate = 0.1  # the student's stochastic depth (0 -> 0.1 over the blocks)

  config.model = ml_collections.ConfigDict()
  config.model.num_semantic_slots = 16
  config.model.num_instances = 4
  config.model.train_iterations = 3
  config.model.inference_iterations = 5
  config.model.correlation_size = (16, 16)  # training resolution 256 / patch 16
  config.model.similarity_threshold = 0.5  # candidate instance masks at inference
  config.model.mask_threshold = 0.3  # min-max normalised candidate mask > this (official evaluator)
  config.model.inference_seed = 0  # instance noise of `predict`

  config.loss = ml_collections.ConfigDict()
  config.loss.transport_weight = 1.0  # cons_scale, --bi_cons
  config.loss.differ_weight = 1.0  # ent_scale, --entro_cons
  config.loss.instance_weight = 1.0
  config.loss.sinkhorn_epsilon = losses.SINKHORN_EPSILON
  config.loss.sinkhorn_iterations = losses.SINKHORN_ITERATIONS
  config.loss.negative_margin = 0.5

  config.augment = ml_collections.ConfigDict()  # vosjax.data.augment.AugmentationConfig fields
  config.augment.grayscale_prob = 0.2
  config.augment.jitter_prob = 0.8
  config.augment.blur_prob = 0.5

  config.ema_momentum = 0.999

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 2e-5
  config.optimizer.final_learning_rate = 2e-6
  # The official sets 0.04 on the encoder weights at construction, but its weight-decay schedule
  # overwrites both decayed groups with 0.1 before every step, so 0.1 is what trains.
  config.optimizer.weight_decay = 0.1
  config.optimizer.encoder_multiplier_before = 0.0
  config.optimizer.encoder_multiplier_after = 0.01
  config.optimizer.encoder_switch_step = 3000  # --grad_iter
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.grad_clip_norm = ml_collections.FieldReference(None, field_type=float)  # official
  return config


@flax.struct.dataclass
class SMTCModel:
  """The modules (static) and the backbone's initial parameters (leaves, the encoder's init)."""
  backbone: vit.VisionTransformer = flax.struct.field(pytree_node=False)
  head: smtc.SMTC = flax.struct.field(pytree_node=False)  # training iterations
  inference_head: smtc.SMTC = flax.struct.field(pytree_node=False)
  initial_encoder: Any = None

  def forward(self, params: Any, video: jax.Array, rng: jax.Array, inference: bool = False,
              drop_path_rng: jax.Array | None = None) -> smtc.SMTCOutput:
    """`params` {"encoder", "head"} on augmented video `[B, T, H, W, 3]` in [0, 1].

    `rng`: the instance-slot noise. `drop_path_rng`: the backbone's stochastic depth (the training
    student, per frame); None: deterministic backbone (the teacher, inference)."""
    batch, time = video.shape[:2]
    frames = augment.normalize(video).reshape((batch * time,) + video.shape[2:])
    stochastic = {} if drop_path_rng is None else {"deterministic": False,
                                                   "rngs": {"drop_path": drop_path_rng}}
    keys = self.backbone.apply({"params": params["encoder"]}, frames, **stochastic
                               ).keys.astype(jnp.float32)
    keys = keys.reshape((batch, time) + keys.shape[1:])
    head = self.inference_head if inference else self.head
    return head.apply({"params": params["head"]}, keys, rngs={"instances": rng})


def make_model(config: ml_collections.ConfigDict) -> SMTCModel:
  # DINO's weights, unless config.init.checkpoint supplies the encoder (see official_checkpoint).
  backbone, backbone_params = official_checkpoint.initial_backbone(config)
  model_config = config.model
  head = smtc.SMTC(num_semantic_slots=model_config.num_semantic_slots,
                   num_instances=model_config.num_instances,
                   num_iterations=model_config.train_iterations,
                   correlation_size=tuple(model_config.correlation_size))
  # Stochastic depth of the fine-tuned student (official ViT: drop_path_rate 0.1, active in
  # training mode; the teacher runs in eval mode): `forward(..., drop_path_rng=...)` only.
  backbone = backbone.clone(drop_path_rate=config.backbone.drop_path_rate)
  return SMTCModel(backbone=backbone, head=head,
                   inference_head=head.clone(num_iterations=model_config.inference_iterations),
                   initial_encoder=jax.device_put(backbone_params))


def _group_labels(params):
  return optimizers.label_by_path([(r"^encoder/", "encoder")], default="head")(params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW per group (encoder x0 then x0.01, head x1); decay on >= 2-D parameters only."""
  opt = config.optimizer
  schedule = optax.cosine_decay_schedule(
      init_value=opt.learning_rate, decay_steps=max(config.num_train_steps, 1),
      alpha=opt.final_learning_rate / opt.learning_rate)

  def adamw(learning_rate):
    return optax.adamw(learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                       weight_decay=opt.weight_decay,
                       mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params))

  encoder = optimizers.step_multiplier(opt.encoder_multiplier_before, opt.encoder_multiplier_after,
                                       opt.encoder_switch_step)
  grouped = optimizers.grouped_optimizer(adamw, schedule, {"encoder": encoder, "head": 1.0},
                                         _group_labels)
  return optax.chain(*optimizers.gradient_clipping(opt.grad_clip_norm), grouped)


example_batch = vit_video.example_batch


def init_params(model: SMTCModel, config: ml_collections.ConfigDict, rng: jax.Array,
                batch: dict) -> Any:
  """{"encoder": the loaded backbone, "head": a fresh SMTC head (PyTorch-style init)}."""
  del config
  video = vit_video.check_video(batch, "initialisation", NAME)
  grid = model.backbone.arch.grid_shape(*video.shape[2:4])
  keys = jnp.zeros((1, video.shape[1]) + grid + (model.backbone.arch.embed_dim,))
  head = model.head.init({"params": rng, "instances": rng}, keys)["params"]
  return {"encoder": model.initial_encoder, "head": head}


def init_extra_state(params: Any, config: ml_collections.ConfigDict) -> Any:
  """The teacher: a copy of the initial parameters (official `teacher.load_state_dict`)."""
  del config
  return {"teacher": params}


def update_extra_state(extra: Any, params: Any, step, config: ml_collections.ConfigDict) -> Any:
  """EMA of the student's head into the teacher's; the teacher's encoder never changes."""
  del step
  momentum = config.ema_momentum
  head = jax.tree.map(lambda t, p: momentum * t + (1.0 - momentum) * p,
                      extra["teacher"]["head"], params["head"])
  return {"teacher": {"encoder": extra["teacher"]["encoder"], "head": head}}


def import_params(state_dict: dict[str, np.ndarray], params: Any,
                  config: ml_collections.ConfigDict) -> Any:
  """The official checkpoint's student, encoder included, as params (see `official_checkpoint`)."""
  return official_checkpoint.import_params(state_dict, params, config)


def loss_fn(params: Any, model: SMTCModel, batch: dict, rng: jax.Array, step: jax.Array,
            config: ml_collections.ConfigDict, extra: Any) -> tuple[jax.Array, dict]:
  """Transport + differ + instance losses of the student against the EMA teacher."""
  del step
  video = vit_video.check_video(batch, "training", NAME)
  if video.shape[1] < 2:
    raise ValueError(f"SMTC trains on clips of >= 2 frames, got T={video.shape[1]} "
                     "(config.data.clip_length; official 4).")
  rngs = jax.random.split(rng, 5)
  augment_config = augment.AugmentationConfig.from_config(config.augment)
  student = model.forward(params, augment.augment_video(rngs[0], video, augment_config), rngs[1],
                          drop_path_rng=rngs[4])
  teacher = model.forward(jax.lax.stop_gradient(extra["teacher"]),
                          augment.augment_video(rngs[2], video, augment_config), rngs[3])
  teacher = jax.tree.map(jax.lax.stop_gradient, teacher)
  loss_config = config.loss
  transport = losses.dense_transport_loss(
      student.semantic_logits, teacher.semantic_logits, teacher.keys,
      loss_config.sinkhorn_epsilon, loss_config.sinkhorn_iterations)
  differ = losses.differ_loss(student.semantic_logits)
  student_valid = losses.valid_instances(student.semantic_logits, student.semantic_slots,
                                         student.instance_slots)
  teacher_valid = losses.valid_instances(teacher.semantic_logits, teacher.semantic_slots,
                                         teacher.instance_slots)
  instance = losses.instance_consistency_loss(
      student_valid, teacher_valid, student.instance_embeddings, teacher.instance_embeddings,
      loss_config.negative_margin)
  loss = (loss_config.transport_weight * transport + loss_config.differ_weight * differ
          + loss_config.instance_weight * instance)
  return loss, {"transport_loss": transport, "differ_loss": differ, "instance_loss": instance,
                "valid_instances": jnp.mean(student_valid)}


def chunk_indices(num_frames: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
  """Frames of each inference chunk and where each frame's result lies (official `inference`).

  Returns:
    frames: int `[num_chunks, chunk]`: consecutive frames; the last chunk is filled with the video's
      last frames (official `torch.cat([input, rgbs[:, -(n_f - bs):]])`; cyclic when T < chunk).
    positions: int `[num_frames]` index of each frame's result in the flattened chunks.
  """
  starts = range(0, num_frames, chunk)
  frames, positions = [], []
  for index, start in enumerate(starts):
    real = np.arange(start, min(start + chunk, num_frames))
    fill = np.arange(num_frames - (chunk - len(real)), num_frames) % num_frames
    frames.append(np.concatenate([real, fill]))
    positions.extend(index * chunk + np.arange(len(real)))
  return np.stack(frames), np.asarray(positions)


def predict(params: Any, model: SMTCModel, batch: dict,
            config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Instance ids from the candidate instance masks (official `eval_multi.py` + its evaluator).

  The candidates of a frame are the S x P instance masks whose similarity is >= 0.5; each is
  min-max normalised over the frame's tokens (as the official evaluator does before its > 0.3
  threshold). A token takes the id 1 + s * P + p of the candidate with the highest normalised value
  if that value exceeds `model.mask_threshold`, else 0. (The official writes the overlapping
  candidates and leaves their selection to a per-frame Hungarian matching with the ground truth.)

  Returns:
    ids: int32 `[B, T, H, W]` (tokens upsampled nearest); semantic_ids: int32 `[B, T, H, W]` the
    argmax of the semantic masks.
  """
  video = vit_video.check_video(batch, "prediction", NAME)
  batch_size, num_frames, height, width = video.shape[:4]
  frames, positions = chunk_indices(num_frames, config.data.clip_length)
  chunks = video[:, frames.reshape(-1)].reshape((batch_size * frames.shape[0],) + frames.shape[1:]
                                                 + video.shape[2:])
  out = model.forward(params, chunks, jax.random.key(config.model.inference_seed), inference=True)
  select = lambda x: x.reshape((batch_size, -1) + x.shape[2:])[:, positions]
  masks, similarity = select(out.instance_masks), select(out.similarity)  # [B, T, S, P, N]
  masks = masks.reshape(masks.shape[:2] + (-1, masks.shape[-1]))
  low, high = masks.min(-1, keepdims=True), masks.max(-1, keepdims=True)
  normalised = (masks - low) / jnp.maximum(high - low, 1e-12)
  keep = (similarity >= config.model.similarity_threshold).reshape(similarity.shape[:2] + (-1, 1))
  normalised = jnp.where(keep, normalised, -1.0)
  ids = jnp.where(normalised.max(2) > config.model.mask_threshold, normalised.argmax(2) + 1, 0)
  semantic_ids = select(out.semantic_masks).argmax(2)
  grid = model.backbone.arch.grid_shape(height, width)

  def upsample(tokens):  # [B, T, N] -> [B, T, H, W] nearest, like the official F.interpolate
    rows = (np.arange(height) * grid[0] // height)[:, None]
    cols = (np.arange(width) * grid[1] // width)[None, :]
    return tokens.reshape(tokens.shape[:2] + grid)[:, :, rows, cols].astype(jnp.int32)

  return {"ids": upsample(ids), "semantic_ids": upsample(semantic_ids)}


def summary_images(params: Any, model: SMTCModel, batch: dict,
                   config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """For the first clip: frames | semantic argmax | instance ids, uint8 `[T, H, 3W, 3]`."""
  video = jnp.asarray(vit_video.check_video(batch, "summary", NAME)[:1])
  prediction = jax.jit(lambda p, v: predict(p, model, {"video": v}, config))(params, video)
  count = config.model.num_semantic_slots * config.model.num_instances + 1
  hues = (np.arange(count) * 0.618033988749895) % 1.0
  palette = images.to_uint8(augment.hsv_to_rgb(jnp.asarray(
      np.stack([hues, np.full(count, 0.75), np.full(count, 0.95)], axis=-1))))
  palette[0] = 0  # background / no candidate
  panels = [images.to_uint8(np.asarray(video[0])),
            palette[np.asarray(prediction["semantic_ids"][0]) + 1],
            palette[np.asarray(prediction["ids"][0])]]
  return {"segmentation": np.concatenate(panels, axis=2)}
