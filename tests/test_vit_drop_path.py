"""Stochastic depth (drop-path) of `vosjax.models.vit`: the per-sample scaling against a NumPy
transcription of DINO's / timm's `drop_path`, the per-block rates against `torch.linspace`, off and
deterministic forwards equal to the plain ViT, and in a training forward whole residual branches
dropped or rescaled per sample, independently per branch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vosjax.models import pretrained
from vosjax.models import vit

ARCH = vit.ViTArch(patch_size=8, embed_dim=32, depth=2, num_heads=2, pos_embed_grid=4)


def reference_drop_path(x: np.ndarray, drop_prob: float, uniform: np.ndarray) -> np.ndarray:
  """DINO's `drop_path` (vision_transformer.py; timm's before `scale_by_keep`) in NumPy, with the
  `torch.rand(shape)` draws given as `uniform` `[B]`."""
  keep_prob = 1 - drop_prob
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  random_tensor = np.floor(keep_prob + uniform.reshape(shape))  # binarize
  return x / keep_prob * random_tensor


def test_drop_path_matches_the_numpy_reference():
  x = np.random.default_rng(0).standard_normal((16, 5, 3)).astype(np.float32)
  uniform = jax.random.uniform(jax.random.key(0), (16,))
  for rate in (0.1, 0.3, 0.7):
    actual = np.asarray(vit.drop_path(jnp.asarray(x), rate, uniform))
    expected = reference_drop_path(x.astype(np.float64), rate, np.asarray(uniform, np.float64))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=0)
    dropped = np.all(actual == 0, axis=(1, 2))
    np.testing.assert_array_equal(dropped, np.asarray(uniform) < rate)  # kept iff u >= p
    assert 0 < dropped.sum() < len(x)  # both cases occur


def test_block_rates_rise_linearly_like_torch_linspace():
  for depth, rate in ((12, 0.1), (2, 0.5), (1, 0.1)):
    np.testing.assert_allclose(
      vit.drop_path_rates(depth, rate), torch.linspace(0, rate, depth).numpy(), rtol=1e-6, atol=1e-9
    )
  assert vit.drop_path_rates(1, 0.1).tolist() == [0.0]  # one block: none dropped, as DINO's


@pytest.fixture(scope="module")
def params_and_images():
  params = pretrained.random_params(ARCH, seed=0)
  images = jax.random.normal(jax.random.key(1), (64, 32, 32, 3))
  return params, images


def test_off_and_deterministic_forwards_equal_the_plain_vit(params_and_images):
  params, images = params_and_images
  plain = vit.VisionTransformer(ARCH).apply({"params": params}, images)
  with_rate = vit.VisionTransformer(ARCH, drop_path_rate=0.5)
  for out in (
    with_rate.apply({"params": params}, images),  # deterministic by default
    vit.VisionTransformer(ARCH).apply({"params": params}, images, deterministic=False),
  ):
    for name in ("tokens", "keys", "cls"):
      np.testing.assert_array_equal(getattr(out, name), getattr(plain, name), err_msg=name)
  with pytest.raises(Exception, match="drop_path"):  # training mode needs its rng
    with_rate.apply({"params": params}, images, deterministic=False)


def test_training_forward_drops_or_rescales_each_branch_per_sample(params_and_images):
  """Depth 2 at rate 0.5: block 0 has rate 0, block 1 rate 0.5. Each sample's tokens must be one of
  the four outcomes of block 1 (attention branch x0 or x2, then MLP branch x0 or x2), computed here
  from the block's own submodules on the output of block 0; all four occur in 64 samples."""
  params, images = params_and_images
  module = vit.VisionTransformer(ARCH, drop_path_rate=0.5)
  run = lambda key: module.apply(
    {"params": params}, images, deterministic=False, rngs={"drop_path": key}
  )
  out = run(jax.random.key(2))
  np.testing.assert_array_equal(run(jax.random.key(2)).tokens, out.tokens)  # reproducible
  assert not np.array_equal(run(jax.random.key(3)).tokens, out.tokens)

  first = vit.VisionTransformer(ARCH.replace(depth=1)).apply(
    {"params": {k: v for k, v in params.items() if k != "blocks_1"}}, images
  )
  x = jnp.concatenate([first.cls[:, None], first.tokens.reshape(64, -1, ARCH.embed_dim)], axis=1)
  block = params["blocks_1"]
  norm = lambda name, y: nn.LayerNorm(epsilon=ARCH.norm_eps).apply({"params": block[name]}, y)
  attention = vit.Attention(ARCH.num_heads).apply({"params": block["attn"]}, norm("norm1", x))[0]
  outcomes = []
  for keep_attention in (0.0, 2.0):
    y = x + keep_attention * attention
    mlp = vit.Mlp(ARCH.mlp_dim).apply({"params": block["mlp"]}, norm("norm2", y))
    outcomes += [y + keep_mlp * mlp for keep_mlp in (0.0, 2.0)]
  tokens = np.asarray(out.tokens).reshape(64, -1, ARCH.embed_dim)
  errors = np.stack([np.abs(tokens - np.asarray(o)[:, 1:]).max(axis=(1, 2)) for o in outcomes])
  matched = errors < 1e-5
  assert matched.sum(axis=0).tolist() == [1] * 64, errors.min(axis=0)  # each sample: one outcome
  assert matched.any(axis=1).all(), matched.sum(axis=1)  # every outcome occurs
  # The keys of the last block come from its input: block 0 has no drop-path, so they are fixed.
  np.testing.assert_allclose(
    out.keys, module.apply({"params": params}, images).keys, rtol=1e-6, atol=1e-6
  )
