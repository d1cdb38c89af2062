"""`core.flops.matmul_flops`: matmul FLOPs with loops multiplied out, on programs of known count."""

import jax
import jax.numpy as jnp
import pytest

from vosjax.core import flops


def _scan_of_matmuls(x, weights):
  """x [B, D] through len(weights) layers `tanh(x @ w)` in a `lax.scan`."""

  def layer(h, w):
    return jnp.tanh(h @ w), None

  return jax.lax.scan(layer, x, weights)[0].sum()


def test_a_scan_body_counts_once_per_trip():
  batch, width, trips = 16, 32, 8
  x, weights = jnp.ones((batch, width)), jnp.ones((trips, width, width))
  known = trips * 2 * batch * width * width
  count = flops.matmul_flops(_scan_of_matmuls, x, weights)
  assert count.flops == known and count.unbounded_loops == 0
  # XLA's cost analysis counts the loop body once: the reason for the count above.
  xla = jax.jit(_scan_of_matmuls).lower(x, weights).compile().cost_analysis()["flops"]
  assert xla < known / 2, (xla, known)
  # A gradient adds two matmuls per forward one (d/dx and d/dw), in the transposed scan.
  grads = flops.matmul_flops(jax.grad(_scan_of_matmuls, argnums=(0, 1)), x, weights)
  assert grads.flops == 3 * known
  # Nested in a jitted function and a second scan, the counts multiply.
  nested = jax.jit(
    lambda x, w: jax.lax.scan(lambda c, _: (c, _scan_of_matmuls(x, w)), 0.0, None, 3)
  )
  assert flops.matmul_flops(nested, x, weights).flops == 3 * known


def test_convolution_and_einsum_counts():
  x, kernel = jnp.ones((2, 10, 12, 3)), jnp.ones((3, 3, 3, 5))

  def conv(x, k):
    dims = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=dims)

  known = 2 * (2 * 8 * 10 * 5) * (3 * 3 * 3)
  assert flops.matmul_flops(conv, x, kernel).flops == known
  # Without padding XLA counts the same multiply-adds.
  assert jax.jit(conv).lower(x, kernel).compile().cost_analysis()["flops"] == pytest.approx(known)
  q, k = jnp.ones((2, 7, 4, 8)), jnp.ones((2, 9, 4, 8))
  logits = flops.matmul_flops(lambda q, k: jnp.einsum("bqhd,bkhd->bhqk", q, k), q, k)
  assert logits.flops == 2 * (2 * 4 * 7 * 9) * 8


def test_a_while_loop_of_unknown_length_is_reported():
  def loop(x):
    return jax.lax.while_loop(lambda c: c[1] < 5, lambda c: (c[0] @ c[0], c[1] + 1), (x, 0))[0]

  x = jnp.ones((4, 4))
  count = flops.matmul_flops(loop, x)
  assert count.unbounded_loops == 1 and count.flops == 2 * 4 * 4 * 4


def test_padding_and_transposed_convolutions_count_real_taps_as_xla_does():
  x, kernel = jnp.ones((2, 9, 7, 3)), jnp.ones((5, 5, 3, 4))
  dims = ("NHWC", "HWIO", "NHWC")
  for function in (
    lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dims),
    lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=dims),
    lambda x, k: jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=dims),
  ):
    xla = jax.jit(function).lower(x, kernel).compile().cost_analysis()["flops"]
    assert flops.matmul_flops(function, x, kernel).flops == pytest.approx(xla), function
