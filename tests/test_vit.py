"""Flax DINO/DINOv2 ViT against the PyTorch transcription of the originals.

torch is a test-only dependency. `official_dino_torch` transcribes DINO's and DINOv2's
`VisionTransformer` (patch conv, CLS, interpolated position embedding, registers, blocks with
explicit softmax(q k^T * scale) attention); the Flax model runs on the converted state dict.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from references import official_dino_torch as official
from vosjax.models import features
from vosjax.models import pretrained
from vosjax.models import transformer_layers
from vosjax.models import vit

RTOL = 1e-5


def relative_error(actual, expected) -> float:
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def original_patch_pos_embed(
  patch_pos: torch.Tensor, height: int, width: int, patch: int, offset: float, antialias: bool
) -> torch.Tensor:
  """Transcription of DINO/DINOv2 `interpolate_pos_encoding` on the patch part [1, N, C]."""
  num_positions = patch_pos.shape[1]
  rows, cols = height // patch, width // patch
  if rows * cols == num_positions and height == width:
    return patch_pos
  side = int(math.sqrt(num_positions))
  grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
  if offset:
    kwargs = {"scale_factor": ((rows + offset) / side, (cols + offset) / side)}
  else:
    kwargs = {"size": (rows, cols)}
  resized = F.interpolate(grid, mode="bicubic", antialias=antialias, **kwargs)
  assert resized.shape[-2:] == (rows, cols)
  return resized.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)


def randomized_official(shapes: dict, seed: int, **overrides) -> official.VisionTransformer:
  """The official model of `shapes` (e.g. `official.DINO_VITS16`), every parameter random."""
  model = official.VisionTransformer(**dict(shapes, **overrides))
  return official.randomize_parameters_(model, seed)


def compare(model: official.VisionTransformer, arch: vit.ViTArch, images: np.ndarray) -> None:
  """The Flax ViT on the converted official state dict against the official forward."""
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  params = pretrained.convert_state_dict(state, arch)
  output = jax.jit(
    lambda p, x: vit.VisionTransformer(arch).apply({"params": p}, x, return_attention=True)
  )(params, jnp.asarray(images))
  reference = model(torch.from_numpy(images).permute(0, 3, 1, 2))
  batch, rows, cols = images.shape[0], *arch.grid_shape(*images.shape[1:3])
  first = 1 + arch.num_register_tokens
  spatial = (batch, rows, cols, arch.embed_dim)
  assert output.tokens.shape == spatial
  for field in ("tokens", "tokens_normed", "keys"):
    expected = reference[field][:, first:].reshape(spatial)
    assert relative_error(getattr(output, field), expected) < RTOL, field
  assert relative_error(output.cls, reference["tokens"][:, 0]) < RTOL
  assert relative_error(output.cls_normed, reference["tokens_normed"][:, 0]) < RTOL
  assert relative_error(output.attention, reference["attention"]) < RTOL


def test_dino_vits16_full_depth_matches_official():
  model = randomized_official(official.DINO_VITS16, seed=0)
  images = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
  compare(model, vit.VIT_ARCHITECTURES["dino_vits16"], images)


@pytest.mark.parametrize(
  "shapes,arch_name",
  [
    (official.DINO_VITS16, "dino_vits16"),
    (official.DINO_VITS8, "dino_vits8"),
  ],
)
def test_dino_layout_matches_official_at_non_square_resolution(shapes, arch_name):
  model = randomized_official(shapes, seed=2, depth=1)
  arch = vit.VIT_ARCHITECTURES[arch_name].replace(depth=1)
  rng = np.random.default_rng(2)
  compare(model, arch, rng.normal(size=(1, 224, 224, 3)).astype(np.float32))
  # One axis below and one above the pretraining grid, with a pixel remainder on the second.
  compare(model, arch, rng.normal(size=(2, 160, 295, 3)).astype(np.float32))


@pytest.mark.parametrize(
  "shapes,arch_name",
  [
    (official.DINOV2_VITS14, "dinov2_vits14"),
    (official.DINOV2_VITS14_REG, "dinov2_vits14_reg"),
  ],
)
def test_dinov2_layout_matches_official(shapes, arch_name):
  model = randomized_official(shapes, seed=1, depth=1)
  arch = vit.VIT_ARCHITECTURES[arch_name].replace(depth=1)
  rng = np.random.default_rng(1)
  compare(model, arch, rng.normal(size=(1, 518, 518, 3)).astype(np.float32))
  compare(model, arch, rng.normal(size=(2, 224, 308, 3)).astype(np.float32))


def timm_registers_layout(state: dict) -> dict:
  """An official DINOv2-with-registers state dict as timm stores it: `reg_token`, no CLS row in
  `pos_embed` (the CLS position folded into `cls_token`), no mask token."""
  state = {k: v for k, v in state.items() if k != "mask_token"}
  state["reg_token"] = state.pop("register_tokens")
  state["cls_token"] = state["cls_token"] + state["pos_embed"][:, :1]
  state["pos_embed"] = state["pos_embed"][:, 1:]
  return state


def test_timm_registers_layout_gives_the_official_outputs():
  model = randomized_official(official.DINOV2_VITS14_REG, seed=3, depth=1)
  arch = vit.VIT_ARCHITECTURES["dinov2_vits14_reg"].replace(depth=1)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  params = pretrained.convert_state_dict(timm_registers_layout(state), arch)
  images = np.random.default_rng(3).normal(size=(1, 224, 308, 3)).astype(np.float32)
  output = vit.VisionTransformer(arch).apply({"params": params}, jnp.asarray(images))
  reference = model(torch.from_numpy(images).permute(0, 3, 1, 2))
  assert relative_error(output.cls_normed, reference["tokens_normed"][:, 0]) < RTOL
  expected = reference["tokens_normed"][:, 1 + arch.num_register_tokens :]
  assert relative_error(output.tokens_normed.reshape(expected.shape), expected) < RTOL


@pytest.mark.parametrize(
  "side,out_rows,out_cols,offset,antialias",
  [
    (14, 12, 20, 0.1, False),  # DINO /16: down on one axis, up on the other.
    (28, 40, 60, 0.1, False),  # DINO /8 upsampling.
    (37, 16, 16, 0.1, False),  # DINOv2 default.
    (37, 16, 22, 0.0, True),  # DINOv2 registers: antialiased downsampling.
    (37, 45, 50, 0.0, True),  # DINOv2 registers: antialiased upsampling.
  ],
)
def test_resize_matrix_matches_torch_interpolate(side, out_rows, out_cols, offset, antialias):
  grid = np.random.default_rng(2).normal(size=(1, 5, side, side))
  if offset:
    kwargs = {"scale_factor": ((out_rows + offset) / side, (out_cols + offset) / side)}
  else:
    kwargs = {"size": (out_rows, out_cols)}
  expected = F.interpolate(
    torch.from_numpy(grid), mode="bicubic", antialias=antialias, **kwargs
  ).numpy()
  matrices = [
    vit.bicubic_resize_matrix(side, n, side / (n + offset), antialias) for n in (out_rows, out_cols)
  ]
  actual = np.einsum("hi,wj,bcij->bchw", matrices[0], matrices[1], grid)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)


def test_original_dino_interpolation_offset_matters():
  """The +0.1 scale factor is not a plain resize to the target size (as timm's resample does)."""
  arch = vit.VIT_ARCHITECTURES["dino_vits16"]
  pos = np.random.default_rng(3).normal(size=(1, 1 + 14 * 14, 8)).astype(np.float32)
  ours = np.asarray(vit.interpolate_pos_embed(jnp.asarray(pos), (10, 30), arch))
  original = original_patch_pos_embed(torch.from_numpy(pos[:, 1:]), 160, 480, 16, 0.1, False)
  sized = (
    F.interpolate(
      torch.from_numpy(pos[:, 1:]).reshape(1, 14, 14, 8).permute(0, 3, 1, 2),
      size=(10, 30),
      mode="bicubic",
    )
    .permute(0, 2, 3, 1)
    .reshape(1, 300, 8)
  )
  np.testing.assert_allclose(ours[0, 0], pos[0, 0])
  assert relative_error(ours[:, 1:], original.numpy()) < RTOL
  assert relative_error(ours[:, 1:], sized.numpy()) > 1e-3


def test_pretraining_grid_keeps_pos_embed_for_non_square_pixels():
  # 224x230 pixels -> 14x14 patches: CUDA's bicubic copies same-size inputs (see vit docstring).
  arch = vit.VIT_ARCHITECTURES["dino_vits16"]
  pos = jnp.asarray(np.random.default_rng(4).normal(size=(1, 197, 4)), jnp.float32)
  np.testing.assert_array_equal(
    vit.interpolate_pos_embed(pos, arch.grid_shape(224, 230), arch), pos
  )


TINY = vit.ViTArch(
  patch_size=8,
  embed_dim=32,
  depth=2,
  num_heads=2,
  pos_embed_grid=4,
  layer_scale=True,
  num_register_tokens=2,
)


def random_params(module: vit.VisionTransformer, seed: int):
  """Random params of the module's shapes (cheaper than compiling module.init)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"]
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), jnp.float32), shapes)


def test_bfloat16_forward_close_to_float32():
  images = jnp.asarray(np.random.default_rng(5).normal(size=(2, 40, 56, 3)), jnp.float32)
  params = random_params(vit.VisionTransformer(TINY), seed=0)
  full = jax.jit(vit.VisionTransformer(TINY).apply)({"params": params}, images)
  half = jax.jit(vit.VisionTransformer(TINY, dtype=jnp.bfloat16).apply)({"params": params}, images)
  assert half.keys.dtype == jnp.bfloat16
  assert relative_error(half.keys, full.keys) < 5e-2
  assert relative_error(half.tokens, full.tokens) < 5e-2


def test_rejects_bad_images():
  module = vit.VisionTransformer(TINY)
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    module.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(ValueError, match="smaller than one 8px patch"):
    module.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 32, 3)))


def test_feature_extractor_matches_per_frame_forward():
  rng = np.random.default_rng(6)
  video = rng.uniform(size=(2, 3, 40, 48, 3)).astype(np.float32)
  module = vit.VisionTransformer(TINY)
  params = random_params(module, seed=1)
  # 6 frames in chunks of 4: exercises the padding of the last chunk.
  extracted = features.make_feature_extractor(module, frame_chunk=4)(params, jnp.asarray(video))
  mean, std = np.array(features.IMAGENET_MEAN), np.array(features.IMAGENET_STD)
  frames = ((video - mean) / std).reshape(6, 40, 48, 3).astype(np.float32)
  expected = jax.jit(module.apply)({"params": params}, jnp.asarray(frames))
  assert extracted["keys"].shape == (2, 3, 5, 6, 32)
  assert extracted["cls"].shape == (2, 3, 32)
  np.testing.assert_allclose(
    extracted["keys"], np.asarray(expected.keys).reshape(2, 3, 5, 6, 32), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    extracted["tokens"], np.asarray(expected.tokens).reshape(2, 3, 5, 6, 32), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    extracted["cls"], np.asarray(expected.cls).reshape(2, 3, 32), rtol=1e-5, atol=1e-5
  )
  with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
    features.make_feature_extractor(module, frame_chunk=4)(params, jnp.asarray(video[0]))


def test_automatic_frame_chunk():
  expected = features.AUTO_FRAME_CHUNK.get(
    jax.default_backend(), features.AUTO_FRAME_CHUNK_ACCELERATOR
  )
  assert features.resolve_frame_chunk(0) == expected
  assert jax.default_backend() != "cpu" or expected == 2
  assert features.resolve_frame_chunk(5) == 5
  with pytest.raises(ValueError, match="frame_chunk must be >= 1, or 0"):
    features.make_feature_extractor(vit.VisionTransformer(TINY), frame_chunk=-1)
  # The automatic chunk gives the same features as an explicit one (3 frames: a padded chunk).
  rng = np.random.default_rng(7)
  video = jnp.asarray(rng.uniform(size=(1, 3, 16, 16, 3)).astype(np.float32))
  module = vit.VisionTransformer(TINY)
  params = random_params(module, seed=2)
  automatic = features.make_feature_extractor(module, frame_chunk=0)(params, video)
  explicit = features.make_feature_extractor(module, frame_chunk=3)(params, video)
  np.testing.assert_allclose(automatic["keys"], explicit["keys"], rtol=1e-5, atol=1e-5)


def test_flop_count_agrees_with_xla_cost_analysis():
  arch = vit.VIT_ARCHITECTURES["dino_vits16"].replace(depth=1)
  module = vit.VisionTransformer(arch)
  images = jnp.zeros((1, 192, 384, 3))
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), images)["params"]
  # With the maps returned the single block keeps the full attention (no while loop, which
  # cost analysis counts once).
  compiled = (
    jax.jit(lambda p, x: module.apply({"params": p}, x, return_attention=True).tokens)
    .lower(shapes, images)
    .compile()
  )
  xla_flops = compiled.cost_analysis()["flops"]
  ours = vit.vit_flops_per_image(arch, 192, 384)
  # XLA also counts element-wise work (norms, softmax, GELU): a few percent on top of matmuls.
  assert ours <= xla_flops <= 1.08 * ours, (ours, xla_flops)


def _numpy_attention(query, key, value, scale):
  """float64 softmax(q k^T * scale) v, [B, S, heads, d]."""
  logits = np.einsum("bqhd,bkhd->bhqk", query, key) * scale
  attention = np.exp(logits - logits.max(-1, keepdims=True))
  attention /= attention.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", attention, value)


@pytest.mark.parametrize("length,chunk", [(300, 256), (7, 3), (512, 256)])
def test_query_chunked_attention_matches_full_softmax_attention(length, chunk):
  rng = np.random.default_rng(5)
  query, key, value = (
    jnp.asarray(rng.normal(size=(2, length, 3, 8)), jnp.float32) for _ in range(3)
  )
  expected = _numpy_attention(*(np.float64(x) for x in (query, key, value)), 8**-0.5)
  got = transformer_layers.attend_in_query_chunks(jnp.stack([query, key, value], 2), 8**-0.5, chunk)
  np.testing.assert_allclose(np.asarray(got), expected.reshape(2, length, 24), rtol=1e-5, atol=1e-5)


def test_per_image_attention_value_and_gradient():
  """attend_per_image (hand-written backward that recomputes the maps) against float64 NumPy:
  the output, and central finite differences of sum(output * weights) for sampled entries."""
  rng = np.random.default_rng(8)
  inputs = [rng.normal(size=(3, 11, 2, 4)) for _ in range(3)]
  weights = rng.normal(size=(3, 11, 2, 4))
  scale = 4**-0.5

  def attend(query, key, value):  # [3, 11, 2, 4] each, the packed layout in between
    packed = jnp.stack([query, key, value], 2)
    return transformer_layers.attend_per_image(packed, scale).reshape(query.shape)

  got = attend(*(jnp.asarray(x, jnp.float32) for x in inputs))
  np.testing.assert_allclose(
    np.asarray(got), _numpy_attention(*inputs, scale), rtol=1e-5, atol=1e-6
  )
  gradients = jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v) * weights), argnums=(0, 1, 2))(
    *(jnp.asarray(x, jnp.float32) for x in inputs)
  )
  step = 1e-6
  for which in range(3):
    for index in zip(*(rng.integers(0, n, size=6) for n in inputs[which].shape)):
      shifted = [[x.copy() for x in inputs] for _ in range(2)]
      shifted[0][which][index] += step
      shifted[1][which][index] -= step
      numeric = (
        np.sum(_numpy_attention(*shifted[0], scale) * weights)
        - np.sum(_numpy_attention(*shifted[1], scale) * weights)
      ) / (2 * step)
      np.testing.assert_allclose(float(gradients[which][index]), numeric, rtol=1e-4, atol=1e-5)


# 577 tokens: query chunks on CPU; 197 tokens (two images): one image at a time.
@pytest.mark.parametrize("batch,side,tokens", [(1, 384, 577), (2, 224, 197)])
def test_forward_without_maps_equals_forward_with_maps(batch, side, tokens):
  """The CPU attention of the blocks whose maps are not returned changes nothing."""
  module = vit.VisionTransformer(vit.VIT_ARCHITECTURES["dino_vits16"].replace(depth=2))
  images = jnp.asarray(np.random.default_rng(6).normal(size=(batch, side, side, 3)), jnp.float32)
  params = module.init(jax.random.key(0), images)
  plain = module.apply(params, images)
  with_maps = module.apply(params, images, return_attention=True)
  assert plain.attention is None and with_maps.attention.shape == (batch, 6, tokens, tokens)
  np.testing.assert_allclose(plain.tokens, with_maps.tokens, rtol=1e-5, atol=1e-5)
