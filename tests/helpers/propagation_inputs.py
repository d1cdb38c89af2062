"""Inputs of the label-propagation tests: random-ViT features of frames, synthetic multi-object
videos with exact ids."""

import jax
import numpy as np

from vosjax.data import synthetic_render
from vosjax.models import pretrained
from vosjax.models import vit


def random_vit_features(frames: np.ndarray, arch_name: str, depth: int = 2):
  """Tokens and normed tokens [T, h, w, C] of a random (seed 0) ViT on normalised frames."""
  arch = vit.VIT_ARCHITECTURES[arch_name].replace(depth=depth)
  module = vit.VisionTransformer(arch)
  params = pretrained.random_params(arch, seed=0)

  @jax.jit
  def forward(batch):
    out = module.apply({"params": params}, batch)
    return out.tokens, out.tokens_normed

  tokens, normed = zip(*(forward(frames[i : i + 2]) for i in range(0, len(frames), 2)))
  return np.concatenate(tokens), np.concatenate(normed), arch.patch_size


def synthetic_video(num_frames=10, height=128, width=224, seed=3):
  scene = synthetic_render.sample_scene(np.random.default_rng(seed), num_frames, 3, 5)
  rendered = synthetic_render.render_scene(scene, height, width)
  layer = rendered["layer"]
  ids = np.where(layer == len(scene.objects), 0, layer + 1).astype(np.uint8)
  rgb = rendered["rgb"].astype(np.float32)
  return rgb, ids
