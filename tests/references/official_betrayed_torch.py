"""Betrayed by Attention's official model and inference, transcribed in stock PyTorch for the tests.

Written from the architecture of shvdiwnkozbw/SSL-UVOS (docs/betrayed.md): `AttEncoder`
(`src/model/model_cluster.py`) holding the DINO ViT as `encoder` (`src/model/vision_transformer.py`:
patch conv, CLS token, position embedding interpolated bicubically with DINO's +0.1 offset, pre-LN
blocks with qkv bias and LayerNorm eps 1e-6, the forward returning the last block's keys) and one
spatio-temporal block as `temporal_transformer.0` (`src/model/attention.py::Block`: LayerNorm eps
1e-5, qkv without bias). The module names are the official ones, so `state_dict()` has the official
layout. `official_query_key` follows `src/eval_oneshot.py::mem_efficient_inference` up to the
clustering, which `vosjax.benchmarks.reference_clustering` transcribes.
"""

import math

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
  """softmax(q k^T * scale) v; returns (output, keys [B, heads, L, head_dim])."""

  def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
    self.proj = nn.Linear(dim, dim)

  def split(self, x):
    batch, length, dim = x.shape
    qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
    return qkv.permute(2, 0, 3, 1, 4)  # 3, B, heads, L, head_dim

  def forward(self, x):
    q, k, v = self.split(x)
    attention = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
    return self.proj((attention @ v).transpose(1, 2).reshape(x.shape)), k


class Block(nn.Module):
  """Pre-LN transformer block (DINO's, and the spatio-temporal one with other settings)."""

  def __init__(self, dim: int, num_heads: int, qkv_bias: bool, eps: float, mlp_ratio: float = 4.0):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = Attention(dim, num_heads, qkv_bias)
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x):
    y, k = self.attn(self.norm1(x))
    x = x + y
    return x + self.mlp(self.norm2(x)), k


class PatchEmbed(nn.Module):
  def __init__(self, patch: int, dim: int):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class VisionTransformer(nn.Module):
  """DINO's ViT as SSL-UVOS modifies it: `forward` returns the last block's patch keys."""

  def __init__(
    self, patch: int = 8, dim: int = 384, depth: int = 12, num_heads: int = 6, grid: int = 28
  ):
    super().__init__()
    self.patch = patch
    self.patch_embed = PatchEmbed(patch, dim)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
    self.blocks = nn.ModuleList([Block(dim, num_heads, True, 1e-6) for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-6)  # in the state dict; the keys do not use it

  def position_embedding(self, height: int, width: int):
    num_patches = self.pos_embed.shape[1] - 1
    rows, cols = height // self.patch, width // self.patch
    if rows * cols == num_patches and height == width:
      return self.pos_embed
    side = int(math.sqrt(num_patches))
    grid = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(
      grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic"
    )
    assert grid.shape[-2:] == (rows, cols)
    return torch.cat(
      [self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1
    )

  def forward(self, images):
    """images [B, 3, H, W] (normalized) -> last-block keys [B, C, h, w] (heads concatenated)."""
    batch, _, height, width = images.shape
    x = self.patch_embed.proj(images)
    rows, cols = x.shape[-2:]
    x = torch.cat([self.cls_token.expand(batch, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    x = x + self.position_embedding(height, width)
    for block in self.blocks:
      x, k = block(x)
    k = k.permute(0, 2, 1, 3)[:, 1:].reshape(batch, rows, cols, -1)
    return k.permute(0, 3, 1, 2)


class AttEncoder(nn.Module):
  """The official model: DINO ViT `encoder` and one spatio-temporal block (8 heads)."""

  def __init__(self, vit: VisionTransformer, dim: int, num_heads: int = 8):
    super().__init__()
    self.encoder = vit
    self.temporal_transformer = nn.ModuleList([Block(dim, num_heads, False, 1e-5)])


@torch.no_grad()
def randomize_parameters_(model: nn.Module, skip_prefixes: tuple[str, ...] = ()) -> None:
  """Random weights at unit scale, in place, in `named_parameters` order (the tests' official-layout
  checkpoints): linear/conv N(0, 1/fan_in), norms 1 + N(0, 0.1), biases and tokens N(0, 0.1); names
  starting with one of `skip_prefixes` keep their initialisation."""
  for name, param in model.named_parameters():
    if name.startswith(skip_prefixes):
      continue
    if "norm" in name and name.endswith("weight"):
      param.copy_(1 + 0.1 * torch.randn_like(param))
    elif name.endswith("bias") or name.endswith(("cls_token", "pos_embed")):
      param.copy_(0.1 * torch.randn_like(param))
    else:
      param.copy_(torch.randn_like(param) / math.sqrt(math.prod(param.shape[1:])))


@torch.no_grad()
def official_query_key(model: AttEncoder, frames: torch.Tensor):
  """`mem_efficient_inference` up to the clustering: frames [T, 3, H, W] (normalized) ->
  (backbone keys [T, C, h, w], q [T, heads, h*w, head_dim], k [T, heads, h*w, head_dim])."""
  keys = torch.cat([model.encoder(frames[t : t + 1]) for t in range(len(frames))])
  block = model.temporal_transformer[0]
  tokens = block.norm1(keys.flatten(2).transpose(1, 2))  # T, hw, C
  q, k, _ = block.attn.split(tokens)  # each T, heads, hw, head_dim
  return keys, q, k


KINETICS_MEAN = (0.43216, 0.394666, 0.37645)  # src/eval_oneshot.py::eval
KINETICS_STD = (0.22803, 0.22145, 0.216989)


def read_rgb(path, resolution):
  """`src/data.py::readRGB`: cv2.imread, BGR -> RGB, / 255 (float64), cv2 bilinear resize to
  (H, W) -> float32 [3, H, W] as the DataLoader hands it over."""
  import cv2  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) / 255
  rgb = cv2.resize(rgb, (resolution[1], resolution[0]), interpolation=cv2.INTER_LINEAR)
  return np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32)


@torch.no_grad()
def official_davis_masks(model: AttEncoder, frame_folder, resolution, cluster, size):
  """The official DAVIS pipeline of one sequence, as the evaluator scores it.

  `src/data.py` (test split): frames 0 .. tot-2 (the last one dropped), `read_rgb`; `eval`:
  Kinetics normalisation; `mem_efficient_inference`: keys, q, k, then `cluster(q, k)` (the
  official clustering: labels [T, N]) -> one-hot masks; `davis2017/results.py::load_attn`:
  `F.interpolate` (nearest, the default) of each frame's masks [K, 1, h, w] to the annotation
  `size`, `> 0.3`, the last mask appended once more for the dropped frame.

  Returns:
    bool [K, tot, H, W] (K clusters in the official order).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  tot = len(list(frame_folder.glob("*")))
  paths = [frame_folder / f"{i:05d}.jpg" for i in range(tot - 1)]
  frames = torch.from_numpy(np.stack([read_rgb(p, resolution) for p in paths]))
  mean = torch.tensor(KINETICS_MEAN)[:, None, None]
  std = torch.tensor(KINETICS_STD)[:, None, None]
  keys, q, k = official_query_key(model, (frames - mean) / std)
  labels = cluster(q.permute(0, 2, 1, 3).numpy(), k.permute(0, 2, 1, 3).numpy())
  grid = keys.shape[-2:]
  num_clusters = int(labels.max()) + 1
  one_hot = torch.from_numpy(
    labels.reshape(len(paths), 1, *grid) == np.arange(num_clusters)[:, None, None]
  )
  results = []
  for t in range(len(paths)):
    mask = F.interpolate(one_hot[t][:, None].float(), size)[:, 0]  # [K, H, W]
    results.append(mask > 0.3)
  results.append(results[-1])
  return torch.stack(results, dim=1).numpy()
