"""Betrayed by Attention (Ding et al., ECCV 2024): method glue for `vosjax.train`.

Training (`src/train_RGB_cluster.py`): a clip of T = 3 frames is augmented (`vosjax.data.augment`),
ImageNet-normalized and passed through the frozen DINO ViT; the per-frame CLS token and last-block
patch keys enter one spatio-temporal Transformer block (`vosjax.models.spatiotemporal`), whose
output tokens and dropout-perturbed attention feed the semantic and motion consistency losses
(`vosjax.methods.betrayed.losses`), weighted 1 : 1. Only the block is trained (AdamW, cosine
learning rate lr -> final_learning_rate without warmup, weight decay on >= 2-D weights only).

Inference (`src/eval_oneshot.py`): per-frame backbone keys -> the block's q, k projection of
norm1(keys) -> sparse key-frame attention and hierarchical clustering
(`vosjax.methods.betrayed.clustering`) -> token labels, upsampled (nearest) to the input resolution.
Every cluster, background included, is a segment.

Frozen backbone: `make_model` loads the backbone once (`vosjax.models.pretrained.load_backbone`, or
the `encoder.*` tensors of the official checkpoint given as `config.init.checkpoint`, see
`official_checkpoint`) and returns a `BetrayedModel`, a pytree whose leaves are the frozen backbone
parameters and whose static fields are the modules. The trained parameters (`init_params`, what the
optimizer updates and the checkpoints store) are the block's only. A caller that closes over the
model in `jax.jit` embeds the backbone weights as constants (works, but makes compilation slower);
passing the model as a jit argument avoids that.

Clustering capacities (`model.max_window_clusters`, `max_clusters`, `max_levels`) are static buffer
sizes; a video that exceeds one is clustered again with grown ones (`grown_config`, called by
`core.sharding.jit_predict`), so they never change the result.

Config keys read here (`default_config`; the configs add `data`): init.checkpoint, backbone.*,
model.{num_heads, mlp_ratio, dropout_rate, attention_dropout_rate, train_resolution,
inference_resolution, tau, key_frame_ratio, max_window_clusters, max_clusters, max_levels}, loss.*,
augment.*, optimizer.*, num_train_steps, data.clip_length.

Differences from the official code: blur sigma drawn per clip and one normalization (ImageNet) for
training and inference (see `vosjax.data.augment`); optional resizing of the frames before the
backbone (`model.train_resolution`, `model.inference_resolution`).
"""

from __future__ import annotations

import logging
from typing import Any

from etils import epath
import cv2
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vosjax.core import config as config_lib
from vosjax.core import images
from vosjax.core import optimizers
from vosjax.core import shard_loops
from vosjax.data import augment
from vosjax.data import video as video_io
from vosjax.methods import vit_video
from vosjax.methods.betrayed import clustering
from vosjax.methods.betrayed import losses as attention_losses
from vosjax.methods.betrayed import official_checkpoint
from vosjax.models import features as features_lib
from vosjax.models import precision
from vosjax.models import pretrained
from vosjax.models import spatiotemporal
from vosjax.models import vit


NAME = "Betrayed by Attention"  # in error messages


def default_config() -> ml_collections.ConfigDict:
  """Method settings shared by the Betrayed-by-Attention configs (official values); no `data`."""
  config = config_lib.base_config(
    "betrayed",
    seed=0,
    batch_size=8,  # 8 GPUs x 1 clip in the official run
    num_train_steps=60_000,
    num_eval_videos_to_write=8,
  )

  config.backbone = pretrained.default_backbone_config()  # DINO ViT-S/8
  config.backbone.arch_overrides = vit_video.arch_overrides_config()  # tests only (random_init)

  config.model = ml_collections.ConfigDict()
  config.model.num_heads = 8
  config.model.mlp_ratio = 4.0
  config.model.dropout_rate = 0.1  # official `path_drop`, used as plain dropout
  config.model.attention_dropout_rate = 0.4  # also perturbs the attention the losses see (quirk)
  # Compute dtype of the backbone and the block, "float32" or "bfloat16" (vosjax.models.precision);
  # the parameters, the attention maps and the losses stay float32.
  config.model.dtype = "float32"
  # (H, W) the frames are resized to before the backbone; None keeps the data resolution.
  config.model.train_resolution = ml_collections.FieldReference(None, field_type=tuple)
  config.model.inference_resolution = ml_collections.FieldReference(None, field_type=tuple)
  config.model.tau = 1.0  # 1.0 multi-object, 1.6 single-object (paper appendix)
  config.model.key_frame_ratio = 10
  config.model.max_window_clusters = 128
  config.model.max_clusters = 1024
  config.model.max_levels = 16
  config.model.output_levels = (
    False  # predict also returns every hierarchy level (segment --levels)
  )

  config.loss = ml_collections.ConfigDict()
  config.loss.num_queries = 8
  config.loss.semantic_positives = 30
  config.loss.semantic_negatives = 200
  config.loss.semantic_positive_margin = 0.9
  config.loss.semantic_negative_margin = 0.1
  config.loss.motion_positives = 10
  config.loss.motion_negatives = 50
  config.loss.motion_margin = 1.0
  config.loss.semantic_weight = 1.0
  config.loss.motion_weight = 1.0

  config.augment = ml_collections.ConfigDict()  # vosjax.data.augment.AugmentationConfig fields
  config.augment.grayscale_prob = 0.2
  config.augment.jitter_prob = 0.8
  config.augment.blur_prob = 0.5

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-5
  config.optimizer.final_learning_rate = 1e-6
  config.optimizer.weight_decay = 0.1
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.grad_clip_norm = ml_collections.FieldReference(
    None, field_type=float
  )  # official
  return config


@flax.struct.dataclass
class BetrayedModel:
  """The frozen backbone (modules static, parameters as leaves) and the trainable block module."""

  backbone: vit.VisionTransformer = flax.struct.field(pytree_node=False)
  block: spatiotemporal.SpatioTemporalBlock = flax.struct.field(pytree_node=False)
  frame_chunk: int = flax.struct.field(pytree_node=False)
  backbone_params: Any = None

  def features(
    self, video: jax.Array, mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD
  ) -> dict[str, jax.Array]:
    """Frozen ViT features of video `[B, T, H, W, 3]` in [0, 1] (normalized inside with `mean`,
    `std`: ImageNet, the statistics of training; the official test code uses Kinetics ones).

    Returns:
      keys `[B, T, h, w, C]`, tokens `[B, T, h, w, C]`, cls `[B, T, C]`, without gradient.
    """
    extract = features_lib.make_feature_extractor(
      self.backbone, self.frame_chunk, mean=mean, std=std
    )
    return jax.tree.map(
      jax.lax.stop_gradient, extract(jax.lax.stop_gradient(self.backbone_params), video)
    )


def _load_backbone(config: ml_collections.ConfigDict):
  """The backbone of the official checkpoint `init.checkpoint` (a file), else
  `vit_video.load_backbone` (the pretrained one, or a shrunken random ViT for tests)."""
  backbone_config = config.backbone
  checkpoint = config.init.checkpoint
  if checkpoint and not epath.Path(checkpoint).is_dir():  # a vosjax workdir holds no backbone
    arch = pretrained.resolve_architecture(backbone_config.name).replace(
      **vit_video.arch_overrides(backbone_config)
    )
    params = official_checkpoint.backbone_params(checkpoint, arch)
    logging.info(
      "Backbone: the %s* tensors of %s (not config.backbone.name=%s).",
      official_checkpoint.BACKBONE_PREFIX,
      checkpoint,
      backbone_config.name,
    )
    return pretrained.backbone_module(backbone_config, arch), params
  return vit_video.load_backbone(backbone_config)


def make_model(config: ml_collections.ConfigDict) -> BetrayedModel:
  """Loads the frozen backbone and builds the spatio-temporal block matching its width."""
  backbone, backbone_params = _load_backbone(config)
  dtype = precision.compute_dtype(config)
  if dtype != jnp.float32:  # model.dtype covers the frozen backbone too
    backbone = backbone.clone(dtype=dtype)
  block = spatiotemporal.SpatioTemporalBlock(
    dtype=dtype,
    dim=backbone.arch.embed_dim,
    num_heads=config.model.num_heads,
    mlp_ratio=config.model.mlp_ratio,
    dropout_rate=config.model.dropout_rate,
    attention_dropout_rate=config.model.attention_dropout_rate,
  )
  return BetrayedModel(
    backbone=backbone,
    block=block,
    frame_chunk=config.backbone.frame_chunk,
    backbone_params=jax.device_put(backbone_params),
  )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with the official DINO-style cosine schedule and decay on >= 2-D parameters only."""
  return optimizers.adamw_cosine(config.optimizer, config.num_train_steps)


example_batch = vit_video.example_batch


def init_params(
  model: BetrayedModel, config: ml_collections.ConfigDict, rng: jax.Array, batch: dict
) -> Any:
  """The block's parameters only (their shapes do not depend on the token count)."""
  del batch
  frames, dim = config.data.clip_length, model.block.dim
  return model.block.init(rng, jnp.zeros((1, frames, dim)), jnp.zeros((1, frames, 1, dim)))[
    "params"
  ]


def import_params(
  state_dict: dict[str, np.ndarray], params: Any, config: ml_collections.ConfigDict
) -> Any:
  """The block's params from the official checkpoint (see `official_checkpoint`)."""
  return official_checkpoint.import_params(state_dict, params, config)


def _resize(video: jax.Array, resolution) -> jax.Array:
  """Bilinear resize of `[B, T, H, W, 3]` to `resolution` (no antialiasing, like cv2.resize)."""
  if resolution is None or tuple(resolution) == tuple(video.shape[2:4]):
    return video
  shape = video.shape[:2] + tuple(resolution) + video.shape[4:]
  return jax.image.resize(video, shape, "bilinear", antialias=False)


def _flatten_grid(x: jax.Array) -> jax.Array:
  """`[B, T, h, w, C]` -> `[B, T, h * w, C]`."""
  return x.reshape(x.shape[:2] + (-1,) + x.shape[4:])


def loss_fn(
  params: Any,
  model: BetrayedModel,
  batch: dict,
  rng: jax.Array,
  step: jax.Array,
  config: ml_collections.ConfigDict,
  extra: Any,
) -> tuple[jax.Array, dict]:
  """Semantic + motion consistency on one augmented clip batch (official weights 1 : 1)."""
  del step, extra
  video = vit_video.check_video(batch, "training", NAME)
  if video.shape[1] < 2:
    raise ValueError(
      f"Training clips need >= 2 frames, got T={video.shape[1]} "
      "(config.data.clip_length; official 3)."
    )
  augment_rng, query_rng, dropout_rng = jax.random.split(rng, 3)
  video = _resize(video, config.model.train_resolution)
  video = augment.augment_video(
    augment_rng, video, augment.AugmentationConfig.from_config(config.augment)
  )
  feats = model.features(video)
  keys = _flatten_grid(feats["keys"])
  tokens, attention = model.block.apply(
    {"params": params}, feats["cls"], keys, deterministic=False, rngs={"dropout": dropout_rng}
  )
  tokens = tokens.astype(jnp.float32)  # the losses in float32 (the maps already are)
  loss_config = config.loss
  queries = attention_losses.sample_query_indices(query_rng, keys.shape[2], loss_config.num_queries)
  semantic = attention_losses.semantic_consistency_loss(
    tokens,
    attention,
    queries,
    num_positives=loss_config.semantic_positives,
    num_negatives=loss_config.semantic_negatives,
    positive_margin=loss_config.semantic_positive_margin,
    negative_margin=loss_config.semantic_negative_margin,
  )
  motion = attention_losses.motion_consistency_loss(
    attention,
    queries,
    num_frames=video.shape[1],
    num_positives=loss_config.motion_positives,
    num_negatives=loss_config.motion_negatives,
    margin=loss_config.motion_margin,
  )
  loss = loss_config.semantic_weight * semantic + loss_config.motion_weight * motion
  return loss, {"semantic_loss": semantic, "motion_loss": motion}


def query_key(
  params: Any, model: BetrayedModel, video: jax.Array, config: ml_collections.ConfigDict
) -> tuple[jax.Array, jax.Array, tuple[int, int]]:
  """Per-frame q, k `[B, T, N, heads, head_dim]` of the block for `video` `[B, T, H, W, 3]`
  (`config.eval.mode` "official": frames normalised with the Kinetics statistics of the official
  test code, `OFFICIAL_EVALUATION`; else ImageNet's, those the model was trained with)."""
  return _query_key_at_size(
    params, model, _resize(video, config.model.inference_resolution), config
  )


def _query_key_at_size(
  params: Any, model: BetrayedModel, video: jax.Array, config: ml_collections.ConfigDict
) -> tuple[jax.Array, jax.Array, tuple[int, int]]:
  """`query_key` of `video` at its own size (no `model.inference_resolution` resize)."""
  statistics = (
    (augment.KINETICS_MEAN, augment.KINETICS_STD)
    if config_lib.is_official(config)
    else (augment.IMAGENET_MEAN, augment.IMAGENET_STD)
  )
  keys = model.features(video, *statistics)["keys"]
  grid = tuple(keys.shape[2:4])
  q, k = model.block.apply(
    {"params": params}, _flatten_grid(keys), method=spatiotemporal.SpatioTemporalBlock.query_key
  )
  q, k = q.astype(jnp.float32), k.astype(jnp.float32)  # the clustering in float32
  return q, k, grid


def dense_features(
  params: Any, model: BetrayedModel, video: jax.Array, config: ml_collections.ConfigDict
) -> jax.Array:
  """`interface.ProvidesDenseFeatures`: the block's keys k of `query_key` (what the clustering
  compares), heads concatenated: float32 `[B, T, h, w, heads * head_dim]` for `video`
  `[B, T, H, W, 3]` in [0, 1], normalised as `query_key` does, at the size given (propagation
  picks the frame size, so `model.inference_resolution` is not applied)."""
  _, k, grid = _query_key_at_size(params, model, video, config)
  return k.reshape(k.shape[:2] + grid + (-1,))


def feature_stride(model: BetrayedModel) -> int:
  """`interface.ProvidesDenseFeatures`: the backbone's patch size."""
  return model.backbone.arch.patch_size


def predict(
  params: Any, model: BetrayedModel, batch: dict, config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
  """Segments whole videos by key-frame attention clustering.

  Returns:
    ids: int32 `[B, T, H, W]` cluster index per pixel (arbitrary order; background is a cluster).
    num_clusters: int32 `[B]`; overflow: bool `[B]` (a clustering capacity was exceeded) and, per
    capacity, window_overflow, cluster_overflow, level_overflow bool `[B]`,
    window_clusters_needed, clusters_needed int32 `[B]` (`clustering.ClusterResult`), num_tokens
    int32 `[B]` (T * h * w), read by `grown_config`; token_ids int32 `[B, T, h, w]` the ids on
    the token grid (the official evaluation upsamples these). With `model.output_levels`, also
    levels int32 `[B, max_levels, T, h, w]` on the token grid (level 0 the finest;
    `clustering.ClusterResult`) and num_levels int32 `[B]`.
  """
  video = vit_video.check_video(batch, "prediction", NAME)
  q, k, grid = query_key(params, model, video, config)
  model_config = config.model

  def cluster(q_video, k_video):
    return clustering.hierarchical_cluster(
      q_video,
      k_video,
      grid_shape=grid,
      tau=model_config.tau,
      ratio=model_config.key_frame_ratio,
      max_window_clusters=model_config.max_window_clusters,
      max_clusters=model_config.max_clusters,
      max_levels=model_config.max_levels,
    )

  # One video at a time (lax.map, not vmap): the clustering's data-dependent loops would run every
  # video's longest trip count with a select over the whole carry per step under vmap. Under a
  # `data` mesh each device loops over its own videos (`core.shard_loops`).
  result = shard_loops.map_each(lambda q_k: cluster(*q_k), (q, k))
  ids = clustering.upsample_labels(result.labels, tuple(video.shape[2:4])).astype(jnp.int32)
  num_tokens = jnp.full(ids.shape[:1], q.shape[1] * q.shape[2], jnp.int32)
  levels = {"token_ids": result.labels}
  if model_config.get("output_levels", False):
    levels = {"levels": result.levels, "num_levels": result.num_levels}
  return {
    **levels,
    "ids": ids,
    "num_clusters": result.num_clusters[:, -1],
    "overflow": result.overflow,
    "window_overflow": result.window_overflow,
    "cluster_overflow": result.cluster_overflow,
    "level_overflow": result.level_overflow,
    "window_clusters_needed": result.window_clusters_needed,
    "clusters_needed": result.clusters_needed,
    "num_tokens": num_tokens,
  }


def _next_power_of_two(n: int) -> int:
  return 1 << max(int(n) - 1, 0).bit_length()


def grown_config(
  config: ml_collections.ConfigDict, prediction: dict[str, np.ndarray]
) -> ml_collections.ConfigDict | None:
  """`interface.GrowsCapacity`: the clustering capacities that `prediction` (NumPy per-example
  fields of `predict`) shows to suffice, or None when none was exceeded.

  The window and cluster capacities become what the clustering counted (rounded up to a power of
  two, so that later videos rarely recompile; at most the token count T * h * w, which no count can
  exceed), which suffices at once; `max_levels` doubles (at most tokens + 1) until the hierarchy
  fits. Logged, so the capacities a result used are on record.
  """
  if not np.any(prediction["overflow"]):
    return None
  model = config.model
  tokens = int(np.max(prediction["num_tokens"]))
  capacities = {
    "max_window_clusters": model.max_window_clusters,
    "max_clusters": model.max_clusters,
    "max_levels": model.max_levels,
  }
  grown = dict(capacities)
  if np.any(prediction["window_overflow"]):
    grown["max_window_clusters"] = min(
      _next_power_of_two(np.max(prediction["window_clusters_needed"])), tokens
    )
  if np.any(prediction["window_overflow"] | prediction["cluster_overflow"]):
    grown["max_clusters"] = max(
      model.max_clusters, min(_next_power_of_two(np.max(prediction["clusters_needed"])), tokens)
    )
  if np.any(prediction["level_overflow"]):
    grown["max_levels"] = min(2 * model.max_levels, tokens + 1)
  if grown == capacities:
    logging.error(
      "Clustering capacities %s cannot grow further (%d tokens); the result is approximate.",
      capacities,
      tokens,
    )
    return None
  logging.warning(
    "Clustering capacities exceeded (%s): re-clustering with %s (was %s).",
    ", ".join(
      k for k in ("window_overflow", "cluster_overflow", "level_overflow") if np.any(prediction[k])
    ),
    grown,
    capacities,
  )
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.update(grown)
  return config


def _palette(count: int) -> np.ndarray:
  """Fixed distinct colors `[count, 3]` uint8 (golden-ratio hues)."""
  hues = (np.arange(count) * 0.618033988749895) % 1.0
  hsv = np.stack([hues, np.full(count, 0.75), np.full(count, 0.95)], axis=-1)
  return images.to_uint8(augment.hsv_to_rgb(jnp.asarray(hsv)))


def summary_images(
  params: Any, model: BetrayedModel, batch: dict, config: ml_collections.ConfigDict
) -> dict[str, np.ndarray]:
  """For the first clip: frames | cluster labels, and the attention of the centre token of frame 0.

  Returns:
    "segmentation": uint8 `[T, H, 2W, 3]`; "attention": uint8 `[T, H, W, 3]` (each frame's attention
    from the query, shared color scale, upsampled nearest).
  """
  video = jnp.asarray(vit_video.check_video(batch, "summary", NAME)[:1])
  ids = np.asarray(
    jax.jit(lambda p, v: predict(p, model, {"video": v}, config)["ids"])(params, video)
  )[0]
  frames = np.asarray(video[0])
  colors = _palette(int(ids.max()) + 1)[ids]
  frames_u8 = images.to_uint8(frames)
  segmentation = np.concatenate([frames_u8, colors], axis=2)

  def centre_attention(p, v):
    feats = model.features(_resize(v, config.model.inference_resolution))
    grid = feats["keys"].shape[2:4]
    _, attention = model.block.apply({"params": p}, feats["cls"], _flatten_grid(feats["keys"]))
    centre = (grid[0] // 2) * grid[1] + grid[1] // 2
    return attention[0, centre].reshape(v.shape[1], *grid)

  maps = np.asarray(jax.jit(centre_attention)(params, video))
  maps = maps / max(float(maps.max()), 1e-12)
  maps = np.asarray(
    clustering.upsample_labels(
      jnp.asarray((maps * 255.0).astype(np.int32)), tuple(frames.shape[1:3])
    )
  )
  heat = np.stack([maps, maps // 4, 255 - maps], axis=-1).astype(np.uint8)
  return {"segmentation": segmentation, "attention": heat}


# vosjax.segment: cluster ids are arbitrary per window; linked between windows and ranked by area.
SEGMENT_IDS = "clusters"
# `interface.ReproducesOfficialEvaluation`, what `config.eval.mode="official"` changes (SSL-UVOS
# `src/eval_oneshot.py`, `src/data.py`, `davis2017-evaluation/davis2017/results.py::load_attn`):
# frames normalised with Kinetics statistics (`query_key`); the loader drops each video's last frame
# and the evaluation repeats the previous mask; the token-grid labels upsampled straight to the
# frame size with torch's nearest rule (`token_ids`); every cluster, background included, scored as
# a proposal in the official cluster order (PNG id = cluster + 1), none ranked by area.
OFFICIAL_EVALUATION = {
  "drop_last_frame": True,
  "ids_key": "token_ids",
  "every_cluster_is_a_proposal": True,
}


def segment_inputs(
  frames: np.ndarray,
  config: ml_collections.ConfigDict,
  *,
  cache_dir,
  cache_key: str,
  flow_preset: str,
) -> dict[str, np.ndarray]:
  """uint8 frames `[T, H, W, 3]` -> video float32 `[T, h, w, 3]` in [0, 1] at
  `config.data.resolution` (bilinear, as the frame readers; `config.eval.mode` "official": the
  official `readRGB`, / 255 then cv2 bilinear on float64); no flow, nothing cached."""
  del cache_dir, cache_key, flow_preset
  if not config_lib.is_official(config):
    return {"video": video_io.resize_frames(frames, tuple(config.data.resolution))}
  height, width = config.data.resolution
  return {
    "video": np.stack(
      [
        cv2.resize(frame / 255.0, (width, height), interpolation=cv2.INTER_LINEAR)
        for frame in frames
      ]
    ).astype(np.float32)
  }


def model_resolution(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """`interface.SegmentsVideos`: `model.inference_resolution`, else `data.resolution`."""
  return tuple(config.model.inference_resolution or config.data.resolution)


def with_hierarchy_levels(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`interface.ClustersHierarchically`: `config` with `model.output_levels` on."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.output_levels = True
  return config
