"""Optical-flow encodings used as network inputs/targets (Motion Grouping, SAVi).

`flow_to_rgb` reproduces `cvbase.optflow.visualize.flow2rgb` (cvbase 0.5.5), which Motion
Grouping applies to every flow before `clip((rgb - 0.5) * 2, -1, 1)`:

  1. pixels with a NaN component or |component| > 1e6 are "unknown" and set to zero;
  2. if any magnitude exceeds float eps, u and v are divided by the per-image maximum
     magnitude, and the magnitude is then recomputed from the normalised components;
  3. angle = atan2(-v, -u) / pi; bin = (angle + 1) / 2 * (num_colours - 1); the colour is
     the linear interpolation between wheel[floor(bin)] and wheel[(floor(bin) + 1) % n];
  4. magnitude <= 1: colour = 1 - magnitude * (1 - colour); otherwise colour *= 0.75;
  5. unknown pixels are black (0).

The colour wheel is Middlebury's with bins [15, 6, 4, 11, 13, 6] (red->yellow->green->
cyan->blue->magenta->red), and the output channels are RGB (cvbase converts to BGR only
for display). Quirk kept: because step 2 recomputes the magnitude, the largest-magnitude
pixel can land a rounding error above 1 and be multiplied by 0.75 instead.

vosjax flow is `(delta_row, delta_col) = (dy, dx)`; cvbase/.flo flow is `(u, v) = (dx, dy)`.
The functions here take vosjax flow and swap internally.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

MIDDLEBURY_BINS = (15, 6, 4, 11, 13, 6)
UNKNOWN_FLOW_THRESHOLD = 1e6


def make_color_wheel(bins: Sequence[int] = MIDDLEBURY_BINS) -> np.ndarray:
  """Middlebury colour wheel.

  Args:
    bins: Number of colours in the six ramps red->yellow, yellow->green, green->cyan,
      cyan->blue, blue->magenta, magenta->red.

  Returns:
    float32 `[sum(bins), 3]` RGB colours in [0, 1].
  """
  if len(bins) != 6:
    raise ValueError(f"make_color_wheel needs 6 bin counts, got {bins}.")
  ramps = []
  # Each ramp: (start colour, end colour); the colour moves linearly, end excluded.
  corners = [(1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 1, 1), (0, 0, 1), (1, 0, 1), (1, 0, 0)]
  for count, start, end in zip(bins, corners[:-1], corners[1:]):
    steps = np.arange(count, dtype=np.float64)[:, None] / count
    ramps.append(np.asarray(start) + steps * (np.asarray(end) - np.asarray(start)))
  return np.concatenate(ramps, axis=0).astype(np.float32)


def _check_flow(flow: jnp.ndarray, name: str) -> None:
  if flow.ndim < 3 or flow.shape[-1] != 2:
    raise ValueError(
      f"{name} expects flow [..., H, W, 2] in (delta_row, delta_col), got shape {flow.shape}."
    )


def flow_to_rgb(
  flow: jnp.ndarray, unknown_threshold: float = UNKNOWN_FLOW_THRESHOLD
) -> jnp.ndarray:
  """cvbase `flow2rgb` on vosjax flow, batched and jittable.

  Args:
    flow: `[..., H, W, 2]` flow in (delta_row, delta_col) pixels. Normalisation is per
      image (over H and W), independently for every leading index.
    unknown_threshold: Components above this (or NaN) mark a pixel as unknown.

  Returns:
    float32 `[..., H, W, 3]` RGB in [0, 1].
  """
  _check_flow(flow, "flow_to_rgb")
  flow = jnp.asarray(flow, jnp.float32)
  dy, dx = flow[..., 0], flow[..., 1]
  unknown = (
    jnp.isnan(dx)
    | jnp.isnan(dy)
    | (jnp.abs(dx) > unknown_threshold)
    | (jnp.abs(dy) > unknown_threshold)
  )
  dx = jnp.where(unknown, 0.0, dx)
  dy = jnp.where(unknown, 0.0, dy)

  radius = jnp.sqrt(dx**2 + dy**2)
  max_radius = jnp.max(radius, axis=(-2, -1), keepdims=True)
  # cvbase normalises only when some magnitude exceeds float64 eps.
  normalise = max_radius > np.finfo(np.float64).eps
  safe_max = jnp.where(normalise, max_radius, 1.0)
  # XLA rewrites division by a broadcast scalar into multiplication by its reciprocal,
  # which is off by an ulp; at the maximum that flips the `radius <= 1` branch below for
  # whole regions of equal flow. The barrier keeps a true (IEEE) division, as numpy does.
  safe_max = jax.lax.optimization_barrier(jnp.broadcast_to(safe_max, dx.shape))
  dx = dx / safe_max
  dy = dy / safe_max

  radius = jnp.sqrt(dx**2 + dy**2)
  angle = jnp.arctan2(-dy, -dx) / jnp.pi
  wheel = jnp.asarray(make_color_wheel())
  num_colours = wheel.shape[0]
  bin_real = (angle + 1.0) / 2.0 * (num_colours - 1)
  bin_left = jnp.floor(bin_real)
  weight = (bin_real - bin_left)[..., None]
  index_left = bin_left.astype(jnp.int32)
  index_right = (index_left + 1) % num_colours
  colour = (1.0 - weight) * wheel[index_left] + weight * wheel[index_right]
  inside = (radius <= 1.0)[..., None]
  colour = jnp.where(inside, 1.0 - radius[..., None] * (1.0 - colour), colour * 0.75)
  return jnp.where(unknown[..., None], 0.0, colour)


def encode_flow_rgb(flow: jnp.ndarray) -> jnp.ndarray:
  """Motion Grouping's network input: `clip((flow_to_rgb(flow) - 0.5) * 2, -1, 1)`.

  Args:
    flow: `[..., H, W, 2]` flow in (delta_row, delta_col) pixels.

  Returns:
    float32 `[..., H, W, 3]` in [-1, 1].
  """
  return jnp.clip((flow_to_rgb(flow) - 0.5) * 2.0, -1.0, 1.0)


def encode_flow_raw(flow: jnp.ndarray, scale: float = 1.0) -> jnp.ndarray:
  """Raw `(u, v) / scale` encoding (Motion Grouping without `--flow_to_rgb`).

  Args:
    flow: `[..., H, W, 2]` flow in (delta_row, delta_col) pixels.
    scale: Divisor (Motion Grouping uses pixels at the model resolution, i.e. scale 1).

  Returns:
    float32 `[..., H, W, 2]` with channels (u, v) = (delta_col, delta_row) / scale, the
    channel order of `.flo` files and of the official code.
  """
  _check_flow(flow, "encode_flow_raw")
  if scale <= 0:
    raise ValueError(f"encode_flow_raw: scale must be positive, got {scale}.")
  flow = jnp.asarray(flow, jnp.float32)
  return flow[..., ::-1] / scale
