"""Building blocks shared by the slot-attention models.

Soft position embeddings, spatial broadcast, PyTorch-style convolution blocks with
InstanceNorm, and ceil-mode max pooling. All tensors are channels-last (`[B, H, W, C]`).

PyTorch `nn.InstanceNorm2d(affine=True)` (as used by Motion Grouping) normalises each
channel of each example over H and W with the biased variance and eps 1e-5, and keeps no
running statistics; `flax.linen.InstanceNorm` does the same with the settings below.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vosjax.core import shard_loops
from vosjax.models import convolution

# PyTorch's InstanceNorm2d default epsilon (flax's default is 1e-6).
TORCH_INSTANCE_NORM_EPS = 1e-5


def build_grid(height: int, width: int) -> np.ndarray:
  """Returns the soft position grid used by Slot Attention and Motion Grouping.

  Args:
    height: Number of rows.
    width: Number of columns.

  Returns:
    float32 `[height, width, 4]` with channels `[y, x, 1 - y, 1 - x]`, where y and x run
    linearly from 0 to 1 inclusive (`np.linspace(0, 1, n)`), as in the official code.
  """
  ys = np.linspace(0.0, 1.0, num=height, dtype=np.float64)
  xs = np.linspace(0.0, 1.0, num=width, dtype=np.float64)
  grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1)
  return np.concatenate([grid, 1.0 - grid], axis=-1).astype(np.float32)


class SoftPositionEmbed(nn.Module):
  """Adds a learned linear projection of the `[y, x, 1-y, 1-x]` grid to the features."""

  @nn.compact
  def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
    """Adds the position embedding.

    Args:
      inputs: `[..., H, W, D]` features.

    Returns:
      `[..., H, W, D]` features plus `Dense(D)(grid)` (broadcast over leading axes).
    """
    if inputs.ndim < 3:
      raise ValueError(
        f"SoftPositionEmbed expects [..., H, W, D] inputs, got shape {inputs.shape}."
      )
    height, width, features = inputs.shape[-3:]
    grid = jnp.asarray(build_grid(height, width))
    return inputs + nn.Dense(features, name="proj")(grid)


def spatial_broadcast(slots: jnp.ndarray, resolution: Sequence[int]) -> jnp.ndarray:
  """Tiles every slot vector over a 2-D grid.

  Args:
    slots: `[..., D]` slot vectors (e.g. `[B, K, D]`, or `[N, D]` flattened).
    resolution: `(h, w)` grid size.

  Returns:
    `[..., h, w, D]`.
  """
  height, width = resolution
  return jnp.broadcast_to(
    slots[..., None, None, :], slots.shape[:-1] + (height, width) + slots.shape[-1:]
  )


def apply_in_chunks(
  module: nn.Module,
  function: Callable[[nn.Module, jnp.ndarray], jnp.ndarray],
  inputs: jnp.ndarray,
  chunk_size: int,
  remat: bool = False,
) -> jnp.ndarray:
  """`function(module, inputs)`, computed `chunk_size` rows of the leading axis at a time.

  A `scan` over the chunks with the parameters broadcast: the parameters keep the names they
  have without chunking, and the result is the same when `function` treats rows independently
  (per-image convolutions and InstanceNorm). Under a `data` mesh each device scans its own rows
  (`core.shard_loops`). On CPU a chunk's activations stay closer to the
  cache (Motion Grouping's encoder and decoder forward passes run faster, docs/performance.md).
  With `remat`, the backward pass keeps only each chunk's inputs and recomputes its activations.

  Args:
    module: the module whose scope `function` creates its submodules in.
    function: `[n, ...] -> [n, ...]` for any n.
    inputs: `[N, ...]`; zero rows pad the last chunk and are dropped from the result.
    chunk_size: rows per chunk (per device under a `data` mesh); 0 (or >= the rows of a device)
      applies `function` to all rows at once.
    remat: recompute each chunk's activations in the backward pass instead of storing them.
  """
  if chunk_size < 0:
    raise ValueError(
      f"apply_in_chunks: chunk_size must be >= 0 (0: all at once), got {chunk_size}."
    )
  total = inputs.shape[0]
  if not 0 < chunk_size < total // shard_loops.data_shards(total):
    return function(module, inputs)
  # Each device's own rows, `chunk_size` per trip (`core.shard_loops`): a scan over the global
  # rows would gather every example onto every device.
  grouped, ungroup = shard_loops.group_by_shard(inputs, chunk_size)

  def chunk_step(scoped_module, carry, chunk):
    return carry, function(scoped_module, chunk)

  scan = nn.scan(
    nn.remat(chunk_step) if remat else chunk_step,
    variable_broadcast="params",
    split_rngs={"params": False},
    length=grouped.shape[0],
  )
  _, outputs = scan(module, None, grouped)
  return ungroup(outputs)


def torch_conv_transpose_padding(
  kernel_size: int, stride: int, padding: int, output_padding: int
) -> tuple[int, int]:
  """Flax `ConvTranspose` padding that reproduces a PyTorch `ConvTranspose2d`.

  PyTorch's transposed convolution equals a stride-1 convolution of the stride-dilated
  input padded by `k - 1 - p` before and `k - 1 - p + output_padding` after; flax applies
  its explicit padding to that dilated input, so the two agree in output size and
  alignment. Output size: `(n - 1) * stride - 2 * padding + kernel_size + output_padding`.
  Flax's kernel (with `transpose_kernel=False`) is PyTorch's spatially flipped.

  Args:
    kernel_size: Kernel size k.
    stride: Stride s (only used to document the formula; padding does not depend on it).
    padding: PyTorch `padding` p.
    output_padding: PyTorch `output_padding`.

  Returns:
    `(low, high)` padding for one spatial axis.
  """
  del stride
  low = kernel_size - 1 - padding
  return low, low + output_padding


def _norm_relu(x: jnp.ndarray, use_norm: bool, use_relu: bool) -> jnp.ndarray:
  """InstanceNorm (affine, PyTorch eps, submodule 'norm' of the calling module) then ReLU."""
  if use_norm:
    x = nn.InstanceNorm(epsilon=TORCH_INSTANCE_NORM_EPS, use_fast_variance=False, name="norm")(x)
  return nn.relu(x) if use_relu else x


class ConvNormReLU(nn.Module):
  """Conv (stride 1, 'SAME' padding = PyTorch `padding=k//2`) + InstanceNorm(affine) + ReLU.

  Attributes:
    features: Output channels.
    kernel_size: Square kernel size (odd).
    use_norm: Whether to apply InstanceNorm (affine) between conv and ReLU.
    use_relu: Whether to apply the ReLU.
  """

  features: int
  kernel_size: int = 5
  use_norm: bool = True
  use_relu: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """`[B, H, W, C]` -> `[B, H, W, features]`."""
    x = convolution.Conv2d(self.features, self.kernel_size, self.kernel_size // 2, name="conv")(x)
    return _norm_relu(x, self.use_norm, self.use_relu)


class TorchConvTranspose(nn.Module):
  """PyTorch `ConvTranspose2d(k, stride, padding, output_padding)` computed sub-pixel-wise.

  Same parameters as `nn.ConvTranspose(features, (k, k), strides, padding=
  torch_conv_transpose_padding(...))` (kernel `[k, k, C_in, features]`, bias) and the
  same result, but computed as `stride**2` small stride-1 convolutions on the undilated
  input (one per output phase) whose outputs are interleaved. XLA:CPU differentiates the
  input-dilated convolution that `nn.ConvTranspose` lowers to very slowly
  (docs/performance.md, "Convolutions"), and the phases also skip the
  multiplications by inserted zeros.

  Attributes:
    features: Output channels.
    kernel_size: Square kernel size k.
    stride: Upsampling stride s.
    padding: PyTorch `padding` p (0 <= p <= k - 1).
    output_padding: PyTorch `output_padding`.
  """

  features: int
  kernel_size: int = 5
  stride: int = 2
  padding: int = 2
  output_padding: int = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """`[B, H, W, C]` -> `[B, H', W', features]`, H' = (H-1)s - 2p + k + output_padding."""
    k, s = self.kernel_size, self.stride
    if x.ndim != 4:
      raise ValueError(f"TorchConvTranspose expects [B, H, W, C] inputs, got {x.shape}.")
    if not 0 <= self.padding <= k - 1:
      raise ValueError(f"TorchConvTranspose: padding must be in [0, {k - 1}], got {self.padding}.")
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features)
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    pad_low = k - 1 - self.padding
    in_h, in_w = x.shape[-3:-1]
    out_h = (in_h - 1) * s - 2 * self.padding + k + self.output_padding
    out_w = (in_w - 1) * s - 2 * self.padding + k + self.output_padding

    def phase_geometry(phase: int, in_size: int, out_size: int):
      # Output o = s*m + phase reads dilated-input taps a = a0 + s*t of the (flax,
      # correlation-oriented) kernel, i.e. input i = m + q + t.
      a0 = (pad_low - phase) % s
      taps = len(range(a0, k, s))
      q = (phase + a0 - pad_low) // s
      count = len(range(phase, out_size, s))
      return a0, taps, (-q, count + q + taps - 1 - in_size), count

    phases = {}
    for phase_y in range(s):
      a0_y, taps_y, pad_y, count_y = phase_geometry(phase_y, in_h, out_h)
      for phase_x in range(s):
        a0_x, taps_x, pad_x, count_x = phase_geometry(phase_x, in_w, out_w)
        if count_y == 0 or count_x == 0:
          continue
        if taps_y == 0 or taps_x == 0:  # no kernel tap reaches this phase: bias only
          continue
        sub_kernel = kernel[a0_y::s, a0_x::s]
        phases[phase_y, phase_x] = convolution.conv2d(x, sub_kernel, (pad_y, pad_x))
    if len(phases) == s * s and out_h % s == 0 and out_w % s == 0:
      # Equal phases: interleave by stacking, [B, H/s, s, W/s, s, O] is [B, H, W, O] row-major.
      # The strided `.at[].set` below is a scatter (its gradient a gather), slower both ways
      # (docs/performance.md, "Convolutions").
      rows = [
        jnp.stack([phases[phase_y, phase_x] for phase_x in range(s)], axis=3)
        for phase_y in range(s)
      ]
      out = jnp.stack(rows, axis=2).reshape(x.shape[0], out_h, out_w, self.features)
    else:
      out = jnp.zeros((x.shape[0], out_h, out_w, self.features), x.dtype)
      for (phase_y, phase_x), y in phases.items():
        out = out.at[:, phase_y::s, phase_x::s].set(y)
    return out + bias


class ConvTransposeNormReLU(nn.Module):
  """PyTorch `ConvTranspose2d(k, stride, padding, output_padding)` + InstanceNorm + ReLU.

  Defaults (5, 2, 2, 1) double the spatial size exactly, as in Motion Grouping's decoder.

  Attributes:
    features: Output channels.
    kernel_size: Square kernel size.
    stride: Upsampling stride.
    padding: PyTorch `padding`.
    output_padding: PyTorch `output_padding`.
    use_norm: Whether to apply InstanceNorm (affine).
    use_relu: Whether to apply the ReLU.
  """

  features: int
  kernel_size: int = 5
  stride: int = 2
  padding: int = 2
  output_padding: int = 1
  use_norm: bool = True
  use_relu: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """`[B, H, W, C]` -> `[B, H', W', features]`, H' = (H-1)s - 2p + k + output_padding."""
    x = TorchConvTranspose(
      self.features,
      self.kernel_size,
      self.stride,
      self.padding,
      self.output_padding,
      name="conv_transpose",
    )(x)
    return _norm_relu(x, self.use_norm, self.use_relu)


def max_pool_2x2_ceil(x: jnp.ndarray) -> jnp.ndarray:
  """PyTorch `MaxPool2d(2, stride=2, ceil_mode=True)` on `[B, H, W, C]`, with its gradient.

  Odd sizes are padded at the end with -inf, so the last partial window is kept. The gradient
  goes to the first maximum of each window in row-major order, as PyTorch's does (ties are
  common after a ReLU). Written as comparisons of the four window phases rather than
  `reduce_window`, whose gradient (`select_and_scatter`) XLA:CPU runs several times slower than
  PyTorch's (docs/performance.md, "Convolutions").

  Returns:
    `[B, ceil(H/2), ceil(W/2), C]`.
  """
  pad_h = x.shape[-3] % 2
  pad_w = x.shape[-2] % 2
  if pad_h or pad_w:
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=-jnp.inf)
  top_left, top_right = x[:, 0::2, 0::2], x[:, 0::2, 1::2]
  bottom_left, bottom_right = x[:, 1::2, 0::2], x[:, 1::2, 1::2]
  maximum = jnp.maximum(jnp.maximum(top_left, top_right), jnp.maximum(bottom_left, bottom_right))
  # Nested selects pass the gradient to the first phase equal to the maximum.
  return jnp.where(
    top_left == maximum,
    top_left,
    jnp.where(
      top_right == maximum, top_right, jnp.where(bottom_left == maximum, bottom_left, bottom_right)
    ),
  )


class FeatureMLP(nn.Module):
  """Dense(hidden) -> ReLU -> Dense(out): the per-token feed-forward after the encoder.

  Attributes:
    hidden_size: Hidden width.
    output_size: Output width.
  """

  hidden_size: int
  output_size: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """`[..., D_in]` -> `[..., output_size]`."""
    x = nn.relu(nn.Dense(self.hidden_size, name="dense_1")(x))
    return nn.Dense(self.output_size, name="dense_2")(x)
