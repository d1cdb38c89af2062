"""SMTC losses (vosjax.methods.smtc.losses) and the jitted matching against NumPy transcriptions of
the official `src/train.py` (tests/references/reference_smtc.py) and scipy's
`linear_sum_assignment`."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from references import reference_smtc as reference
from vosjax.methods.smtc import losses
from vosjax.methods.smtc import matching

B, T, S, P, N, C = 2, 3, 5, 4, 12, 8


def _rng(seed):
  return np.random.default_rng(seed)


def test_differ_loss_matches_official():
  logits = _rng(0).normal(size=(B, T, S, N)).astype(np.float32) * 3
  value = jax.jit(losses.differ_loss)(logits)
  expected = reference.differ_loss(logits.astype(np.float64))
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  assert 0.0 < expected < 1.0


def test_sinkhorn_matches_official():
  rng = _rng(1)
  mu_s, mu_t = rng.random((3, N)) + 0.1, rng.random((3, N + 2)) + 0.1
  tokens_s, tokens_t = (reference.normalize(rng.normal(size=(3, n, C))) for n in (N, N + 2))
  cost = 1 - np.einsum("bnc,bmc->bnm", tokens_s, tokens_t)
  plan = jax.jit(losses.sinkhorn)(*(jnp.asarray(x, jnp.float32) for x in (mu_s, mu_t, cost)))
  expected = reference.sinkhorn_cluster(mu_s, mu_t, cost)
  np.testing.assert_allclose(plan, expected, rtol=1e-4, atol=1e-9)
  # After the last update the column marginals are exact, the row ones approximate.
  np.testing.assert_allclose(np.asarray(plan).sum(1), mu_t / mu_t.sum(-1, keepdims=True), rtol=1e-4)


def test_dense_transport_loss_matches_official_and_has_no_teacher_gradient():
  rng = _rng(2)
  student, teacher = (rng.normal(size=(B, T, S, N)).astype(np.float32) * 2 for _ in range(2))
  keys = rng.normal(size=(B, T, N, C)).astype(np.float32) + 0.5
  value, grads = jax.jit(jax.value_and_grad(losses.dense_transport_loss, argnums=(0, 1, 2)))(
    student, teacher, keys
  )
  keys64 = keys.astype(np.float64)
  expected = reference.dense_transport_loss(
    student.astype(np.float64), teacher.astype(np.float64), keys64, keys64
  )
  np.testing.assert_allclose(value, expected, rtol=1e-4)
  assert np.abs(np.asarray(grads[0])).max() > 1e-4
  np.testing.assert_array_equal(grads[1], 0.0)
  np.testing.assert_array_equal(grads[2], 0.0)


def test_valid_instances_match_official():
  rng = _rng(3)
  logits = rng.normal(size=(B, T, S, N)).astype(np.float32) * 4
  semantic = rng.normal(size=(B, T, S, C)).astype(np.float32)
  instance = semantic[:, :, :, None] + rng.normal(size=(B, T, S, P, C)).astype(np.float32)
  valid = jax.jit(losses.valid_instances)(logits, semantic, instance)
  expected = reference.filter_valid_instance(
    *(x.astype(np.float64) for x in (logits, semantic, instance))
  )
  np.testing.assert_array_equal(valid, expected)
  assert 0.05 < expected.mean() < 0.95  # both outcomes occur


def _embeddings(rng, shape):
  return reference.normalize(rng.normal(size=shape)).astype(np.float32)


@pytest.mark.parametrize("seed", [4, 5])
def test_instance_loss_matches_official_with_forced_valid_instances(seed):
  """Random weights leave no valid instance (the loss is exactly 0), so validity is drawn here."""
  rng = _rng(seed)
  emb_s, emb_t = _embeddings(rng, (B, T, S, P, C)), _embeddings(rng, (B, T, S, P, C))
  emb_t[:, :, 0] = emb_s[:, :, 0, ::-1] + 0.3 * emb_t[:, :, 0]  # some strong positives
  emb_t = reference.normalize(emb_t).astype(np.float32)
  valid_s, valid_t = ((rng.random((B, T, S, P)) < 0.6).astype(np.float32) for _ in range(2))
  value, grads = jax.jit(jax.value_and_grad(losses.instance_consistency_loss, argnums=(2, 3)))(
    valid_s, valid_t, emb_s, emb_t
  )
  expected = reference.object_loss(
    valid_s, valid_t, emb_s.astype(np.float64), emb_t.astype(np.float64)
  )
  np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
  assert abs(expected) > 1e-2
  # Invalid student instances get no gradient.
  invalid = np.asarray(valid_s) == 0
  np.testing.assert_array_equal(np.asarray(grads[0])[invalid], 0.0)
  assert np.abs(np.asarray(grads[0])[~invalid]).max() > 1e-3


def test_instance_loss_is_zero_without_valid_instances():
  rng = _rng(6)
  emb = _embeddings(rng, (B, T, S, P, C))
  zeros = np.zeros((B, T, S, P), np.float32)
  assert float(losses.instance_consistency_loss(zeros, zeros + 1, emb, emb)) == 0.0


def _jit_assignment():
  return jax.jit(matching.min_cost_assignment)


def _cost(cost, columns):
  return cost[np.arange(cost.shape[0]), columns].sum()


@pytest.mark.parametrize("size", [2, 4, 6])
def test_matching_equals_scipy_on_random_costs(size):
  costs = _rng(size).random((300, size, size)).astype(np.float32)
  columns = np.asarray(_jit_assignment()(costs))
  for cost, found in zip(costs.astype(np.float64), columns):
    _, col = linear_sum_assignment(cost)
    np.testing.assert_array_equal(found, col)  # continuous costs: unique optimum
  assert sorted(columns[0]) == list(range(size))


def test_matching_on_ties_has_scipys_total_and_its_permutation_when_unique():
  rng = _rng(7)
  costs = rng.integers(0, 3, size=(2000, 4, 4)).astype(np.float32)  # many exact ties
  costs[:3] = 1.0  # constant: scipy returns the identity
  columns = np.asarray(_jit_assignment()(costs))
  table = matching.permutation_table(4)
  unique = same_on_ties = ties = 0
  for cost, found in zip(costs.astype(np.float64), columns):
    _, col = linear_sum_assignment(cost)
    assert sorted(found) == [0, 1, 2, 3]
    assert _cost(cost, found) == _cost(cost, col)
    totals = cost[np.arange(4), table].sum(-1)
    if np.sum(totals == totals.min()) == 1:
      unique += 1
      np.testing.assert_array_equal(found, col)
    else:
      ties += 1
      same_on_ties += np.array_equal(found, col)
  np.testing.assert_array_equal(columns[:3], np.tile(np.arange(4), (3, 1)))
  assert unique > 100 and ties > 100
  assert same_on_ties > 0.5 * ties  # the documented ~62 %


def test_matching_table_and_errors():
  table = matching.permutation_table(3)
  assert table.tolist() == [list(p) for p in itertools.permutations(range(3))]
  with pytest.raises(ValueError, match="square"):
    matching.min_cost_assignment(jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="P <= 6"):
    matching.min_cost_assignment(jnp.zeros((7, 7)))
