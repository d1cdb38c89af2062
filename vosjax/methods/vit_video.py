"""What the ViT-on-RGB-clips methods (Betrayed by Attention, SMTC) share: the clip batch they read
and their backbone with the tests' shrunken random variant.

Both read `batch["video"]` float32 `[B, T, H, W, 3]` in [0, 1] (MOVi-format TFDS and the
frame-folder reader `data.source = "frame_clips"` yield it) and a DINO ViT named by
`config.backbone` (`vosjax.models.pretrained`), which `backbone.arch_overrides` (tests and
benchmarks only, with `backbone.random_init`) shrinks to a random ViT of a few blocks.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import ml_collections
import numpy as np

from vosjax.models import pretrained
from vosjax.models import vit


def example_batch(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """One zero clip `[1, clip_length, H, W, 3]` at `config.data.resolution`."""
  return {
    "video": np.zeros(
      (1, config.data.clip_length) + tuple(config.data.resolution) + (3,), np.float32
    )
  }


def check_video(batch: dict, what: str, method: str) -> jax.Array:
  """`batch["video"]` `[B, T, H, W, 3]`, or an error naming the key or shape that is wrong.

  Args:
    batch: the batch given to `method`'s `what` ("training", "prediction", ...).
    what: the step, for the message. method: the method's name, for the message.
  """
  if "video" not in batch:
    raise KeyError(
      f"{method} {what} needs batch['video'] [B, T, H, W, 3]; got keys "
      f"{sorted(batch)}. config.data must select a reader of RGB clips (MOVi-format "
      "TFDS and data.source='frame_clips' do; data.source='davis' yields Motion "
      "Grouping flow pairs)."
    )
  video = batch["video"]
  if video.ndim != 5 or video.shape[-1] != 3:
    raise ValueError(f"batch['video'] must be [B, T, H, W, 3], got {video.shape}.")
  return video


def arch_overrides_config() -> ml_collections.ConfigDict:
  """`backbone.arch_overrides`: one unset (None) field per `vit.ViTArch` field, so that the command
  lines (`vosjax.main`, `vosjax.segment`) take `--config.backbone.arch_overrides.depth=1` etc."""
  config = ml_collections.ConfigDict()
  for field in dataclasses.fields(vit.ViTArch):
    config[field.name] = ml_collections.config_dict.placeholder(
      {"int": int, "float": float, "bool": bool}[getattr(field.type, "__name__", field.type)]
    )
  return config


def arch_overrides(backbone_config: ml_collections.ConfigDict) -> dict:
  """The set fields of `backbone.arch_overrides` as a dict ({} when none is)."""
  overrides = backbone_config.arch_overrides
  return {k: v for k, v in overrides.items() if v is not None} if overrides else {}


def load_backbone(
  backbone_config: ml_collections.ConfigDict,
) -> tuple[vit.VisionTransformer, pretrained.Params]:
  """`pretrained.load_backbone(backbone_config)`, or a shrunken RANDOM ViT when
  `backbone.arch_overrides` is set (tests and benchmarks only; needs `backbone.random_init`).

  Returns:
    (module, params) for `module.apply({"params": params}, images)`.
  """
  overrides = arch_overrides(backbone_config)
  if not overrides:
    return pretrained.load_backbone(backbone_config)
  if not backbone_config.random_init:
    raise ValueError(
      "backbone.arch_overrides changes the architecture, so no pretrained checkpoint "
      "fits it; set backbone.random_init=True (tests only) or clear arch_overrides."
    )
  arch = pretrained.resolve_architecture(backbone_config.name).replace(**overrides)
  banner = "!" * 78
  logging.warning(
    "\n%s\n!!! backbone.random_init=True with arch_overrides=%s: the backbone has "
    "RANDOM weights and its features are meaningless; tests and benchmarks only.\n%s",
    banner,
    overrides,
    banner,
  )
  return pretrained.backbone_module(backbone_config, arch), pretrained.random_params(arch, seed=0)
