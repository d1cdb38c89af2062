"""Stride-1 2-D convolution whose kernel gradient is a cache-blocked im2col product.

XLA:CPU differentiates a convolution with respect to its kernel as another convolution whose
window is the whole image (`[H, W]`), and its Eigen implementation of that is slow: for Motion
Grouping's 5x5, 64 -> 64 channel layer at 128x224 with 32 images the kernel gradient took 13.8 s
against 1.6 s for the forward pass (2-core AVX2 CPU). `conv2d` keeps XLA's forward and input
gradient and computes the kernel gradient as

  dW[(ky, kx, c), o] = sum_n patches[n, (ky, kx, c)] * g[n, o],

where n runs over every (batch, row, column) position of the zero-padded input flattened into one
axis and `patches[n]` gathers the `kh * kw` taps at flat offsets `ky * W_padded + kx`. The
positions are taken `block` at a time in a `lax.scan`, so a block's patches (`[block, kh*kw*C]`,
a few MiB) stay in cache and each block is one GEMM: 2.6 s for the layer above. (Where the
output has fewer channels than the input, the patches are taken from the output gradient instead.)
Output gradients on the padding border are zero, so the taps that wrap into the next row or image
add nothing. The values equal XLA's kernel gradient up to float summation order (relative 1e-6).
The input gradient is XLA's convolution of the output gradient with the flipped kernel.

On accelerators the library convolutions are fast for both gradients, so `conv2d` uses the plain
XLA convolution everywhere but on CPU (`jax.default_backend()` when the function is traced).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# Floats in one block of patches (4 MiB): small enough to stay in a CPU core's cache share.
_PATCH_FLOATS_PER_BLOCK = 1 << 20


def _conv_valid(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DIMENSIONS)


def kernel_gradient(
  x: jnp.ndarray,
  output_gradient: jnp.ndarray,
  kernel_shape: Sequence[int],
  block: int | None = None,
) -> jnp.ndarray:
  """Gradient of a stride-1 'VALID' convolution with respect to its kernel, blocked im2col.

  Args:
    x: `[B, H, W, C]` input (already padded).
    output_gradient: `[B, H - kh + 1, W - kw + 1, O]`.
    kernel_shape: `(kh, kw, C, O)`.
    block: Flattened positions per GEMM; default: as many as keep a block's patches ~4 MiB.

  Returns:
    `[kh, kw, C, O]` float32.
  """
  kh, kw, channels, features = kernel_shape
  batch, height, width, _ = x.shape
  out_h, out_w = height - kh + 1, width - kw + 1
  if output_gradient.shape != (batch, out_h, out_w, features):
    raise ValueError(
      f"kernel_gradient: output gradient {output_gradient.shape} does not match "
      f"input {x.shape} and kernel {tuple(kernel_shape)}."
    )
  taps = kh * kw
  # Patches from the side with fewer channels: the GEMM is [O, block] x [block, taps*C] (input
  # patches) or [C, block] x [block, taps*O] (output-gradient patches, shifted the other way),
  # which keeps a layer with few output channels (Motion Grouping's 64 -> 4) from a thin GEMM.
  patch_output = features < channels
  patch_channels = features if patch_output else channels
  if block is None:
    block = int(np.clip(_PATCH_FLOATS_PER_BLOCK // (taps * patch_channels), 128, 4096))
  positions = batch * height * width
  block = min(block, positions)
  blocks = -(-positions // block)
  offsets = [ky * width + kx for ky in range(kh) for kx in range(kw)]
  halo = offsets[-1]
  padded_positions = blocks * block
  flat_x = x.reshape(positions, channels)
  # The gradient on the input's grid: zero on the last kh - 1 rows and kw - 1 columns.
  flat_g = jnp.pad(output_gradient, ((0, 0), (0, kh - 1), (0, kw - 1), (0, 0)))
  flat_g = flat_g.reshape(positions, features)
  if patch_output:  # dW[tap] = sum_m x[m] g[m - offset]: windows of g shifted back by the halo
    windowed = jnp.pad(flat_g, ((halo, padded_positions - positions), (0, 0)))
    blocked = jnp.pad(flat_x, ((0, padded_positions - positions), (0, 0)))
    starts = [halo - o for o in offsets]
  else:  # dW[tap] = sum_n x[n + offset] g[n]
    windowed = jnp.pad(flat_x, ((0, padded_positions + halo - positions), (0, 0)))
    blocked = jnp.pad(flat_g, ((0, padded_positions - positions), (0, 0)))
    starts = offsets

  def accumulate(total, index):
    start = index * block
    window = lax.dynamic_slice_in_dim(windowed, start, block + halo, 0)
    patches = jnp.concatenate(
      [lax.slice_in_dim(window, o, o + block, axis=0) for o in starts], axis=-1
    )  # [block, taps * patch_channels], (ky, kx, channel) order
    other = lax.dynamic_slice_in_dim(blocked, start, block, 0)
    # other^T patches: [C, taps * O] (output-gradient patches) or [O, taps * C] (input patches).
    # This orientation (the narrow side first) ran 20% faster than patches^T other for the 5x5,
    # 64 -> 64 layer at 128x224 (307 -> 247 ms for 4 images).
    return total + lax.dot_general(
      other, patches, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
    ), None

  other_channels = channels if patch_output else features
  total, _ = lax.scan(
    accumulate, jnp.zeros((other_channels, taps * patch_channels), jnp.float32), jnp.arange(blocks)
  )
  total = total.reshape(other_channels, kh, kw, patch_channels)
  return total.transpose(1, 2, 0, 3) if patch_output else total.transpose(1, 2, 3, 0)


@jax.custom_vjp
def _conv_valid_blocked(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  return _conv_valid(x, kernel)


def _forward(x, kernel):
  return _conv_valid(x, kernel), (x, kernel)


def _backward(residuals, output_gradient):
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  # The input gradient is the full correlation of the output gradient with the flipped kernel,
  # written with an HWIO kernel: the transpose JAX derives has an [kh, kw, O, C] kernel, which
  # XLA:CPU runs 8x slower inside a loop body (a `lax.scan` over decoder chunks).
  flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
  input_gradient = lax.conv_general_dilated(
    output_gradient,
    flipped,
    (1, 1),
    ((kh - 1, kh - 1), (kw - 1, kw - 1)),
    dimension_numbers=_DIMENSIONS,
  )
  kernel_grad = kernel_gradient(x, output_gradient, kernel.shape).astype(kernel.dtype)
  return input_gradient, kernel_grad


_conv_valid_blocked.defvjp(_forward, _backward)


def conv2d(
  x: jnp.ndarray, kernel: jnp.ndarray, padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0))
) -> jnp.ndarray:
  """Stride-1 cross-correlation (PyTorch/flax convention), no bias.

  Args:
    x: `[B, H, W, C]`.
    kernel: `[kh, kw, C, O]`.
    padding: `((top, bottom), (left, right))` zeros added (negative values crop).

  Returns:
    `[B, H + top + bottom - kh + 1, W + left + right - kw + 1, O]`.
  """
  if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
    raise ValueError(
      f"conv2d expects x [B, H, W, C] and kernel [kh, kw, C, O], got {x.shape} and {kernel.shape}."
    )
  (top, bottom), (left, right) = padding
  if any((top, bottom, left, right)):
    x = lax.pad(
      x, jnp.array(0, x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0))
    )
  kernel = kernel.astype(x.dtype)
  if jax.default_backend() == "cpu":
    with jax.named_scope("cpu_only/conv_valid_blocked"):  # shows in the HLO (tests/test_tpu.py)
      return _conv_valid_blocked(x, kernel)
  return _conv_valid(x, kernel)


class Conv2d(nn.Module):
  """`nn.Conv(features, (k, k), padding=((p, p), (p, p)))` with stride 1 through `conv2d`.

  Same parameters (`kernel` `[k, k, C, features]` lecun-normal, `bias` zeros) and values as
  flax's `nn.Conv`, so checkpoints and weight imports are unchanged.

  Attributes:
    features: Output channels O.
    kernel_size: Square kernel size k.
    padding: Zeros on each side of H and W (PyTorch `padding`).
    use_bias: Whether to add a bias.
  """

  features: int
  kernel_size: int = 5
  padding: int = 2
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """`[B, H, W, C]` -> `[B, H + 2p - k + 1, W + 2p - k + 1, features]`."""
    if x.ndim != 4:
      raise ValueError(f"Conv2d expects [B, H, W, C] inputs, got shape {x.shape}.")
    k, p = self.kernel_size, self.padding
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features)
    )
    y = conv2d(x, kernel, ((p, p), (p, p)))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(y.dtype)
    return y
