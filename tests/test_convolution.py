"""vosjax.models.convolution: the blocked kernel gradient against NumPy and XLA's gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.models import convolution


def numpy_kernel_gradient(x, g, kh, kw):
  """dW[ky, kx, c, o] = sum_{b, h, w} x[b, h + ky, w + kx, c] g[b, h, w, o] (float64)."""
  x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
  out_h, out_w = g.shape[1:3]
  grad = np.zeros((kh, kw, x.shape[-1], g.shape[-1]))
  for ky in range(kh):
    for kx in range(kw):
      grad[ky, kx] = np.einsum("bhwc,bhwo->co", x[:, ky : ky + out_h, kx : kx + out_w], g)
  return grad


@pytest.mark.parametrize(
  "shape,kernel,block",
  [
    ((2, 9, 11, 3), (5, 5, 3, 4), None),  # blocks larger than the input
    ((3, 12, 7, 5), (3, 2, 5, 6), 16),  # many blocks, a partial last block, non-square taps
    ((1, 6, 6, 2), (1, 1, 2, 3), 7),
    ((2, 9, 10, 6), (5, 5, 6, 2), 32),  # fewer output channels: output-gradient patches
    ((2, 7, 8, 5), (3, 4, 5, 1), None),
  ],
)
def test_kernel_gradient_matches_numpy(shape, kernel, block):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  g = rng.normal(
    size=(shape[0], shape[1] - kernel[0] + 1, shape[2] - kernel[1] + 1, kernel[3])
  ).astype(np.float32)
  got = convolution.kernel_gradient(jnp.asarray(x), jnp.asarray(g), kernel, block=block)
  np.testing.assert_allclose(
    np.asarray(got), numpy_kernel_gradient(x, g, *kernel[:2]), rtol=1e-5, atol=1e-4
  )


def test_kernel_gradient_rejects_mismatched_gradient():
  with pytest.raises(ValueError, match="does not match"):
    convolution.kernel_gradient(jnp.zeros((1, 8, 8, 2)), jnp.zeros((1, 8, 8, 3)), (5, 5, 2, 3))


@pytest.mark.parametrize("padding", [((2, 2), (2, 2)), ((1, 0), (-1, 2))])
def test_conv2d_value_and_gradients_equal_xla(padding):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 10, 13, 4)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(5, 4, 4, 3)), jnp.float32)
  weights = jnp.asarray(
    rng.normal(size=(2, 10 + sum(padding[0]) - 4, 13 + sum(padding[1]) - 3, 3)), jnp.float32
  )

  def xla_conv(x, kernel):
    return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  def loss(conv, x, kernel):
    return jnp.sum(jnp.tanh(conv(x, kernel)) * weights)

  ours = jax.jit(
    jax.value_and_grad(
      lambda x, k: loss(lambda a, b: convolution.conv2d(a, b, padding), x, k), argnums=(0, 1)
    )
  )(x, kernel)
  reference = jax.jit(jax.value_and_grad(lambda x, k: loss(xla_conv, x, k), argnums=(0, 1)))(
    x, kernel
  )
  np.testing.assert_allclose(ours[0], reference[0], rtol=1e-6)
  for got, want in zip(ours[1], reference[1]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv2d_module_has_flax_conv_parameters_and_values():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 9, 3)), jnp.float32)
  ours = convolution.Conv2d(6, 5, 2)
  flax_conv = nn.Conv(6, (5, 5), padding=((2, 2), (2, 2)))
  params = ours.init(jax.random.key(0), x)
  reference_params = flax_conv.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, reference_params)
  np.testing.assert_allclose(params["params"]["kernel"], reference_params["params"]["kernel"])
  np.testing.assert_allclose(
    ours.apply(params, x), flax_conv.apply(params, x), rtol=1e-5, atol=1e-5
  )
