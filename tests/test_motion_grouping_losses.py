"""Tests for vosjax.methods.motion_grouping.losses against NumPy transcriptions of the official
training code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.methods.motion_grouping import losses


def _masks(rng, shape):
  logits = rng.normal(size=shape) * 2
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _official_mg_loss(flows, recons, masks, ent_scale, cons_scale, recon_scale=1e2):
  """Official train.py on the interleaved batch: flows/recons `[2B, C, H, W]` ordered
  (b, t) with t in {0, 1}; masks `[2B, 2, 1, H, W]`. Only valid for 2 slots."""
  recon_loss = recon_scale * np.mean((flows - recons) ** 2)
  entropy_loss = ent_scale * -(masks * np.log(masks + 1e-5)).sum(axis=1).mean()
  tmasks = masks.reshape(-1, 2, *masks.shape[1:])  # b t s c h w
  mask_t_1 = tmasks[:, 0]
  mask_t = np.transpose(tmasks[:, 1], (0, 2, 1, 3, 4))  # b c s h w
  temporal_diff = ((mask_t_1 - mask_t) ** 2).mean(axis=(-1, -2))
  consistency_loss = cons_scale * temporal_diff.reshape(-1, 4).min(axis=1).mean()
  return recon_loss + entropy_loss + consistency_loss, (recon_loss, entropy_loss, consistency_loss)


def test_motion_grouping_losses_match_official_transcription():
  rng = np.random.default_rng(0)
  b, k, h, w, c = 3, 2, 8, 12, 3
  flow_a, flow_b, recon_a, recon_b = (
    rng.normal(size=(b, h, w, c)).astype(np.float32) for _ in range(4)
  )
  masks_a, masks_b = _masks(rng, (b, k, h, w)), _masks(rng, (b, k, h, w))
  step = 170000  # two decays: regulariser weights x25
  total, terms = jax.jit(losses.motion_grouping_losses)(
    {"recon": recon_a, "masks": masks_a}, {"recon": recon_b, "masks": masks_b}, flow_a, flow_b, step
  )

  interleave = lambda x, y: np.stack([x, y], axis=1).reshape(-1, *x.shape[1:])
  to_nchw = lambda x: np.transpose(x, (0, 3, 1, 2))
  ref_total, (ref_rec, ref_ent, ref_cons) = _official_mg_loss(
    to_nchw(interleave(flow_a, flow_b)),
    to_nchw(interleave(recon_a, recon_b)),
    interleave(masks_a, masks_b)[:, :, None],
    ent_scale=1e-2 * 25,
    cons_scale=1e-2 * 25,
  )
  np.testing.assert_allclose(float(terms["reconstruction_weighted"]), ref_rec, rtol=1e-5)
  np.testing.assert_allclose(float(terms["entropy_weighted"]), ref_ent, rtol=1e-5)
  np.testing.assert_allclose(float(terms["consistency_weighted"]), ref_cons, rtol=1e-5)
  np.testing.assert_allclose(float(total), ref_total, rtol=1e-5)
  np.testing.assert_allclose(float(terms["reconstruction"]), ref_rec / 1e2, rtol=1e-5)
  assert float(terms["regularizer_scale"]) == 25.0


def test_consistency_takes_min_over_all_pairs_for_more_slots():
  rng = np.random.default_rng(1)
  masks_a, masks_b = _masks(rng, (4, 3, 5, 6)), _masks(rng, (4, 3, 5, 6))
  expected = np.mean(
    [
      min(np.mean((masks_a[n, i] - masks_b[n, j]) ** 2) for i in range(3) for j in range(3))
      for n in range(4)
    ]
  )
  np.testing.assert_allclose(
    float(losses.temporal_consistency(masks_a, masks_b)), expected, rtol=1e-5
  )
  # Combinations, not permutations: identical masks in one slot of each give zero even
  # when the other slots differ.
  masks_b[:, 0] = masks_a[:, 2]
  assert float(losses.temporal_consistency(masks_a, masks_b)) == 0.0


def test_mask_entropy_matches_loops():
  rng = np.random.default_rng(2)
  masks = _masks(rng, (2, 3, 4, 5))
  expected = np.mean(
    [
      [
        [
          -sum(masks[n, s, y, x] * np.log(masks[n, s, y, x] + 1e-5) for s in range(3))
          for x in range(5)
        ]
        for y in range(4)
      ]
      for n in range(2)
    ]
  )
  np.testing.assert_allclose(float(losses.mask_entropy(masks)), expected, rtol=1e-5)


def _simulate_official_loop(base_lr, warmup, decay, num_steps, ent_scale=1.0):
  """The official loop's bookkeeping: values in effect at each update `it`."""
  lr, scale, used = base_lr, ent_scale, []
  for it in range(num_steps):
    used.append((lr, scale))  # optimizer.step() and the loss use the current values
    if it < warmup:
      lr = base_lr * it / warmup
    if it % decay == 0 and it > 0:
      lr = base_lr * (0.5 ** (it // decay))
      scale = scale * 5.0
  return np.array(used)


@pytest.mark.parametrize("warmup,decay", [(5, 12), (4, 3), (0, 7)])
def test_official_step_lag_matches_simulated_loop(warmup, decay):
  used = _simulate_official_loop(2e-3, warmup, decay, 40)
  schedule = losses.motion_grouping_lr_schedule(2e-3, warmup, decay, match_official_step_lag=True)
  steps = np.arange(40)
  np.testing.assert_allclose(np.asarray(jax.vmap(schedule)(steps)), used[:, 0], rtol=1e-6)
  np.testing.assert_allclose(
    np.asarray(
      losses.motion_grouping_regularizer_scale(steps, decay, match_official_step_lag=True)
    ),
    used[:, 1],
    rtol=1e-6,
  )


def test_intended_schedules_at_chosen_steps():
  schedule = losses.motion_grouping_lr_schedule(5e-4, 200, 80000)
  for step, expected in [
    (0, 0.0),
    (1, 5e-4 / 200),
    (100, 2.5e-4),
    (199, 5e-4 * 199 / 200),
    (200, 5e-4),
    (79999, 5e-4),
    (80000, 2.5e-4),
    (160000, 1.25e-4),
    (250000, 5e-4 / 8),
  ]:
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)
  for step, expected in [(0, 1.0), (79999, 1.0), (80000, 5.0), (160001, 25.0)]:
    assert float(losses.motion_grouping_regularizer_scale(step, 80000)) == expected
  # Official lag at the same settings: full rate on the first update, then a plateau at
  # 199/200 of the base rate until the first decay takes effect one step late.
  lagged = losses.motion_grouping_lr_schedule(5e-4, 200, 80000, match_official_step_lag=True)
  for step, expected in [
    (0, 5e-4),
    (1, 0.0),
    (200, 5e-4 * 199 / 200),
    (80000, 5e-4 * 199 / 200),
    (80001, 2.5e-4),
  ]:
    np.testing.assert_allclose(float(lagged(step)), expected, rtol=1e-6)


def test_loss_is_jittable_with_traced_step_and_differentiable():
  rng = np.random.default_rng(4)
  flow = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
  masks = jnp.asarray(_masks(rng, (2, 2, 4, 4)))

  def loss(recon, step):
    out = {"recon": recon, "masks": masks}
    return losses.motion_grouping_losses(out, out, flow, flow, step)[0]

  grad = jax.jit(jax.grad(loss))(jnp.zeros_like(flow), jnp.int32(3))
  # d/d recon of 1e2 * mean over 2 identical halves: 2 * 1e2 * (recon - flow) / size.
  np.testing.assert_allclose(np.asarray(grad), np.asarray(-2e2 * flow / flow.size), rtol=1e-5)
