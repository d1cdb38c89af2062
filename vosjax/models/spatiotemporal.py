"""The spatio-temporal Transformer block of Betrayed by Attention (`src/model/attention.py::Block`).

One pre-LN Transformer block over the tokens of all frames of a clip. Training input per clip
(`src/model/model_cluster.py::AttEncoder.forward`): for every frame t the sequence
`[cls_t ; k_t(1..N)]` of the frozen DINO ViT's last-block CLS output token and last-block patch
keys, frames concatenated to T * (N + 1) tokens of C = 384 channels. There is no positional or
temporal embedding (the official `encoder_pos` lines are commented out).

    h, attn = Attention(LN1(x));  x = x + h;  x = x + MLP(LN2(x))

Attention: 8 heads of 48, scale 48 ** -0.5, qkv Linear without bias, proj Linear with bias, dropout
(p = 0.1) after proj. MLP: Linear(C, 4C), exact (erf) GELU, Dropout(0.1), Linear(4C, C),
Dropout(0.1). LayerNorm eps 1e-5 (PyTorch default).

Quirks kept from the official code:
  * The attention map passes through attention dropout (p = 0.4) BEFORE it is returned, so the maps
    the training losses see are dropout-perturbed (40 % of the entries zeroed, the rest scaled by 1
    / 0.6), and the same dropped map multiplies the values.
  * The returned head-averaged map drops the CLS rows and columns without renormalizing the rows.
  * The official constructor argument is named `path_drop`, but the block's drop-path lines are
    commented out: the 0.1 is plain dropout (proj and MLP), not stochastic depth. We follow the
    code.

Initialization follows PyTorch's `nn.Linear` default (weights and biases U(-1/sqrt(fan_in),
1/sqrt(fan_in))), since the official block applies no custom init; LayerNorm starts at (1, 0).

Parameter count for dim 384: 768 + 442,368 + 147,840 + 768 + 591,360 + 590,208 = 1,773,312.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vosjax.core import shard_loops
from vosjax.models import transformer_layers

# PyTorch nn.LayerNorm default epsilon (flax's default is 1e-6).
TORCH_LAYER_NORM_EPS = 1e-5


def torch_linear_kernel_init():
  """PyTorch `nn.Linear` weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  # kaiming_uniform(a=sqrt(5)) has bound sqrt(6 / ((1 + 5) fan_in)) = 1/sqrt(fan_in).
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int):
  """PyTorch `nn.Linear` bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(
  features: int,
  fan_in: int,
  use_bias: bool = True,
  name: str | None = None,
  dtype: Any = jnp.float32,
):
  """A flax Dense initialized like PyTorch's nn.Linear(fan_in, features), computing in `dtype`."""
  return nn.Dense(
    features,
    use_bias=use_bias,
    dtype=dtype,
    kernel_init=torch_linear_kernel_init(),
    bias_init=torch_linear_bias_init(fan_in),
    name=name,
  )


def _clip_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  dropout_key: jax.Array | None,
  dropout_rate: float,
) -> tuple[jax.Array, jax.Array]:
  """One clip's attention: query, key, value `[L, heads, d]` -> (mixed `[L, heads, d]` in value's
  dtype, maps `[heads, L, L]` float32 after attention dropout, as `nn.Dropout` draws it from
  `dropout_key`; no dropout when the key is None)."""
  scale = query.shape[-1] ** -0.5
  logits = jnp.einsum("qhd,khd->hqk", query, key, preferred_element_type=jnp.float32)
  maps = jax.nn.softmax(logits * scale, axis=-1)
  if dropout_key is not None:
    keep_prob = 1.0 - dropout_rate
    keep = jax.random.bernoulli(dropout_key, keep_prob, maps.shape)
    maps = jax.lax.select(keep, maps / keep_prob, jnp.zeros_like(maps))
  return jnp.einsum("hqk,khd->qhd", maps.astype(value.dtype), value), maps


class SpatioTemporalBlock(nn.Module):
  """Pre-LN Transformer block over all tokens of a clip, returning its attention map.

  Attributes:
    dim: token channels C (384 for ViT-S).
    num_heads: attention heads (official 8, head dim 48).
    mlp_ratio: hidden width of the MLP relative to `dim`.
    dropout_rate: dropout after the attention projection and inside the MLP (official 0.1).
    attention_dropout_rate: dropout on the attention map, which is also the returned map (official
      0.4).
    layer_norm_eps: LayerNorm epsilon (PyTorch default 1e-5).
    dtype: computation dtype (float32 or bfloat16); parameters, the softmax and the returned maps
      stay float32.
  """

  dim: int = 384
  num_heads: int = 8
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.4
  layer_norm_eps: float = TORCH_LAYER_NORM_EPS
  dtype: Any = jnp.float32

  def setup(self):
    if self.dim % self.num_heads:
      raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}.")
    hidden = int(self.dim * self.mlp_ratio)
    self.norm1 = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype)
    self.qkv = torch_dense(3 * self.dim, self.dim, use_bias=False, dtype=self.dtype)
    self.proj = torch_dense(self.dim, self.dim, dtype=self.dtype)
    self.norm2 = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype)
    self.fc1 = torch_dense(hidden, self.dim, dtype=self.dtype)
    self.fc2 = torch_dense(self.dim, hidden, dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  def _split_qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`[..., L, C]` (already normalized) -> q, k, v each `[..., L, heads, head_dim]`."""
    qkv = self.qkv(x).reshape(x.shape[:-1] + (3, self.num_heads, self.head_dim))
    return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]

  def _check_tokens(self, tokens: jax.Array) -> None:
    if tokens.ndim != 3 or tokens.shape[-1] != self.dim:
      raise ValueError(
        f"SpatioTemporalBlock expects tokens [B, L, {self.dim}], got {tokens.shape}."
      )

  def _dropout_keys(self, batch: int, deterministic: bool) -> jax.Array | None:
    """One attention-dropout key per clip (from the 'dropout' rng), or None without dropout."""
    if deterministic or self.attention_dropout_rate == 0.0:
      return None
    return jax.random.split(self.make_rng("dropout"), batch)

  def _rest_of_block(self, tokens: jax.Array, mixed: jax.Array, deterministic: bool) -> jax.Array:
    """tokens `[B, L, C]` + proj(mixed), then the MLP branch."""
    x = tokens + self.dropout(self.proj(mixed.reshape(tokens.shape)), deterministic=deterministic)
    hidden = transformer_layers.gelu_exact(self.fc1(self.norm2(x)))
    hidden = self.dropout(hidden, deterministic=deterministic)
    return x + self.dropout(self.fc2(hidden), deterministic=deterministic)

  def attend(self, tokens: jax.Array, deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """The block on a flat token sequence, with every head's map (for inspection and tests).

    Args:
      tokens: `[B, L, C]`.
      deterministic: False applies the dropouts (needs the 'dropout' rng).

    Returns:
      (output tokens `[B, L, C]`, per-head attention `[B, heads, L, L]` float32 after attention
      dropout). The same values as `__call__` with the same rngs.
    """
    self._check_tokens(tokens)
    q, k, v = self._split_qkv(self.norm1(tokens))
    dropout_keys = self._dropout_keys(tokens.shape[0], deterministic)
    rate = self.attention_dropout_rate
    if dropout_keys is None:
      mixed, maps = jax.vmap(lambda q, k, v: _clip_attention(q, k, v, None, rate))(q, k, v)
    else:
      mixed, maps = jax.vmap(lambda *a: _clip_attention(*a, rate))(q, k, v, dropout_keys)
    return self._rest_of_block(tokens.astype(self.dtype), mixed, deterministic), maps

  def __call__(
    self, cls_tokens: jax.Array, patch_keys: jax.Array, deterministic: bool = True
  ) -> tuple[jax.Array, jax.Array]:
    """Training forward pass on a clip.

    The attention runs one clip at a time (`lax.map`; under a `data` mesh each device loops over
    its own clips, `core.shard_loops`) under `jax.checkpoint`: only the clip's q,
    k, v are kept for the backward pass, which recomputes the `[heads, L, L]` maps of one clip at
    a time, and only their head mean `[L, L]` (what the losses read) leaves the loop. The stored
    per-head maps, their dropout masks and their gradients for the whole batch were most of the
    training step's memory (docs/tpu_kernels.md).

    Args:
      cls_tokens: `[B, T, C]` per-frame CLS output tokens of the backbone.
      patch_keys: `[B, T, N, C]` per-frame last-block patch keys of the backbone (N = h * w).
      deterministic: False applies the dropouts (needs the 'dropout' rng).

    Returns:
      tokens: `[B, T, N, C]` output patch tokens (CLS outputs removed), in the block's dtype.
      attention: `[B, T*N, T*N]` float32 head-averaged attention (after attention dropout) without
        the CLS rows and columns, rows (frame, token), not renormalized.
    """
    if patch_keys.ndim != 4 or cls_tokens.shape != patch_keys.shape[:2] + patch_keys.shape[3:]:
      raise ValueError(
        "SpatioTemporalBlock expects cls_tokens [B, T, C] and patch_keys "
        f"[B, T, N, C]; got {cls_tokens.shape} and {patch_keys.shape}."
      )
    batch, frames, num_tokens, channels = patch_keys.shape
    sequence = jnp.concatenate([cls_tokens[:, :, None], patch_keys], axis=2)
    sequence = sequence.reshape(batch, -1, channels)
    self._check_tokens(sequence)
    q, k, v = self._split_qkv(self.norm1(sequence))
    dropout_keys = self._dropout_keys(batch, deterministic)
    rate = self.attention_dropout_rate

    def clip(inputs):  # one clip -> (mixed [L, heads, d], head-mean map without CLS [TN, TN])
      mixed, maps = _clip_attention(*inputs, rate)
      mean = maps.mean(axis=0).reshape(frames, num_tokens + 1, frames, num_tokens + 1)
      return mixed, mean[:, 1:, :, 1:].reshape(frames * num_tokens, frames * num_tokens)

    if dropout_keys is None:
      mixed, attention = shard_loops.map_each(
        jax.checkpoint(lambda qkv: clip(qkv + (None,))), (q, k, v)
      )
    else:
      mixed, attention = shard_loops.map_each(jax.checkpoint(clip), (q, k, v, dropout_keys))
    out = self._rest_of_block(sequence.astype(self.dtype), mixed, deterministic)
    tokens = out.reshape(batch, frames, num_tokens + 1, channels)[:, :, 1:]
    return tokens, attention

  def query_key(self, patch_keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-frame queries and keys for inference (`eval_oneshot.py::mem_efficient_inference`).

    Args:
      patch_keys: `[..., N, C]` backbone patch keys (e.g. `[T, N, C]`), no CLS tokens.

    Returns:
      q, k: `[..., N, heads, head_dim]` each, `split(qkv(norm1(keys)))`; values are not computed.
    """
    if patch_keys.shape[-1] != self.dim:
      raise ValueError(
        f"query_key expects patch keys [..., N, {self.dim}], got {patch_keys.shape}."
      )
    q, k, _ = self._split_qkv(self.norm1(patch_keys))
    return q, k
