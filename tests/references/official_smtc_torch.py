"""SMTC's official model and its multi-object inference, transcribed in stock PyTorch for the tests.

Written from shvdiwnkozbw/SMTC (docs/smtc.md) with the official module names, so
`state_dict()` has the layout of `src/model/model_twostage.py::SlotAttentionAutoEncoder`:

  encoder         DINO `vit_small(16)` (`src/model/vision_transformer.py`; its forward returns the
  last
                  block's keys with heads concatenated, as SSL-UVOS's does, so the ViT of
                  tests/references/official_betrayed_torch.py is reused: same names, LayerNorm
                  eps 1e-6, qkv bias, DINO's bicubic position-embedding rule with the +0.1 offset).
  transport_proj  Conv1d(h'w', D, kernel 1) over the raw dot products of each frame's keys with the
                  previous frame's (cyclic `torch.roll(shifts=1)` over time) keys bilinearly resized
                  to `end_size` (official resolution (256, 256) // 16, whatever the input size).
  slot_attention  two stages sharing LayerNorms (eps 1e-5), q/k/v Linear with bias and the MLP
                  D-D-D, no GRU; stage 1 from `slots_mu` with softmax over slots; stage 2 from
                  N(slots_mu, exp(slots_sigma)^2) with softmax over the instances of a semantic and
                  the hard mask `semantic logits > 0.3`; straight-through at iteration iters - 2.
  mlp_slot        Linear(D, 2D) - ReLU - Linear(2D, D) (the training branch's `warp_instance`).

The one change to the official forward: `torch.normal(mu, sigma)` becomes `mu + sigma * noise` with
the standard-normal `noise` an input (the same in distribution, `torch.normal` draws exactly that),
so that vosjax gets the same sample. The widths are arguments (official 384, 16 slots, 4 instances).
"""

import einops
import torch
from torch import nn
import torch.nn.functional as F

from references.official_betrayed_torch import VisionTransformer


class SlotAttention(nn.Module):
  """The official two-stage `SlotAttention`; `forward` returns slots and last logits of each
  stage."""

  def __init__(self, num_slots: int, dim: int, num_instances: int, iters: int, eps: float = 1e-8):
    super().__init__()
    self.num_slots, self.num_instances, self.iters, self.eps = num_slots, num_instances, iters, eps
    self.scale = dim**-0.5
    self.norm_input = nn.LayerNorm(dim)
    self.norm_slots = nn.LayerNorm(dim)
    self.norm_pre_ff = nn.LayerNorm(dim)
    self.slots_mu = nn.Parameter(torch.randn(1, num_slots, 1, dim))
    self.slots_sigma = nn.Parameter(torch.zeros(1, num_slots, 1, dim))
    nn.init.xavier_uniform_(self.slots_sigma)
    self.project_q = nn.Linear(dim, dim)
    self.project_k = nn.Linear(dim, dim)
    self.project_v = nn.Linear(dim, dim)
    self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

  def update(self, slots, v, attention, init, t):
    """Residual update, MLP and the straight-through of iteration iters - 2 (both stages)."""
    slots = slots + torch.einsum("bjd,b...j->b...d", v, attention)
    slots = slots + self.mlp(self.norm_pre_ff(slots))
    if t == self.iters - 2:
      slots = slots.detach() - init.detach() + init
    return slots

  def forward(self, inputs, noise):
    """inputs [B, N, D], noise [B, S, P, D] standard normal -> (semantic slots [B, S, D], semantic
    logits [B, S, N], instance slots [B, S, P, D], instance logits [B, S, P, N])."""
    inputs = self.norm_input(inputs)
    k, v = self.project_k(inputs), self.project_v(inputs)
    batch = inputs.shape[0]
    semantic_init = self.slots_mu.expand(batch, -1, -1, -1).squeeze(2)
    mu = self.slots_mu.expand(batch, -1, self.num_instances, -1)
    sigma = self.slots_sigma.exp().expand(batch, -1, self.num_instances, -1)
    instance_init = (mu + sigma * noise).detach()  # torch.normal: no gradient to mu, sigma

    slots = semantic_init
    for t in range(self.iters):
      q = self.project_q(self.norm_slots(slots))
      semantic_logits = torch.einsum("bid,bjd->bij", q, k) * self.scale
      attention = semantic_logits.softmax(dim=1) + self.eps
      attention = attention / attention.sum(dim=-1, keepdim=True)
      slots = self.update(slots, v, attention, semantic_init, t)
    semantic_slots = slots

    mask = (semantic_logits > 0.3).float().unsqueeze(2)  # the raw logits, not their softmax
    slots = instance_init
    for t in range(self.iters):
      q = self.project_q(self.norm_slots(slots))
      instance_logits = torch.einsum("bkid,bjd->bkij", q, k) * self.scale
      attention = (instance_logits.softmax(dim=2) + self.eps) * mask
      attention = attention / (attention.sum(dim=-1, keepdim=True) + 1e-8)
      slots = self.update(slots, v, attention, instance_init, t)
    return semantic_slots, semantic_logits, slots, instance_logits


class SlotAttentionAutoEncoder(nn.Module):
  """The official model (`model_twostage.py`); the ViT's shape and D are arguments."""

  def __init__(
    self, vit: dict, num_slots: int = 16, num_instances: int = 4, iters: int = 5, end_size=(16, 16)
  ):
    super().__init__()
    dim = vit["embed_dim"]
    self.dim, self.end_size = dim, tuple(end_size)
    self.encoder = VisionTransformer(16, dim, vit["depth"], vit["num_heads"], grid=14)
    self.transport_proj = nn.Conv1d(self.end_size[0] * self.end_size[1], dim, kernel_size=1)
    self.mlp_slot = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
    self.slot_attention = SlotAttention(num_slots, dim, num_instances, iters)

  def forward(self, image, noise):
    """image [B, T, 3, H, W] (normalised), noise [B * T, S, P, D] -> dict of the official inference
    outputs (`semantic_mask` softmax over S, `similarity`, `instance_mask`) and the raw ones."""
    batch, time = image.shape[:2]
    keys = self.encoder(einops.rearrange(image, "b t c h w -> (b t) c h w"))  # [BT, D, h, w]
    height, width = keys.shape[-2:]
    resized = F.interpolate(keys, self.end_size, mode="bilinear")  # align_corners=False
    keys = einops.rearrange(keys, "(b t) c h w -> b t c (h w)", t=time)
    resized = einops.rearrange(resized, "(b t) c h w -> b t c (h w)", t=time)
    previous = torch.roll(resized, shifts=1, dims=1).reshape(batch * time, self.dim, -1)
    correlation = torch.einsum("bcn,bcm->bnm", previous, keys.reshape(batch * time, self.dim, -1))
    fused = keys + self.transport_proj(correlation).view(batch, time, self.dim, -1)
    fused = einops.rearrange(fused, "b t c n -> (b t) n c")

    semantic_slots, semantic_logits, instance_slots, instance_logits = self.slot_attention(
      fused, noise
    )
    per_clip = lambda x: x.reshape((batch, time) + x.shape[1:])
    semantic_slots, semantic_logits = per_clip(semantic_slots), per_clip(semantic_logits)
    instance_slots, instance_logits = per_clip(instance_slots), per_clip(instance_logits)
    similarity = torch.einsum(
      "btsc,btspc->btsp", F.normalize(semantic_slots, dim=-1), F.normalize(instance_slots, dim=-1)
    )
    semantic_mask = F.softmax(semantic_logits, dim=-2)
    instance_mask = semantic_mask.unsqueeze(-2) * F.softmax(instance_logits, dim=-2)
    return {
      "semantic_slots": semantic_slots,
      "semantic_logits": semantic_logits,
      "instance_slots": instance_slots,
      "instance_logits": instance_logits,
      "warp_instance": F.normalize(self.mlp_slot(instance_slots), dim=-1),
      "semantic_mask": semantic_mask,
      "similarity": similarity,
      "instance_mask": instance_mask,
      "grid": (height, width),
    }


def candidate_masks(similarity, instance_mask, grid, threshold: float = 0.5):
  """`eval_multi.py::inference` for one clip: similarity [T, S, P], instance_mask [T, S, P, h*w] ->
  per frame, the instance masks [n_t, h, w] whose similarity is >= 0.5 (in (s, p) order)."""
  scores = einops.rearrange(similarity, "t k p -> t (k p)")
  masks = einops.rearrange(instance_mask, "t k p (h w) -> t (k p) h w", h=grid[0])
  return [masks[t][scores[t] >= threshold] for t in range(len(masks))]


def official_evaluator_masks(candidates, size, threshold: float = 0.3):
  """`davis2017-evaluation/davis2017/results.py::load_davis` (SMTC): per frame, the candidates
  [n_t, h, w] of `eval_multi.py` upsampled with `F.interpolate` (nearest, the default) to `size`,
  each min-max normalised over its pixels and thresholded at 0.3 -> bool [n_t, H, W]."""
  results = []
  for masks in candidates:
    mask = F.interpolate(masks[:, None].float(), size)[:, 0]
    flat = mask.reshape(len(mask), -1)
    low = torch.min(flat, dim=1, keepdim=True)[0]
    high = torch.max(flat, dim=1, keepdim=True)[0]
    results.append((((flat - low) / (high - low)).reshape(mask.shape) > threshold).numpy())
  return results
