"""Transformer layers: attention chosen by platform, and layers written for XLA:CPU speed.

`multi_head_attention` is the attention without maps of every ViT block: on CPU (the platform the
program is compiled for, `vosjax.core.platform.target_platform`) the per-image kernels below,
traced inside `jax.named_scope("cpu_only/...")`; on accelerators `jax.nn.dot_product_attention`
(XLA's fused attention on TPU; cuDNN's where it applies on GPU, else XLA's). docs/tpu_kernels.md
compares it on compiled TPU programs with the plain einsum-softmax formulation and Pallas.

The CPU layers each replace a one-line formulation that XLA:CPU runs slowly (2-core CPU timings
in each docstring) and is checked against a NumPy/SciPy or PyTorch reference (`tests/test_vit.py`
for the attention, `tests/test_transformer_layers.py` for the rest):
  * attention without materialising a batch of [S, S] maps: `attend_in_query_chunks` (long
    sequences, forward) and `attend_per_image` (short sequences, custom backward);
  * `gelu_exact`: GELU through erf, as PyTorch computes it, instead of erfc;
  * `PatchEmbedding`: the strided patch convolution as one reshape and one GEMM.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vosjax.core import platform
from vosjax.core import shard_loops

# Queries per chunk of `attend_in_query_chunks`: a chunk's [heads, chunk, S] logits of one image (a
# few MiB at ViT-S/8 sizes) stay in cache between the two matmuls and the softmax.
QUERY_CHUNK = 256


def _attend_image(
  query: jax.Array, key: jax.Array, value: jax.Array, scale: float
) -> tuple[jax.Array, jax.Array]:
  """One image: query [heads, Q, d], key and value [heads, S, d] -> (output [heads, Q, d],
  float32 maps [heads, Q, S])."""
  logits = jnp.einsum("hqd,hkd->hqk", query, key) * scale
  attention = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.einsum("hqk,hkd->hqd", attention.astype(value.dtype), value), attention


def _heads_first(image_qkv: jax.Array) -> list[jax.Array]:
  """One image's packed [S, 3, heads, d] -> query, key, value, each [heads, S, d]."""
  return [image_qkv[:, index].transpose(1, 0, 2) for index in range(3)]


def attend_in_query_chunks(qkv: jax.Array, scale: float, chunk: int = QUERY_CHUNK) -> jax.Array:
  """softmax(q k^T * scale) v, one image and `chunk` queries at a time, without the maps.

  The same arithmetic per query as the full formulation (the maps are never materialised), so
  it matches it to rounding. On CPU at long sequences (ViT-S/8 at 192x384, 1153 tokens) the full
  [B, heads, S, S] logits make the matmuls and the softmax memory-bound, while a
  [heads, chunk, S] slice stays in cache (docs/performance.md, "ViT attention"). `lax.map` over
  the images and, inside, over the query chunks; the
  heads-first transposes happen per image, in cache, not over the whole batch.

  Args:
    qkv: [B, S, 3, heads, head_dim] queries, keys and values (the qkv projection's layout).
    scale: logit scale.
    chunk: at most this many queries per step.

  Returns:
    [B, S, heads * head_dim].
  """
  _, length, _, heads, head_dim = qkv.shape
  count = -(-length // chunk)
  chunk = -(-length // count)  # equal chunks, the last padded by fewer than `count` rows

  def attend_image(image_qkv):  # [S, 3, heads, d] -> [S, heads * d]
    _, keys, values = _heads_first(image_qkv)
    queries = jnp.pad(image_qkv[:, 0], ((0, count * chunk - length), (0, 0), (0, 0)))
    queries = queries.reshape(count, chunk, heads, head_dim).transpose(0, 2, 1, 3)
    mixed = jax.lax.map(
      lambda chunk_queries: _attend_image(chunk_queries, keys, values, scale)[0], queries
    )  # [count, heads, chunk, d]
    mixed = mixed.transpose(0, 2, 1, 3).reshape(count * chunk, heads * head_dim)
    return mixed[:length]

  return shard_loops.map_each(attend_image, qkv)


def _attend_images(qkv: jax.Array, scale: float) -> jax.Array:
  _, length, _, heads, head_dim = qkv.shape
  return shard_loops.map_each(
    lambda image: (
      _attend_image(*_heads_first(image), scale)[0]
      .transpose(1, 0, 2)
      .reshape(length, heads * head_dim)
    ),
    qkv,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def attend_per_image(qkv: jax.Array, scale: float) -> jax.Array:
  """softmax(q k^T * scale) v one image at a time, maps recomputed in the backward pass.

  For short sequences on CPU (SMTC's 257-token ViT-S/16): one image's [heads, S, S] maps stay in
  cache, where the batched products over [B, heads, S, S] ran memory-bound. The backward pass
  recomputes an image's maps instead of storing all of them, like flash attention (storing them
  gained next to nothing). It takes the packed qkv and transposes per image, in cache, and returns
  the gradient in the same packed layout (no pad and add of three slices), which is faster again
  (docs/performance.md, "SMTC's step").

  Args:
    qkv: [B, S, 3, heads, head_dim] queries, keys and values (the qkv projection's layout).
    scale: logit scale.

  Returns:
    [B, S, heads * head_dim].
  """
  return _attend_images(qkv, scale)


def _attend_per_image_forward(qkv, scale):
  return _attend_images(qkv, scale), qkv


def _attend_per_image_backward(scale, qkv, output_gradient):
  _, length, _, heads, head_dim = qkv.shape

  def image_gradient(inputs):  # [S, 3, heads, d], [S, heads * d] -> [S, 3, heads, d]
    image_qkv, d_output = inputs
    query, key, value = _heads_first(image_qkv)
    d_output = d_output.reshape(length, heads, head_dim).transpose(1, 0, 2)
    _, attention = _attend_image(query, key, value, scale)
    d_value = jnp.einsum("hqk,hqd->hkd", attention, d_output)
    d_attention = jnp.einsum("hqd,hkd->hqk", d_output, value)
    d_logits = attention * (d_attention - jnp.sum(d_attention * attention, -1, keepdims=True))
    d_query = jnp.einsum("hqk,hkd->hqd", d_logits, key) * scale
    d_key = jnp.einsum("hqk,hqd->hkd", d_logits, query) * scale
    return jnp.stack([d_query, d_key, d_value]).transpose(2, 0, 1, 3).astype(qkv.dtype)

  return (shard_loops.map_each(image_gradient, (qkv, output_gradient)),)


attend_per_image.defvjp(_attend_per_image_forward, _attend_per_image_backward)


def gelu_exact(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2))), any shape.

  PyTorch's `nn.GELU()` formula. `jax.nn.gelu(approximate=False)` computes it through erfc,
  which XLA:CPU evaluates with two rational approximations and a select, more slowly than erf
  (docs/performance.md, "SMTC's step"). The two
  differ by at most one float32 ulp of the output's scale (below -5.5 erf rounds to -1, so the
  output is 0 where x * Phi(x) is below 1e-7 in magnitude, as in PyTorch).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(2**-0.5, x.dtype)))


class PatchEmbedding(nn.Module):
  """The ViT's strided patch convolution as one GEMM over flattened patches.

  Parameters as `nn.Conv(features, (p, p), strides=(p, p), padding="VALID")` names and
  initialises them (`kernel` [p, p, C, features] HWIO, `bias` [features]), so checkpoints and
  initial values are unchanged. XLA:CPU runs the strided convolution's forward and, more so, its
  kernel gradient (a dilated convolution) slower than the GEMM on the [B * h * w, p * p * C]
  patch matrix (docs/performance.md, "SMTC's step"). Pixels past the last full patch are ignored,
  as the convolution does.
  """

  features: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, C] -> patch embeddings [B, H // p, W // p, features]."""
    batch, height, width, channels = images.shape
    size = self.patch_size
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (size, size, channels, self.features)
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    rows, columns = height // size, width // size
    patches = images[:, : rows * size, : columns * size].astype(self.dtype)
    patches = patches.reshape(batch, rows, size, columns, size, channels).transpose(
      0, 1, 3, 2, 4, 5
    )
    patches = patches.reshape(batch, rows, columns, size * size * channels)
    embedded = patches @ kernel.reshape(size * size * channels, self.features).astype(self.dtype)
    return embedded + bias.astype(self.dtype)


# The attention of `multi_head_attention` on accelerators: "xla" (`jax.nn.dot_product_attention`)
# or "einsum" (logits, float32 softmax, values: the formulation that returns maps). A module
# setting so that the comparison in docs/tpu_kernels.md can compile both; "xla" is the default.
ACCELERATOR_ATTENTION = "xla"


def attention_with_maps(
  query: jax.Array, key: jax.Array, value: jax.Array, scale: float
) -> tuple[jax.Array, jax.Array]:
  """softmax(q k^T * scale) v with the maps, softmax in float32 (any platform).

  Args:
    query, key, value: `[B, S, heads, head_dim]`.
    scale: logit scale.

  Returns:
    (output `[B, S, heads, head_dim]` in value's dtype, maps `[B, heads, S, S]` float32).
  """
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
  maps = jax.nn.softmax(logits * scale, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", maps.astype(value.dtype), value), maps


def multi_head_attention(qkv: jax.Array, scale: float) -> jax.Array:
  """softmax(q k^T * scale) v without the maps, by the platform the program is compiled for.

  Args:
    qkv: `[B, S, 3, heads, head_dim]` queries, keys and values (the qkv projection's layout).
    scale: logit scale.

  Returns:
    `[B, S, heads * head_dim]` in qkv's dtype. The softmax runs in float32 on every path.
  """
  batch, length, _, heads, head_dim = qkv.shape
  if platform.on_cpu():
    # Past two chunks the images' maps would not fit in cache: query chunks; else one image at a
    # time with a recomputing backward.
    if length > 2 * QUERY_CHUNK:
      with platform.cpu_only("attention_in_query_chunks"):
        return attend_in_query_chunks(qkv, scale)
    with platform.cpu_only("attention_per_image"):
      return attend_per_image(qkv, scale)
  query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  if ACCELERATOR_ATTENTION == "xla":
    # [B, S, heads, d] is dot_product_attention's BTNH layout; its XLA implementation takes the
    # logits and the softmax in float32 for bfloat16 inputs.
    mixed = jax.nn.dot_product_attention(query, key, value, scale=scale)
  elif ACCELERATOR_ATTENTION == "einsum":
    mixed, _ = attention_with_maps(query, key, value, scale)
  else:
    raise ValueError(
      f"ACCELERATOR_ATTENTION must be 'xla' or 'einsum', got {ACCELERATOR_ATTENTION!r}"
    )
  return mixed.astype(qkv.dtype).reshape(batch, length, heads * head_dim)
