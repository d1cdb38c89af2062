"""Motion Grouping's official model, transcribed in stock PyTorch for the tests.

Written from the architecture of charigyang/motiongrouping `src/model.py::SlotAttentionAutoEncoder`
(docs/motion_grouping.md, "Architecture") with its module names, so `state_dict()` has the
official layout:
`encoder_cnn` (per width: Conv5x5, InstanceNorm2d(affine), ReLU, twice; MaxPool2d(2, ceil_mode)
between widths), `encoder_pos.proj` and `decoder_pos.proj` (Linear(4, D) of the [y, x, 1-y, 1-x]
grid, the grid a plain attribute), `layer_norm`, `mlp`, `slot_attention` (`norm_input`,
`norm_slots`, `norm_pre_ff`, `slots_embedding`, `project_q/k/v` with bias, `gru`, `mlp`; softmax
over slots + 1e-8, weighted mean) and `decoder_cnn` (3 x ConvTranspose2d(5, 2, 2, 1) + InstanceNorm
+ ReLU, Conv5x5 + InstanceNorm + ReLU, Conv5x5 -> C + 1). The widths are arguments (official:
64-128-256, decoder 64).
"""

import numpy as np
import torch
from torch import nn


def build_grid(height: int, width: int) -> torch.Tensor:
  ys, xs = np.meshgrid(np.linspace(0.0, 1.0, height), np.linspace(0.0, 1.0, width), indexing="ij")
  grid = np.stack([ys, xs], axis=-1)[None].astype(np.float32)
  return torch.from_numpy(np.concatenate([grid, 1.0 - grid], axis=-1))  # [1, H, W, 4]


class SoftPositionEmbed(nn.Module):
  def __init__(self, dim: int, resolution):
    super().__init__()
    self.proj = nn.Linear(4, dim)
    self.grid = build_grid(*resolution)  # an attribute, not a buffer: not in the state dict

  def forward(self, x):
    return x + self.proj(self.grid)


class SlotAttention(nn.Module):
  def __init__(self, num_slots: int, dim: int, iters: int, eps: float = 1e-8):
    super().__init__()
    self.num_slots, self.iters, self.eps, self.scale = num_slots, iters, eps, dim**-0.5
    self.norm_input = nn.LayerNorm(dim)
    self.norm_slots = nn.LayerNorm(dim)
    self.norm_pre_ff = nn.LayerNorm(dim)
    self.slots_embedding = nn.Embedding(num_slots, dim)
    self.project_q = nn.Linear(dim, dim)
    self.project_k = nn.Linear(dim, dim)
    self.project_v = nn.Linear(dim, dim)
    self.gru = nn.GRUCell(dim, dim)
    self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

  def forward(self, inputs):
    inputs = self.norm_input(inputs)
    k, v = self.project_k(inputs), self.project_v(inputs)
    batch, _, dim = inputs.shape
    slots = self.slots_embedding(torch.arange(self.num_slots).expand(batch, self.num_slots))
    for _ in range(self.iters):
      previous = slots
      q = self.project_q(self.norm_slots(slots))
      attention = (torch.einsum("bid,bjd->bij", q, k) * self.scale).softmax(dim=1) + self.eps
      attention = attention / attention.sum(dim=-1, keepdim=True)
      updates = torch.einsum("bjd,bij->bid", v, attention)
      slots = self.gru(updates.reshape(-1, dim), previous.reshape(-1, dim)).reshape(batch, -1, dim)
      slots = slots + self.mlp(self.norm_pre_ff(slots))
    return slots


class SlotAttentionAutoEncoder(nn.Module):
  def __init__(
    self,
    resolution,
    num_slots: int = 2,
    channels: int = 3,
    iters: int = 5,
    widths=(64, 128, 256),
    decoder_width: int = 64,
  ):
    super().__init__()
    self.num_slots, self.channels = num_slots, channels
    layers, in_channels = [], channels
    for stage, width in enumerate(widths):
      if stage:
        layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
      for conv_in in (in_channels, width):
        layers += [
          nn.Conv2d(conv_in, width, 5, padding=2),
          nn.InstanceNorm2d(width, affine=True),
          nn.ReLU(),
        ]
      in_channels = width
    self.encoder_cnn = nn.Sequential(*layers)
    dim = widths[-1]
    down = 2 ** (len(widths) - 1)
    self.encoder_pos = SoftPositionEmbed(dim, (resolution[0] // down, resolution[1] // down))
    self.decoder_size = (resolution[0] // 8, resolution[1] // 8)
    self.decoder_pos = SoftPositionEmbed(dim, self.decoder_size)
    self.layer_norm = nn.LayerNorm(dim)
    self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
    self.slot_attention = SlotAttention(num_slots, dim, iters)
    layers, in_channels = [], dim
    for _ in range(3):
      layers += [
        nn.ConvTranspose2d(in_channels, decoder_width, 5, stride=2, padding=2, output_padding=1),
        nn.InstanceNorm2d(decoder_width, affine=True),
        nn.ReLU(),
      ]
      in_channels = decoder_width
    layers += [
      nn.Conv2d(decoder_width, decoder_width, 5, padding=2),
      nn.InstanceNorm2d(decoder_width, affine=True),
      nn.ReLU(),
      nn.Conv2d(decoder_width, channels + 1, 5, padding=2),
    ]
    self.decoder_cnn = nn.Sequential(*layers)

  def forward(self, image):
    """image [B, C, H, W] -> (recon [B, C, H, W], recons [B, K, C, H, W], masks [B, K, 1, H, W])."""
    batch = image.shape[0]
    x = self.encoder_pos(self.encoder_cnn(image).permute(0, 2, 3, 1))
    x = self.mlp(self.layer_norm(x.reshape(batch, -1, x.shape[-1])))
    slots = self.slot_attention(x)
    x = slots.reshape(-1, 1, 1, slots.shape[-1]).expand(-1, *self.decoder_size, -1)
    x = self.decoder_cnn(self.decoder_pos(x).permute(0, 3, 1, 2))
    x = x.reshape(batch, self.num_slots, self.channels + 1, *x.shape[-2:])
    recons, masks = x[:, :, : self.channels], x[:, :, self.channels :].softmax(dim=1)
    return (recons * masks).sum(dim=1), recons, masks


def official_frame_mask(masks: torch.Tensor, gt: torch.Tensor):
  """`src/utils.py::ensemble_hungarian_iou` (not MoCA) of one frame: masks [t, s, 1, h, w] (the
  slot masks of the frame's t flows), gt [1, 1, H, W] (imread / 255) -> (mean mask [1, H, W], its
  IoU at 0.5): each flow's slots upsampled with `F.interpolate` (nearest) to the annotation, the
  slot with the highest IoU against the ground truth taken (an oracle), the chosen masks averaged.
  """
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  def iou(masks, gt, thres=0.5):
    masks = (masks > thres).float()
    intersect = torch.tensordot(masks, gt, dims=([-2, -1], [0, 1]))
    union = masks.sum(dim=[-2, -1]) + gt.sum(dim=[-2, -1]) - intersect
    return intersect / (union + 1e-12)

  _, _, h, w = gt.size()
  gt = gt[0, 0, :, :]
  masks = F.interpolate(masks, size=(1, h, w))  # t s 1 h w
  mask_iou = iou(masks[:, :, 0], gt, 0.5)  # t s
  _, slot_max = mask_iou.max(dim=1)
  masks = masks[torch.arange(masks.size(0)), slot_max]  # t 1 h w
  mean_mask = masks.mean(0)
  return mean_mask, iou(mean_mask, gt, 0.5)
