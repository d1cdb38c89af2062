"""Betrayed-by-Attention losses against loop transcriptions of `src/train_RGB_cluster.py`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.methods.betrayed import losses as attention_losses


def _random_attention(rng, batch, frames, tokens):
  """Positive rows (a softmax of random logits, without renormalization after a crop)."""
  logits = rng.normal(size=(batch, frames * tokens, frames * tokens)) * 2.0
  attention = np.exp(logits)
  return (attention / attention.sum(-1, keepdims=True) * 0.9).astype(np.float32)


def _reference_semantic(tokens, attention, queries, n_pos, n_neg, pos_margin, neg_margin):
  """Official slot loss, looping over (b, t, p, t') with a descending argsort per target frame."""
  batch, frames, num_tokens, _ = tokens.shape
  tokens = tokens.astype(np.float64)
  unit = tokens / np.maximum(np.linalg.norm(tokens, axis=-1, keepdims=True), 1e-12)
  pos_terms, neg_terms = [], []
  for b in range(batch):
    for t in range(frames):
      for s in queries:
        row = attention[b, t * num_tokens + s]
        for t2 in range(frames):
          order = np.argsort(-row[t2 * num_tokens : (t2 + 1) * num_tokens], kind="stable")
          query = unit[b, t, s]
          pos_terms += [max(pos_margin - unit[b, t2, j] @ query, 0.0) for j in order[:n_pos]]
          neg_terms += [max(unit[b, t2, j] @ query - neg_margin, 0.0) for j in order[-n_neg:]]
  return np.mean(pos_terms) + np.mean(neg_terms)


def _reference_motion(attention, queries, frames, n_pos, n_neg, margin):
  """Official motion loss with explicit loops over (b, t), queries p, negatives n, positives k."""
  batch, length, _ = attention.shape
  num_tokens = length // frames
  attention = attention.astype(np.float64)
  l1 = lambda v: v / max(np.abs(v).sum(), 1e-12)
  total, count = 0.0, 0
  for b in range(batch):
    for t in range(frames):
      weights, hinges = [], []
      for s in queries:
        query = l1(attention[b, t * num_tokens + s])
        weights.append(np.sum(query * np.log(query + 1e-10)))
        intra = attention[b, t * num_tokens + s, t * num_tokens : (t + 1) * num_tokens]
        order = np.argsort(-intra, kind="stable")
        sim = lambda j: np.sum(query * np.log(l1(attention[b, t * num_tokens + j]) + 1e-10))
        pos = np.array([sim(j) for j in order[:n_pos]])
        neg = np.array([sim(j) for j in order[-n_neg:]])
        hinges.append(np.maximum(neg[:, None] - pos[None, :] + margin, 0.0))
      weights = np.exp(np.array(weights) - np.max(weights))
      weights /= weights.sum()
      weighted = np.einsum("p,pnk->nk", weights, np.stack(hinges))
      total += weighted.sum()
      count += weighted.size
  return total / count


@pytest.mark.parametrize("num_tokens,n_pos,n_neg", [(40, 5, 12), (240, 30, 200)])
def test_semantic_consistency_matches_loops(num_tokens, n_pos, n_neg):
  rng = np.random.default_rng(0)
  batch, frames, channels = 2, 3, 16
  tokens = rng.normal(size=(batch, frames, num_tokens, channels)).astype(np.float32)
  # Correlated tokens so that both hinge terms are active for some pairs.
  tokens += rng.normal(size=(batch, 1, 1, channels)).astype(np.float32) * 1.5
  attention = _random_attention(rng, batch, frames, num_tokens)
  queries = np.asarray(attention_losses.sample_query_indices(jax.random.key(3), num_tokens, 8))
  loss = jax.jit(
    lambda z, a, q: attention_losses.semantic_consistency_loss(
      z, a, q, num_positives=n_pos, num_negatives=n_neg
    )
  )(tokens, attention, queries)
  expected = _reference_semantic(tokens, attention, queries, n_pos, n_neg, 0.9, 0.1)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("num_tokens,n_pos,n_neg", [(40, 4, 9), (120, 10, 50)])
def test_motion_consistency_matches_loops(num_tokens, n_pos, n_neg):
  rng = np.random.default_rng(1)
  batch, frames = 2, 3
  attention = _random_attention(rng, batch, frames, num_tokens)
  queries = np.asarray(attention_losses.sample_query_indices(jax.random.key(4), num_tokens, 8))
  loss = jax.jit(
    lambda a, q: attention_losses.motion_consistency_loss(
      a, q, num_frames=frames, num_positives=n_pos, num_negatives=n_neg
    )
  )(attention, queries)
  expected = _reference_motion(attention, queries, frames, n_pos, n_neg, 1.0)
  assert expected > 0.0
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_motion_loss_query_is_detached_and_gradients_finite():
  rng = np.random.default_rng(2)
  frames, num_tokens = 2, 20
  attention = jnp.asarray(_random_attention(rng, 1, frames, num_tokens))
  queries = jnp.array([3, 7], jnp.int32)
  # The query row is detached: a row gets gradient only as a positive or negative of some query.
  grads = jax.grad(
    lambda a: attention_losses.motion_consistency_loss(
      a, queries, num_frames=frames, num_positives=2, num_negatives=5
    )
  )(attention)
  assert np.all(np.isfinite(grads))
  intra = np.asarray(attention).reshape(frames, num_tokens, frames, num_tokens)
  used = set()
  for t in range(frames):
    for s in np.asarray(queries):
      order = np.argsort(-intra[t, s, t])
      used |= {t * num_tokens + j for j in list(order[:2]) + list(order[-5:])}
  unused = [i for i in range(frames * num_tokens) if i not in used]
  # Rows that are neither positives nor negatives get no gradient, even when they are queries.
  assert np.all(np.asarray(grads)[0, unused] == 0.0)
  assert np.any(np.asarray(grads)[0, sorted(used)] != 0.0)


def test_semantic_loss_has_no_gradient_through_attention():
  rng = np.random.default_rng(3)
  tokens = jnp.asarray(rng.normal(size=(1, 2, 10, 4)), jnp.float32)
  attention = jnp.asarray(_random_attention(rng, 1, 2, 10))
  queries = jnp.array([0, 5], jnp.int32)
  grad_tokens, grad_attention = jax.grad(
    lambda z, a: attention_losses.semantic_consistency_loss(
      z, a, queries, num_positives=3, num_negatives=4
    ),
    argnums=(0, 1),
  )(tokens, attention)
  assert np.all(np.asarray(grad_attention) == 0.0)
  assert np.any(np.asarray(grad_tokens) != 0.0)


def test_sample_query_indices_distinct_and_deterministic():
  a = attention_losses.sample_query_indices(jax.random.key(7), 50, 8)
  b = attention_losses.sample_query_indices(jax.random.key(7), 50, 8)
  assert a.shape == (8,) and len(set(np.asarray(a).tolist())) == 8
  np.testing.assert_array_equal(a, b)
  assert np.all((np.asarray(a) >= 0) & (np.asarray(a) < 50))


def test_counts_larger_than_tokens_raise():
  attention = jnp.zeros((1, 20, 20))
  with pytest.raises(ValueError, match="num_positives/num_negatives"):
    attention_losses.motion_consistency_loss(
      attention, jnp.array([0]), num_frames=2, num_positives=2, num_negatives=50
    )
