"""Tests for the Betrayed-by-Attention spatio-temporal block against a NumPy transcription."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from vosjax.models import spatiotemporal


def _layer_norm(x, scale, bias, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def _reference_block(params, x, num_heads):
  """Official Block.forward (eval mode), transcribed with NumPy float64 on one sequence [L, C]."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  length, dim = x.shape
  head_dim = dim // num_heads
  h = _layer_norm(x, p["norm1"]["scale"], p["norm1"]["bias"])
  qkv = (h @ p["qkv"]["kernel"]).reshape(length, 3, num_heads, head_dim).transpose(1, 2, 0, 3)
  q, k, v = qkv[0], qkv[1], qkv[2]  # [heads, L, hd]
  logits = q @ k.transpose(0, 2, 1) * head_dim**-0.5
  logits -= logits.max(-1, keepdims=True)
  attn = np.exp(logits)
  attn /= attn.sum(-1, keepdims=True)
  mixed = (attn @ v).transpose(1, 0, 2).reshape(length, dim)
  x = x + mixed @ p["proj"]["kernel"] + p["proj"]["bias"]
  h = _layer_norm(x, p["norm2"]["scale"], p["norm2"]["bias"])
  h = h @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  h = 0.5 * h * (1.0 + special.erf(h / np.sqrt(2.0)))
  x = x + h @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  return x, attn


def _inputs(batch, frames, tokens, dim, seed=0):
  rng = np.random.default_rng(seed)
  cls = rng.normal(size=(batch, frames, dim)).astype(np.float32)
  keys = rng.normal(size=(batch, frames, tokens, dim)).astype(np.float32)
  return cls, keys


def test_parameter_count_vit_small():
  block = spatiotemporal.SpatioTemporalBlock(dim=384)
  cls, keys = _inputs(1, 2, 4, 384)
  params = jax.eval_shape(block.init, jax.random.key(0), cls, keys)
  count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
  assert count == 1_773_312
  assert "bias" not in params["params"]["qkv"]
  assert params["params"]["proj"]["bias"].shape == (384,)


def test_forward_matches_numpy_reference():
  dim, heads, batch, frames, tokens = 32, 4, 2, 3, 5
  block = spatiotemporal.SpatioTemporalBlock(dim=dim, num_heads=heads)
  cls, keys = _inputs(batch, frames, tokens, dim)
  params = block.init(jax.random.key(1), cls, keys)
  out, attention = block.apply(params, cls, keys)
  assert out.shape == (batch, frames, tokens, dim)
  assert attention.shape == (batch, frames * tokens, frames * tokens)
  for b in range(batch):
    sequence = np.concatenate([cls[b, :, None], keys[b]], axis=1).reshape(-1, dim)
    ref_out, ref_attn = _reference_block(params, sequence.astype(np.float64), heads)
    ref_out = ref_out.reshape(frames, tokens + 1, dim)[:, 1:]
    ref_attn = ref_attn.mean(0).reshape(frames, tokens + 1, frames, tokens + 1)[:, 1:, :, 1:]
    np.testing.assert_allclose(out[b], ref_out, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
      attention[b], ref_attn.reshape(frames * tokens, -1), rtol=1e-4, atol=1e-6
    )
  # CLS columns are dropped without renormalizing: rows sum to less than 1.
  row_sums = np.asarray(attention).sum(-1)
  assert np.all(row_sums < 1.0) and np.all(row_sums > 0.0)


def test_query_key_matches_training_projection():
  dim, heads, frames, tokens = 32, 4, 3, 6
  block = spatiotemporal.SpatioTemporalBlock(dim=dim, num_heads=heads)
  cls, keys = _inputs(1, frames, tokens, dim, seed=3)
  params = block.init(jax.random.key(2), cls, keys)
  q, k = block.apply(params, keys[0], method=spatiotemporal.SpatioTemporalBlock.query_key)
  assert q.shape == k.shape == (frames, tokens, heads, dim // heads)
  p = params["params"]
  qkv = _layer_norm(
    keys[0].astype(np.float64), p["norm1"]["scale"], p["norm1"]["bias"]
  ) @ np.asarray(p["qkv"]["kernel"], np.float64)
  np.testing.assert_allclose(q, qkv[..., :dim].reshape(frames, tokens, heads, -1), atol=1e-4)
  np.testing.assert_allclose(
    k, qkv[..., dim : 2 * dim].reshape(frames, tokens, heads, -1), atol=1e-4
  )


def test_attention_dropout_is_applied_to_returned_map():
  dim, heads = 16, 2
  block = spatiotemporal.SpatioTemporalBlock(
    dim=dim, num_heads=heads, dropout_rate=0.0, attention_dropout_rate=0.4
  )
  cls, keys = _inputs(1, 2, 8, dim, seed=4)
  params = block.init(jax.random.key(0), cls, keys)
  sequence = jnp.concatenate([cls[:, :, None], keys], axis=2).reshape(1, -1, dim)
  _, clean = block.apply(params, sequence, method=spatiotemporal.SpatioTemporalBlock.attend)
  _, dropped = block.apply(
    params,
    sequence,
    False,
    method=spatiotemporal.SpatioTemporalBlock.attend,
    rngs={"dropout": jax.random.key(5)},
  )
  clean, dropped = np.asarray(clean), np.asarray(dropped)
  kept = dropped != 0
  np.testing.assert_allclose(dropped[kept], clean[kept] / 0.6, rtol=1e-5)
  assert 0.3 < 1.0 - kept.mean() < 0.5  # about 40 % zeroed


def test_bad_shapes_raise():
  block = spatiotemporal.SpatioTemporalBlock(dim=16, num_heads=2)
  with pytest.raises(ValueError, match="cls_tokens"):
    block.init(jax.random.key(0), np.zeros((1, 2, 16)), np.zeros((1, 3, 4, 16)))
