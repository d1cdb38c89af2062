"""Transformer layers written for XLA:CPU speed, with the originals' arithmetic.

Each replaces a one-line formulation that XLA:CPU runs slowly (2-core CPU timings in each
docstring) and is checked against a NumPy/SciPy reference in `tests/test_vit.py`:
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

# Queries per chunk of `attend_in_query_chunks`: a chunk's [heads, chunk, S] logits of one image (a
# few MiB at ViT-S/8 sizes) stay in cache between the two matmuls and the softmax.
QUERY_CHUNK = 256


def _attend_image(query: jax.Array, key: jax.Array, value: jax.Array, scale: float
                  ) -> tuple[jax.Array, jax.Array]:
  """One image: query [heads, Q, d], key and value [heads, S, d] -> (output [heads, Q, d],
  float32 maps [heads, Q, S])."""
  logits = jnp.einsum("hqd,hkd->hqk", query, key) * scale
  attention = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.einsum("hqk,hkd->hqd", attention.astype(value.dtype), value), attention


def attend_in_query_chunks(query: jax.Array, key: jax.Array, value: jax.Array, scale: float,
                           chunk: int = QUERY_CHUNK) -> jax.Array:
  """softmax(q k^T * scale) v, one image and `chunk` queries at a time, without the maps.

  The same arithmetic per query as the full formulation (the maps are never materialised), so
  it matches it to rounding. On a 2-core CPU at ViT-S/8, 192x384 (1153 tokens) one block's
  attention for two frames takes 53 ms instead of 87 ms: the full [B, heads, S, S] logits
  (64 MiB) make the matmuls and the softmax memory-bound, a [heads, chunk, S] slice (7 MiB)
  stays in cache. `lax.map` over the images and, inside, over the query chunks.

  Args:
    query, key, value: [B, S, heads, head_dim].
    scale: logit scale.
    chunk: at most this many queries per step.

  Returns:
    [B, S, heads, head_dim].
  """
  batch, length, heads, head_dim = query.shape
  count = -(-length // chunk)
  chunk = -(-length // count)  # equal chunks, the last padded by fewer than `count` rows
  query = jnp.pad(query, ((0, 0), (0, count * chunk - length), (0, 0), (0, 0)))
  query = query.reshape(batch, count, chunk, heads, head_dim).transpose(0, 1, 3, 2, 4)
  key, value = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)  # [B, heads, S, d]

  def attend_image(inputs):
    queries, keys, values = inputs  # [count, heads, chunk, d], [heads, S, d], [heads, S, d]
    return jax.lax.map(lambda chunk_queries: _attend_image(chunk_queries, keys, values, scale)[0],
                       queries)  # each chunk [heads, chunk, d]

  mixed = jax.lax.map(attend_image, (query, key, value))  # [B, count, heads, chunk, d]
  mixed = mixed.transpose(0, 1, 3, 2, 4).reshape(batch, count * chunk, heads, head_dim)
  return mixed[:, :length]


def _attend_images(query: jax.Array, key: jax.Array, value: jax.Array, scale: float) -> jax.Array:
  heads_first = [x.transpose(0, 2, 1, 3) for x in (query, key, value)]
  mixed = jax.lax.map(lambda image: _attend_image(*image, scale)[0], tuple(heads_first))
  return mixed.transpose(0, 2, 1, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def attend_per_image(query: jax.Array, key: jax.Array, value: jax.Array, scale: float
                     ) -> jax.Array:
  """softmax(q k^T * scale) v one image at a time, maps recomputed in the backward pass.

  For short sequences on CPU (SMTC's 257-token ViT-S/16): one image's [heads, S, S] maps stay in
  cache, where the batched products over [B, heads, S, S] ran memory-bound (8 images: forward
  44 -> 18 ms, forward + backward 56 -> 32 ms on the 2-core CPU). The backward pass recomputes an
  image's maps instead of storing all of them, like flash attention.

  Args:
    query, key, value: [B, S, heads, head_dim].
    scale: logit scale.

  Returns:
    [B, S, heads, head_dim].
  """
  return _attend_images(query, key, value, scale)


def _attend_per_image_forward(query, key, value, scale):
  return _attend_images(query, key, value, scale), (query, key, value)


def _attend_per_image_backward(scale, residuals, output_gradient):
  def image_gradients(image):
    query, key, value, d_output = image  # [heads, S, d] each
    _, attention = _attend_image(query, key, value, scale)
    d_value = jnp.einsum("hqk,hqd->hkd", attention, d_output)
    d_attention = jnp.einsum("hqd,hkd->hqk", d_output, value)
    d_logits = attention * (d_attention - jnp.sum(d_attention * attention, -1, keepdims=True))
    return (jnp.einsum("hqk,hkd->hqd", d_logits, key) * scale,
            jnp.einsum("hqk,hqd->hkd", d_logits, query) * scale, d_value)

  heads_first = [x.transpose(0, 2, 1, 3) for x in (*residuals, output_gradient)]
  gradients = jax.lax.map(image_gradients, tuple(heads_first))
  return tuple(g.transpose(0, 2, 1, 3).astype(r.dtype) for g, r in zip(gradients, residuals))


attend_per_image.defvjp(_attend_per_image_forward, _attend_per_image_backward)


def gelu_exact(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2))), any shape.

  PyTorch's `nn.GELU()` formula. `jax.nn.gelu(approximate=False)` computes it through erfc,
  which XLA:CPU evaluates with two rational approximations and a select: on [8, 257, 1536] the
  forward takes 3.7 ms against 1.8 ms through erf (forward + backward 4.9 vs 3.4 ms). The two
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
  patch matrix: ViT-S/16 on 8 images at 256x256, forward 13.1 -> 11.3 ms and forward + kernel
  gradient 30.6 -> 20.4 ms. Pixels past the last full patch are ignored, as the convolution does.
  """
  features: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, C] -> patch embeddings [B, H // p, W // p, features]."""
    batch, height, width, channels = images.shape
    size = self.patch_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (size, size, channels, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    rows, columns = height // size, width // size
    patches = images[:, :rows * size, :columns * size].astype(self.dtype)
    patches = patches.reshape(batch, rows, size, columns, size, channels).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(batch, rows, columns, size * size * channels)
    embedded = patches @ kernel.reshape(size * size * channels, self.features).astype(self.dtype)
    return embedded + bias.astype(self.dtype)
