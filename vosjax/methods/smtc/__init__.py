"""SMTC, Semantics Meets Temporal Correspondence (Qian et al., ICCV 2023): method glue for
`vosjax.train`.

Training (`src/train.py`, `start_twostage.sh`): a clip of T = 4 frames is augmented twice,
independently (`vosjax.data.augment`, ImageNet-normalized), for a student and a teacher. Both run
the DINO ViT-S/16 (`vosjax.models.vit`; the student's is fine-tuned) and the SMTC head
(`vosjax.models.smtc`: temporal correlation fusion, two-stage slot attention, `mlp_slot`) with 3
iterations. Loss = dense optimal-transport semantic consistency + differ loss + instance consistency
(`vosjax.methods.smtc.losses`), every weight 1. The teacher (extra state, `OwnsExtraState`) starts
as a copy of the initial parameters; after every step its head follows the student's by an EMA of
momentum 0.999, its encoder stays at the initialisation (DINO). AdamW, cosine lr -> 0.1 lr without
warm-up, weight decay 0.1 on >= 2-D parameters (the official groups); the encoder's lr is x0 before
step 3000, then x0.01 (its Adam moments update from step 0, as PyTorch's with lr 0).

Inference (`src/eval_multi.py`, `vosjax.methods.smtc.inference`): frames at
`model.inference_resolution` (480x800), Kinetics-normalised, 5 iterations over independent chunks of
`data.clip_length` frames (the tail padded with the video's last frames; `PredictsInChunks`); the
candidate instance masks are those whose instance slot has cosine >= 0.5 with its semantic slot,
binarised as the official evaluator does and scored each on its own (`ProposesCandidates`);
`predict` also resolves their overlaps into an id map. `vosjax.segment` and the frame-folder
evaluation segment videos with it (`SegmentsVideos`).

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
`num_train_steps` (the official over whole 78-iteration epochs, 9984 of the 10000 steps); the
instance noise of `predict` comes from a fixed key (`model.inference_seed`, the same for every
chunk; the official resamples at every call); the blur sigma of the augmentation is drawn per clip
(see `vosjax.data.augment`).
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
from vosjax.methods.smtc import inference
from vosjax.methods.smtc import losses
from vosjax.methods.smtc import official_checkpoint
from vosjax.models import precision
from vosjax.models import pretrained
from vosjax.models import smtc
from vosjax.models import vit


NAME = "SMTC"  # in error messages


def default_config() -> ml_collections.ConfigDict:
  """The official shipped recipe (`start_twostage.sh`, `eval_multi.sh`); no `data` section."""
  config = config_lib.base_config(
    "smtc",
    seed=0,
    batch_size=128,  # 4 GPUs x 32 clips
    num_train_steps=10_000,
    checkpoint_every_steps=500,
  )
  config.backbone = pretrained.default_backbone_config()
  config.backbone.name = "dino_vits16"
  config.backbone.arch_overrides = vit_video.arch_overrides_config()  # tests only (random_init)
  config.backbone.drop_path_rate = 0.1  # the student's stochastic depth (0 -> 0.1 over the blocks)

  config.model = ml_collections.ConfigDict()
  config.model.num_semantic_slots = 16
  # Compute dtype of the backbone and the heads, "float32" or "bfloat16" (vosjax.models.precision).
  config.model.dtype = "float32"
  config.model.num_instances = 4
  config.model.train_iterations = 3
  config.model.inference_iterations = 5
  config.model.correlation_size = (16, 16)  # training resolution 256 / patch 16
  config.model.similarity_threshold = 0.5  # candidate instance masks at inference
  config.model.mask_threshold = 0.3  # min-max normalised candidate mask > this (official evaluator)
  config.model.inference_seed = 0  # instance noise of `predict`
  config.model.inference_resolution = (480, 800)  # eval_multi.py args.resolution (H, W)
  config.model.inference_mean = inference.KINETICS_MEAN  # eval_multi.py normalises with Kinetics
  config.model.inference_std = inference.KINETICS_STD  # statistics (training: ImageNet)

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
  config.optimizer.grad_clip_norm = ml_collections.FieldReference(
    None, field_type=float
  )  # official
  return config


@flax.struct.dataclass
class SMTCModel:
  """The modules (static) and the backbone's initial parameters (leaves, the encoder's init)."""

  backbone: vit.VisionTransformer = flax.struct.field(pytree_node=False)
  head: smtc.SMTC = flax.struct.field(pytree_node=False)  # training iterations
  inference_head: smtc.SMTC = flax.struct.field(pytree_node=False)
  initial_encoder: Any = None
  dtype: Any = flax.struct.field(pytree_node=False, default=jnp.float32)  # the heads' compute

  def forward(
    self,
    params: Any,
    video: jax.Array,
    rng: jax.Array,
    inference: bool = False,
    drop_path_rng: jax.Array | None = None,
  ) -> smtc.SMTCOutput:
    """`params` {"encoder", "head"} on augmented video `[B, T, H, W, 3]` in [0, 1].

    `rng`: the instance-slot noise. `drop_path_rng`: the backbone's stochastic depth (the training
    student, per frame); None: deterministic backbone (the teacher, inference)."""
    batch, time = video.shape[:2]
    frames = augment.normalize(video).reshape((batch * time,) + video.shape[2:])
    stochastic = (
      {}
      if drop_path_rng is None
      else {"deterministic": False, "rngs": {"drop_path": drop_path_rng}}
    )
    keys = self.backbone.apply({"params": params["encoder"]}, frames, **stochastic).keys.astype(
      jnp.float32
    )
    keys = keys.reshape((batch, time) + keys.shape[1:])
    head = self.inference_head if inference else self.head
    return precision.apply(head, params["head"], keys, dtype=self.dtype, rngs={"instances": rng})


def make_model(config: ml_collections.ConfigDict) -> SMTCModel:
  # DINO's weights, unless config.init.checkpoint supplies the encoder (see official_checkpoint).
  backbone, backbone_params = official_checkpoint.initial_backbone(config)
  model_config = config.model
  head = smtc.SMTC(
    num_semantic_slots=model_config.num_semantic_slots,
    num_instances=model_config.num_instances,
    num_iterations=model_config.train_iterations,
    correlation_size=tuple(model_config.correlation_size),
  )
  # Stochastic depth of the fine-tuned student (official ViT: drop_path_rate 0.1, active in
  # training mode; the teacher runs in eval mode): `forward(..., drop_path_rng=...)` only.
  backbone = backbone.clone(drop_path_rate=config.backbone.drop_path_rate)
  dtype = precision.compute_dtype(config)
  if dtype != jnp.float32:  # model.dtype covers the fine-tuned backbone too
    backbone = backbone.clone(dtype=dtype)
  return SMTCModel(
    dtype=dtype,
    backbone=backbone,
    head=head,
    inference_head=head.clone(num_iterations=model_config.inference_iterations),
    initial_encoder=jax.device_put(backbone_params),
  )


def _group_labels(params):
  return optimizers.label_by_path([(r"^encoder/", "encoder")], default="head")(params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW per group (encoder x0 then x0.01, head x1); decay on >= 2-D parameters only."""
  opt = config.optimizer
  encoder = optimizers.step_multiplier(
    opt.encoder_multiplier_before, opt.encoder_multiplier_after, opt.encoder_switch_step
  )
  return optimizers.adamw_cosine(
    opt, config.num_train_steps, {"encoder": encoder, "head": 1.0}, _group_labels
  )


example_batch = vit_video.example_batch


def init_params(
  model: SMTCModel, config: ml_collections.ConfigDict, rng: jax.Array, batch: dict
) -> Any:
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
  head = jax.tree.map(
    lambda t, p: momentum * t + (1.0 - momentum) * p, extra["teacher"]["head"], params["head"]
  )
  return {"teacher": {"encoder": extra["teacher"]["encoder"], "head": head}}


def import_params(
  state_dict: dict[str, np.ndarray], params: Any, config: ml_collections.ConfigDict
) -> Any:
  """The official checkpoint's student, encoder included, as params (see `official_checkpoint`)."""
  return official_checkpoint.import_params(state_dict, params, config)


def loss_fn(
  params: Any,
  model: SMTCModel,
  batch: dict,
  rng: jax.Array,
  step: jax.Array,
  config: ml_collections.ConfigDict,
  extra: Any,
) -> tuple[jax.Array, dict]:
  """Transport + differ + instance losses of the student against the EMA teacher."""
  del step
  video = vit_video.check_video(batch, "training", NAME)
  if video.shape[1] < 2:
    raise ValueError(
      f"SMTC trains on clips of >= 2 frames, got T={video.shape[1]} "
      "(config.data.clip_length; official 4)."
    )
  rngs = jax.random.split(rng, 5)
  augment_config = augment.AugmentationConfig.from_config(config.augment)
  student = model.forward(
    params, augment.augment_video(rngs[0], video, augment_config), rngs[1], drop_path_rng=rngs[4]
  )
  teacher = model.forward(
    jax.lax.stop_gradient(extra["teacher"]),
    augment.augment_video(rngs[2], video, augment_config),
    rngs[3],
  )
  teacher = jax.tree.map(jax.lax.stop_gradient, teacher)
  loss_config = config.loss
  transport = losses.dense_transport_loss(
    student.semantic_logits,
    teacher.semantic_logits,
    teacher.keys,
    loss_config.sinkhorn_epsilon,
    loss_config.sinkhorn_iterations,
  )
  differ = losses.differ_loss(student.semantic_logits)
  student_valid = losses.valid_instances(
    student.semantic_logits, student.semantic_slots, student.instance_slots
  )
  teacher_valid = losses.valid_instances(
    teacher.semantic_logits, teacher.semantic_slots, teacher.instance_slots
  )
  instance = losses.instance_consistency_loss(
    student_valid,
    teacher_valid,
    student.instance_embeddings,
    teacher.instance_embeddings,
    loss_config.negative_margin,
  )
  loss = (
    loss_config.transport_weight * transport
    + loss_config.differ_weight * differ
    + loss_config.instance_weight * instance
  )
  return loss, {
    "transport_loss": transport,
    "differ_loss": differ,
    "instance_loss": instance,
    "valid_instances": jnp.mean(student_valid),
  }


chunk_indices = inference.chunk_indices
predict = inference.predict  # see `inference.predict` for the outputs


# vosjax.segment / frame-folder evaluation: the ids are candidate slots (1 + s * P + p), the same
# slot in every chunk; no linking between windows.
SEGMENT_IDS = "classes"


def segment_inputs(
  frames: np.ndarray,
  config: ml_collections.ConfigDict,
  *,
  cache_dir,
  cache_key: str,
  flow_preset: str,
) -> dict[str, np.ndarray]:
  """uint8 frames `[T, H, W, 3]` -> video float32 `[T, h, w, 3]` in [0, 1] at
  `model.inference_resolution` (`inference.segment_inputs`); no flow, nothing cached."""
  del cache_dir, cache_key, flow_preset
  return inference.segment_inputs(frames, config)


def model_resolution(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """`interface.SegmentsVideos`: `model.inference_resolution`, else `data.resolution`."""
  return tuple(config.model.inference_resolution or config.data.resolution)


# `interface.ReproducesOfficialEvaluation`: with `config.eval.mode="official"` the candidates and
# ids are upsampled with torch's nearest rule as torch computes it (float32; the official
# evaluator's `F.interpolate`), not exactly (`inference.nearest_rule`); the rest of the inference
# is the official pipeline already.
OFFICIAL_EVALUATION = {}


def chunk_layout(
  num_frames: int, config: ml_collections.ConfigDict
) -> tuple[np.ndarray, np.ndarray]:
  """`interface.PredictsInChunks`: chunks of `data.clip_length` frames (`chunk_indices`)."""
  return inference.chunk_indices(num_frames, config.data.clip_length)


def candidate_masks(
  candidates: np.ndarray,
  valid: np.ndarray,
  frame_size: tuple[int, int],
  config: ml_collections.ConfigDict,
) -> tuple[np.ndarray, np.ndarray]:
  """`interface.ProposesCandidates`: the official evaluator's post-processing
  (`inference.candidate_masks`)."""
  return inference.candidate_masks(candidates, valid, frame_size, config)


def summary_images(
  params: Any, model: SMTCModel, batch: dict, config: ml_collections.ConfigDict
) -> dict[str, np.ndarray]:
  """For the first clip: frames | semantic argmax | instance ids, uint8 `[T, H, 3W, 3]`."""
  video = jnp.asarray(vit_video.check_video(batch, "summary", NAME)[:1])
  prediction = jax.jit(lambda p, v: predict(p, model, {"video": v}, config))(params, video)
  count = config.model.num_semantic_slots * config.model.num_instances + 1
  hues = (np.arange(count) * 0.618033988749895) % 1.0
  palette = images.to_uint8(
    augment.hsv_to_rgb(
      jnp.asarray(np.stack([hues, np.full(count, 0.75), np.full(count, 0.95)], axis=-1))
    )
  )
  palette[0] = 0  # background / no candidate
  panels = [
    images.to_uint8(np.asarray(video[0])),
    palette[np.asarray(prediction["semantic_ids"][0]) + 1],
    palette[np.asarray(prediction["ids"][0])],
  ]
  return {"segmentation": np.concatenate(panels, axis=2)}
