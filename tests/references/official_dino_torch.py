"""The DINO and DINOv2 Vision Transformers, transcribed in stock PyTorch for the tests.

Written from facebookresearch/dino `vision_transformer.py` and facebookresearch/dinov2
`dinov2/models/vision_transformer.py` + `dinov2/layers/`: patch conv, CLS token, position embedding
interpolated bicubically (DINO: scale factor with +0.1 offset; DINOv2: the same offset, or with
registers no offset and an antialiased resize to the grid size), DINOv2's register tokens inserted
after CLS without position embedding, pre-LN blocks (qkv bias, LayerNorm eps 1e-6, GELU MLP,
DINOv2's LayerScale `ls1`/`ls2`) and the final norm. Module names are the official ones, so
`state_dict()` has the layout of the official checkpoints (DINOv2's iBOT `mask_token` included).
It is the independent PyTorch reference of `vosjax.models.vit` and of the checkpoint conversion.
"""

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class Mlp(nn.Module):
  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
  """softmax(q k^T * scale) v, as DINO's `Attention.forward` (explicit, no fused kernel)."""

  def __init__(self, dim: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, 3 * dim, bias=True)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    """x [B, N, C] -> (output [B, N, C], attention [B, heads, N, N])."""
    batch, length, dim = x.shape
    qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attention = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
    return self.proj((attention @ v).transpose(1, 2).reshape(batch, length, dim)), attention


class LayerScale(nn.Module):
  def __init__(self, dim: int):
    super().__init__()
    self.gamma = nn.Parameter(torch.ones(dim))

  def forward(self, x):
    return x * self.gamma


class Block(nn.Module):
  def __init__(self, dim: int, num_heads: int, layer_scale: bool):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, num_heads)
    self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, 4 * dim)
    self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

  def forward(self, x):
    """x [B, N, C] -> (x [B, N, C], attention [B, heads, N, N])."""
    y, attention = self.attn(self.norm1(x))
    x = x + self.ls1(y)
    return x + self.ls2(self.mlp(self.norm2(x))), attention


class PatchEmbed(nn.Module):
  def __init__(self, patch: int, dim: int):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class VisionTransformer(nn.Module):
  """DINO's ViT (`layer_scale=False`) or DINOv2's (`layer_scale=True`, optional registers).

  `grid` is the pretraining patch grid side (the position embedding has `grid**2 + 1` rows).
  """

  def __init__(
    self,
    patch: int,
    dim: int,
    depth: int,
    num_heads: int,
    grid: int,
    layer_scale: bool = False,
    num_register_tokens: int = 0,
    interpolate_offset: float = 0.1,
    interpolate_antialias: bool = False,
  ):
    super().__init__()
    self.patch = patch
    self.interpolate_offset = interpolate_offset
    self.interpolate_antialias = interpolate_antialias
    self.patch_embed = PatchEmbed(patch, dim)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
    self.register_tokens = (
      nn.Parameter(torch.zeros(1, num_register_tokens, dim)) if num_register_tokens else None
    )
    if layer_scale:  # DINOv2 checkpoints carry the iBOT mask token; inference does not use it.
      self.mask_token = nn.Parameter(torch.zeros(1, dim))
    self.blocks = nn.ModuleList([Block(dim, num_heads, layer_scale) for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-6)

  def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
    """DINO's / DINOv2's `interpolate_pos_encoding` -> [1, 1 + rows * cols, C]."""
    num_patches = self.pos_embed.shape[1] - 1
    rows, cols = height // self.patch, width // self.patch
    if rows * cols == num_patches and height == width:
      return self.pos_embed
    side = int(math.sqrt(num_patches))
    grid = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if self.interpolate_offset:
      offset = self.interpolate_offset
      kwargs = {"scale_factor": ((rows + offset) / side, (cols + offset) / side)}
    else:
      kwargs = {"size": (rows, cols)}
    grid = F.interpolate(grid, mode="bicubic", antialias=self.interpolate_antialias, **kwargs)
    assert grid.shape[-2:] == (rows, cols)
    return torch.cat(
      [self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1
    )

  def prepare_tokens(self, images: torch.Tensor) -> torch.Tensor:
    """images [B, 3, H, W] -> tokens [B, 1 + registers + rows * cols, C]."""
    batch, _, height, width = images.shape
    x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
    x = torch.cat([self.cls_token.expand(batch, -1, -1), x], dim=1)
    x = x + self.interpolate_pos_encoding(height, width)
    if self.register_tokens is not None:
      x = torch.cat([x[:, :1], self.register_tokens.expand(batch, -1, -1), x[:, 1:]], dim=1)
    return x

  @torch.no_grad()
  def forward(self, images: torch.Tensor) -> dict[str, np.ndarray]:
    """images [B, 3, H, W] -> the last block's outputs as NumPy arrays: `tokens` and
    `tokens_normed` [B, N, C], `keys` [B, N, C] (heads concatenated), `attention` [B, heads, N, N].
    """
    x = self.prepare_tokens(images)
    for block in self.blocks[:-1]:
      x, _ = block(x)
    last = self.blocks[-1]
    width = x.shape[-1]
    keys = last.attn.qkv(last.norm1(x))[..., width : 2 * width]
    x, attention = last(x)
    return {
      "tokens": x.numpy(),
      "tokens_normed": self.norm(x).numpy(),
      "keys": keys.numpy(),
      "attention": attention.numpy(),
    }


# The released models' shapes (ViT-S); `depth` is usually lowered in the tests.
DINO_VITS16 = dict(patch=16, dim=384, depth=12, num_heads=6, grid=14)
DINO_VITS8 = dict(patch=8, dim=384, depth=12, num_heads=6, grid=28)
DINOV2_VITS14 = dict(patch=14, dim=384, depth=12, num_heads=6, grid=37, layer_scale=True)
DINOV2_VITS14_REG = dict(
  DINOV2_VITS14, num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True
)


@torch.no_grad()
def randomize_parameters_(model: nn.Module, seed: int) -> nn.Module:
  """Every parameter random (biases, norms, layer scales, tokens included), in place."""
  torch.manual_seed(seed)
  for name, param in model.named_parameters():
    if name.endswith(".gamma") or ("norm" in name and name.endswith("weight")):
      param.uniform_(0.5, 1.5)
    elif name.endswith(("cls_token", "pos_embed", "register_tokens", "mask_token")):
      param.copy_(0.5 * torch.randn_like(param))
    else:
      param.normal_(0.0, 0.05)
  return model.eval()
