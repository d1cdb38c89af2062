"""DINO and DINOv2 Vision Transformers in Flax linen.

Follows facebookresearch/dino `vision_transformer.py` and facebookresearch/dinov2
`dinov2/models/vision_transformer.py` (pre-norm blocks, qkv with bias, exact GELU, LayerNorm eps
1e-6; DINOv2 adds LayerScale and optional register tokens). Parameter names mirror the PyTorch
state-dict names so that `vosjax.models.pretrained` can convert checkpoints one to one.

Position embeddings are resampled to any input grid exactly as the originals call
`torch.nn.functional.interpolate`:
  * DINO and DINOv2 (no registers): bicubic (A = -0.75, edge clamped, align_corners=False) with
    `scale_factor = (grid + 0.1) / pretrained_grid`, so sample positions use the +0.1 offset.
  * DINOv2 with registers: `size=grid` with `antialias=True` (PIL-style cubic, a = -0.5,
    support widened when downsampling, weights renormalised at the borders).
Each axis is resampled by a small [out, in] matrix computed in NumPy at trace time (shapes are
static), so the whole resize is two exact matmuls.

Stochastic depth (drop-path, `VisionTransformer.drop_path_rate`, default 0: off) as DINO's and
timm's `drop_path`: per sample and per residual branch, the branch is dropped with probability p or
kept and scaled by 1 / (1 - p); the rate rises linearly from 0 at the first block to
`drop_path_rate` at the last (`torch.linspace(0, rate, depth)`). Active only with
`deterministic=False` and an rng named "drop_path"; an inference forward is deterministic.

One deliberate choice: when the patch grid equals the pretrained grid on both axes the embedding
is used unchanged, as PyTorch's CUDA bicubic kernel does (it copies same-size inputs); PyTorch's
current CPU kernel would instead resample with the +0.1 scale. The originals ran on CUDA.
"""

import dataclasses
import math
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vosjax.models import transformer_layers


@dataclasses.dataclass(frozen=True)
class ViTArch:
  """Architecture of one ViT backbone.

  Attributes:
    patch_size: side of the square patches, in pixels.
    embed_dim: token width C.
    depth: number of transformer blocks.
    num_heads: attention heads; head width is embed_dim // num_heads.
    pos_embed_grid: side of the square grid of learned position embeddings (pretraining res /
    patch). mlp_ratio: hidden width of the MLP relative to embed_dim.
    layer_scale: DINOv2's per-channel residual scaling (`ls1`, `ls2`).
    num_register_tokens: DINOv2 registers, inserted after CLS, without position embedding.
    interpolate_offset: offset added to the target grid in the interpolation scale factor; 0 means
      the target size is given directly.
    interpolate_antialias: use PyTorch's antialiased bicubic resampling.
    norm_eps: LayerNorm epsilon.
  """

  patch_size: int
  embed_dim: int
  depth: int
  num_heads: int
  pos_embed_grid: int
  mlp_ratio: float = 4.0
  layer_scale: bool = False
  num_register_tokens: int = 0
  interpolate_offset: float = 0.1
  interpolate_antialias: bool = False
  norm_eps: float = 1e-6

  @property
  def mlp_dim(self) -> int:
    return int(self.embed_dim * self.mlp_ratio)

  def grid_shape(self, height: int, width: int) -> tuple[int, int]:
    """Patch grid (h, w) for an input of height x width pixels (remainders are dropped)."""
    return height // self.patch_size, width // self.patch_size

  def replace(self, **changes: Any) -> "ViTArch":
    return dataclasses.replace(self, **changes)


_DINOV2_REG = dict(num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True)

# Official configurations (dino `vit_small`/`vit_base`, dinov2 hub `dinov2_vit{s,b}14[_reg]`).
VIT_ARCHITECTURES: dict[str, ViTArch] = {
  "dino_vits16": ViTArch(patch_size=16, embed_dim=384, depth=12, num_heads=6, pos_embed_grid=14),
  "dino_vits8": ViTArch(patch_size=8, embed_dim=384, depth=12, num_heads=6, pos_embed_grid=28),
  "dino_vitb16": ViTArch(patch_size=16, embed_dim=768, depth=12, num_heads=12, pos_embed_grid=14),
  "dino_vitb8": ViTArch(patch_size=8, embed_dim=768, depth=12, num_heads=12, pos_embed_grid=28),
  "dinov2_vits14": ViTArch(
    patch_size=14, embed_dim=384, depth=12, num_heads=6, pos_embed_grid=37, layer_scale=True
  ),
  "dinov2_vitb14": ViTArch(
    patch_size=14, embed_dim=768, depth=12, num_heads=12, pos_embed_grid=37, layer_scale=True
  ),
  "dinov2_vits14_reg": ViTArch(
    patch_size=14,
    embed_dim=384,
    depth=12,
    num_heads=6,
    pos_embed_grid=37,
    layer_scale=True,
    **_DINOV2_REG,
  ),
  "dinov2_vitb14_reg": ViTArch(
    patch_size=14,
    embed_dim=768,
    depth=12,
    num_heads=12,
    pos_embed_grid=37,
    layer_scale=True,
    **_DINOV2_REG,
  ),
}


def _cubic_clamped_weights(t: float, a: float = -0.75) -> tuple[float, float, float, float]:
  """PyTorch `upsample_bicubic2d` weights for taps at offsets -1, 0, 1, 2 of fractional pos t."""

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return far(t + 1), near(t), near(1 - t), far(2 - t)


def _cubic_filter(x: float, a: float = -0.5) -> float:
  """Keys cubic kernel as used by PyTorch's antialiased bicubic (same as PIL)."""
  x = abs(x)
  if x < 1:
    return ((a + 2) * x - (a + 3)) * x * x + 1
  if x < 2:
    return (((x - 5) * x + 8) * x - 4) * a
  return 0.0


def bicubic_resize_matrix(
  in_size: int, out_size: int, inverse_scale: float, antialias: bool
) -> np.ndarray:
  """Row-stochastic matrix [out_size, in_size] reproducing torch bicubic interpolation on one axis.

  Args:
    in_size: input length.
    out_size: output length.
    inverse_scale: input/output coordinate ratio PyTorch uses (1 / scale_factor when a scale factor
      is given, else in_size / out_size).
    antialias: PyTorch's `antialias=True` path.
  """
  matrix = np.zeros((out_size, in_size), np.float64)
  if not antialias:
    for i in range(out_size):
      source = inverse_scale * (i + 0.5) - 0.5
      left = math.floor(source)
      for tap, weight in enumerate(_cubic_clamped_weights(source - left)):
        matrix[i, min(max(left - 1 + tap, 0), in_size - 1)] += weight
    return matrix
  support = 2.0 * inverse_scale if inverse_scale >= 1.0 else 2.0
  filter_scale = 1.0 / inverse_scale if inverse_scale >= 1.0 else 1.0
  for i in range(out_size):
    center = inverse_scale * (i + 0.5)
    first = max(int(center - support + 0.5), 0)
    last = min(int(center + support + 0.5), in_size)
    weights = np.array(
      [_cubic_filter((j - center + 0.5) * filter_scale) for j in range(first, last)]
    )
    if weights.sum() != 0.0:
      weights = weights / weights.sum()
    matrix[i, first:last] = weights
  return matrix


def interpolate_pos_embed(pos_embed: jax.Array, grid: tuple[int, int], arch: ViTArch) -> jax.Array:
  """Resamples learned position embeddings to a patch grid, as DINO/DINOv2 do.

  Args:
    pos_embed: [1, 1 + G*G, C] (CLS position first) with G = arch.pos_embed_grid.
    grid: target patch grid (h, w).
    arch: provides G, the offset and the antialias flag.

  Returns:
    [1, 1 + h*w, C] in float32.
  """
  side = arch.pos_embed_grid
  if pos_embed.shape[1] != 1 + side * side:
    raise ValueError(f"pos_embed has {pos_embed.shape[1]} positions, expected 1 + {side}^2")
  pos_embed = pos_embed.astype(jnp.float32)
  if tuple(grid) == (side, side):
    return pos_embed
  matrices = []
  for out_size in grid:
    if arch.interpolate_offset:
      inverse_scale = 1.0 / (float(out_size + arch.interpolate_offset) / side)
    else:
      inverse_scale = side / out_size
    matrices.append(
      jnp.asarray(
        bicubic_resize_matrix(side, out_size, inverse_scale, arch.interpolate_antialias),
        jnp.float32,
      )
    )
  patch_grid = pos_embed[0, 1:].reshape(side, side, -1)
  resized = jnp.einsum(
    "hi,wj,ijc->hwc", matrices[0], matrices[1], patch_grid, precision=jax.lax.Precision.HIGHEST
  )
  return jnp.concatenate([pos_embed[:, :1], resized.reshape(1, grid[0] * grid[1], -1)], axis=1)


def drop_path_rates(depth: int, rate: float) -> np.ndarray:
  """Per-block drop-path probabilities `[depth]`, linear from 0 to `rate` (DINO's `dpr`)."""
  return np.linspace(0.0, rate, depth)


def drop_path(x: jax.Array, rate: float, uniform: jax.Array) -> jax.Array:
  """Stochastic depth of a residual branch `x` `[B, ...]`, as DINO's / timm's `drop_path`.

  Args:
    x: the branch output, `[B, ...]`.
    rate: the drop probability p of this block, in [0, 1).
    uniform: `[B]` draws from U[0, 1): sample b keeps its branch iff floor(1 - p + u_b) = 1.

  Returns:
    `x * floor(1 - p + u) / (1 - p)` per sample (dropped samples are exactly 0).
  """
  keep_prob = 1.0 - rate
  mask = jnp.floor(keep_prob + uniform).astype(x.dtype)
  return x / jnp.asarray(keep_prob, x.dtype) * mask.reshape((-1,) + (1,) * (x.ndim - 1))


@flax.struct.dataclass
class ViTOutput:
  """Last-block outputs of the ViT (h, w = patch grid; S = 1 + registers + h*w tokens).

  Attributes:
    tokens: [B, h, w, C] last block output patch tokens, before the final norm.
    tokens_normed: [B, h, w, C] the same after the final LayerNorm.
    cls: [B, C] CLS token output, before the final norm.
    cls_normed: [B, C] CLS token after the final LayerNorm.
    keys: [B, h, w, C] key projection of the last block, qkv(norm1(x))[1] with heads concatenated
      (head-major channels), CLS and registers dropped.
    attention: [B, heads, S, S] softmax attention of the last block, or None when not requested.
  """

  tokens: jax.Array
  tokens_normed: jax.Array
  cls: jax.Array
  cls_normed: jax.Array
  keys: jax.Array
  attention: Optional[jax.Array]


class Attention(nn.Module):
  """Multi-head self-attention returning the output, the keys and the attention maps.

  With `return_attention=False` the maps are None and, on CPU for sequences longer than two
  chunks, the attention runs in query chunks (`attend_in_query_chunks`).
  """

  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, x: jax.Array, return_attention: bool = True
  ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """x: [B, S, C] -> (output [B, S, C], keys [B, S, C], attention [B, heads, S, S] float32)."""
    batch, length, width = x.shape
    head_dim = width // self.num_heads
    qkv = nn.Dense(3 * width, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(batch, length, 3, self.num_heads, head_dim)
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    scale = head_dim**-0.5
    # On CPU without maps: query chunks past two chunks (the images' maps would not fit in
    # cache), else one image at a time with recomputing backward (`attend_per_image`).
    if not return_attention and jax.default_backend() == "cpu":
      attend = (
        transformer_layers.attend_in_query_chunks
        if length > 2 * transformer_layers.QUERY_CHUNK
        else transformer_layers.attend_per_image
      )
      with jax.named_scope("cpu_only/vit_attention"):  # shows in the HLO (tests/test_tpu.py)
        mixed, attention = attend(qkv, scale), None
    else:
      logits = jnp.einsum("bqhd,bkhd->bhqk", query, key) * scale
      # Softmax in float32 so that a bfloat16 forward keeps sane attention maps.
      attention = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
      mixed = jnp.einsum("bhqk,bkhd->bqhd", attention.astype(value.dtype), value)
      if not return_attention:
        attention = None
    output = nn.Dense(width, dtype=self.dtype, name="proj")(mixed.reshape(batch, length, width))
    return output, key.reshape(batch, length, width), attention


class LayerScale(nn.Module):
  """DINOv2 per-channel scaling of a residual branch (param `gamma`)."""

  init_value: float = 1.0  # DINOv2 hub models are built with init_values=1.0.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],))
    return x * gamma.astype(self.dtype)


class Mlp(nn.Module):
  """fc1 -> exact GELU -> fc2."""

  hidden_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc1")(x)
    hidden = transformer_layers.gelu_exact(hidden)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(hidden)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).

  `drop_path_rate` > 0 with `deterministic=False`: each branch goes through `drop_path` with its
  own per-sample draws from the rng "drop_path" (DINO's `x + drop_path(y)` on both branches).
  """

  arch: ViTArch
  dtype: Any = jnp.float32
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(
    self, x: jax.Array, deterministic: bool = True, return_attention: bool = True
  ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """x: [B, S, C] -> (x [B, S, C], keys [B, S, C], attention [B, heads, S, S] or None)."""
    arch = self.arch
    stochastic = self.drop_path_rate > 0.0 and not deterministic
    if stochastic:  # [2, B]: one draw per sample for each of the two branches
      uniform = jax.random.uniform(self.make_rng("drop_path"), (2, x.shape[0]))
    normed = nn.LayerNorm(epsilon=arch.norm_eps, dtype=self.dtype, name="norm1")(x)
    branch, keys, attention = Attention(arch.num_heads, self.dtype, name="attn")(
      normed, return_attention
    )
    if arch.layer_scale:
      branch = LayerScale(dtype=self.dtype, name="ls1")(branch)
    if stochastic:
      branch = drop_path(branch, self.drop_path_rate, uniform[0])
    x = x + branch
    normed = nn.LayerNorm(epsilon=arch.norm_eps, dtype=self.dtype, name="norm2")(x)
    branch = Mlp(arch.mlp_dim, self.dtype, name="mlp")(normed)
    if arch.layer_scale:
      branch = LayerScale(dtype=self.dtype, name="ls2")(branch)
    if stochastic:
      branch = drop_path(branch, self.drop_path_rate, uniform[1])
    return x + branch, keys, attention


class VisionTransformer(nn.Module):
  """DINO / DINOv2 ViT backbone.

  Attributes:
    arch: the architecture (see VIT_ARCHITECTURES).
    dtype: computation dtype (float32 or bfloat16); parameters stay float32.
    drop_path_rate: stochastic depth of the last block (0 at the first, linear in between); 0: off.
      A training regulariser, not part of the architecture (the parameters are the same).
  """

  arch: ViTArch
  dtype: Any = jnp.float32
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(
    self, images: jax.Array, return_attention: bool = False, deterministic: bool = True
  ) -> ViTOutput:
    """Runs the backbone.

    Args:
      images: [B, H, W, 3] already normalised images. Pixels past the last full patch are
        ignored, as the strided patch convolution of the originals does.
      return_attention: also return the last block's attention maps.
      deterministic: no stochastic depth (inference); False needs the rng "drop_path" when
        `drop_path_rate` > 0.

    Returns:
      ViTOutput with a patch grid (h, w) = (H // patch, W // patch).
    """
    arch = self.arch
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
    batch, height, width, _ = images.shape
    grid = arch.grid_shape(height, width)
    if min(grid) < 1:
      raise ValueError(f"image {height}x{width} is smaller than one {arch.patch_size}px patch")
    patches = transformer_layers.PatchEmbedding(
      arch.embed_dim, arch.patch_size, self.dtype, name="patch_embed"
    )(images)
    x = patches.reshape(batch, grid[0] * grid[1], arch.embed_dim)
    init = nn.initializers.truncated_normal(0.02)
    cls_token = self.param("cls_token", init, (1, 1, arch.embed_dim))
    pos_embed = self.param("pos_embed", init, (1, 1 + arch.pos_embed_grid**2, arch.embed_dim))
    x = jnp.concatenate(
      [jnp.broadcast_to(cls_token, (batch, 1, arch.embed_dim)).astype(x.dtype), x], axis=1
    )
    x = x + interpolate_pos_embed(pos_embed, grid, arch).astype(x.dtype)
    if arch.num_register_tokens:
      registers = self.param(
        "register_tokens",
        nn.initializers.normal(1e-6),
        (1, arch.num_register_tokens, arch.embed_dim),
      )
      registers = jnp.broadcast_to(registers, (batch,) + registers.shape[1:]).astype(x.dtype)
      x = jnp.concatenate([x[:, :1], registers, x[:, 1:]], axis=1)
    rates = drop_path_rates(arch.depth, self.drop_path_rate)
    for index in range(arch.depth):
      last = index == arch.depth - 1
      x, keys, attention = Block(arch, self.dtype, float(rates[index]), name=f"blocks_{index}")(
        x, deterministic, return_attention and last
      )
    normed = nn.LayerNorm(epsilon=arch.norm_eps, dtype=self.dtype, name="norm")(x)
    first_patch = 1 + arch.num_register_tokens
    spatial = (batch, grid[0], grid[1], arch.embed_dim)
    return ViTOutput(
      tokens=x[:, first_patch:].reshape(spatial),
      tokens_normed=normed[:, first_patch:].reshape(spatial),
      cls=x[:, 0],
      cls_normed=normed[:, 0],
      keys=keys[:, first_patch:].reshape(spatial),
      attention=attention,  # None unless return_attention (the last block's maps)
    )


def vit_flops_per_image(arch: ViTArch, height: int, width: int) -> int:
  """Multiply-adds x2 of one forward pass: patch embedding, per-block matmuls and attention.

  LayerNorm, softmax, GELU and the position-embedding resize are ignored (not matmuls).
  """
  grid = arch.grid_shape(height, width)
  patches = grid[0] * grid[1]
  tokens = 1 + arch.num_register_tokens + patches
  width_c = arch.embed_dim
  patch_embed = 2 * patches * (3 * arch.patch_size**2) * width_c
  qkv = 2 * tokens * width_c * 3 * width_c
  proj = 2 * tokens * width_c * width_c
  mlp = 2 * 2 * tokens * width_c * arch.mlp_dim
  attention = 2 * 2 * tokens * tokens * width_c  # q k^T and attn v, summed over heads
  return patch_embed + arch.depth * (qkv + proj + mlp + attention)
