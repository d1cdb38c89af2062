"""The XLA:CPU-friendly transformer layers against their plain formulations and references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import torch

from vosjax.models import transformer_layers


def test_gelu_exact_matches_the_float64_definition_and_torch():
  x = np.concatenate(
    [np.linspace(-12.0, 12.0, 4001), np.random.default_rng(0).normal(scale=3.0, size=5000)]
  ).astype(np.float32)
  got = np.asarray(transformer_layers.gelu_exact(jnp.asarray(x)))
  x64 = x.astype(np.float64)
  expected = x64 * 0.5 * scipy.special.erfc(-x64 / np.sqrt(2.0))
  np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6)
  np.testing.assert_allclose(
    got, torch.nn.functional.gelu(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6
  )
  gradient = np.asarray(jax.vmap(jax.grad(transformer_layers.gelu_exact))(jnp.asarray(x)))
  phi = np.exp(-(x64**2) / 2) / np.sqrt(2 * np.pi)
  np.testing.assert_allclose(
    gradient, 0.5 * scipy.special.erfc(-x64 / np.sqrt(2.0)) + x64 * phi, rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize("height,width,patch", [(32, 48, 16), (21, 30, 8), (28, 14, 14)])
def test_patch_embedding_equals_the_strided_convolution(height, width, patch):
  """Same parameter names, shapes and initial values as nn.Conv; same outputs and kernel
  gradients (pixels past the last full patch ignored, non-square images)."""
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, height, width, 3)), jnp.float32)
  embedding = transformer_layers.PatchEmbedding(24, patch)
  convolution = nn.Conv(24, (patch, patch), strides=(patch, patch), padding="VALID")
  params = embedding.init(jax.random.key(3), images)
  conv_params = convolution.init(jax.random.key(3), images)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, conv_params)
  np.testing.assert_array_equal(params["params"]["kernel"], conv_params["params"]["kernel"])
  params = jax.tree.map(lambda p: p + 0.1, params)  # a nonzero bias
  got = embedding.apply(params, images)
  assert got.shape == (2, height // patch, width // patch, 24)
  np.testing.assert_allclose(got, convolution.apply(params, images), rtol=1e-5, atol=1e-5)
  weights = jnp.asarray(np.random.default_rng(2).normal(size=got.shape), jnp.float32)
  gradients = [
    jax.grad(lambda p, m=module: jnp.sum(m.apply(p, images) * weights))(params)
    for module in (embedding, convolution)
  ]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), *gradients)
