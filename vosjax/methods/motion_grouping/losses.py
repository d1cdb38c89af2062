"""Motion Grouping's training losses and learning-rate schedule.

Motion Grouping (official `src/train.py`): each training sample is two flows of the same
frame (two different frame gaps), `a` and `b`, both reconstructed by the model.

  L = 1e2 * MSE(flow, recon)                             (mean over every element of a and b)
    + 1e-2 * g(step) * mean_pixels[-sum_k m_k log(m_k + 1e-5)]             (mask entropy)
    + 1e-2 * g(step) * mean_B min_{i,j} mean_HW (m^a_i - m^b_j)^2     (temporal consistency)

where g(step) = 5 ** (step // decay_steps) (the official loop multiplies both regulariser
weights by 5 every `decay_steps`). The consistency minimum runs over all K x K pairs (i, j)
(combinations, not permutations: both slots may match the same one), as the official
`view(-1, 4).min(1)` does for K = 2.

Step-lag quirk of the official loop (reproduced with `match_official_step_lag=True`): the
learning rate and the regulariser weights are updated *after* each optimiser step, so
update s uses the values computed at s - 1. The first update runs at the full base rate,
the warm-up then restarts from 0, and after the warm-up the rate stays at
`base * (warmup - 1) / warmup` until the first decay.
"""

from typing import Any

import jax.numpy as jnp
import optax

ENTROPY_EPS = 1e-5


def reconstruction_mse(recon: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """Mean squared error over every element (`nn.MSELoss()`); shapes must match."""
  if recon.shape != target.shape:
    raise ValueError(
      f"reconstruction_mse: recon shape {recon.shape} differs from target shape {target.shape}."
    )
  return jnp.mean((recon - target) ** 2)


def mask_entropy(masks: jnp.ndarray, eps: float = ENTROPY_EPS) -> jnp.ndarray:
  """Mean per-pixel entropy over slots.

  Args:
    masks: `[B, K, H, W]` masks summing to 1 over K.
    eps: Added inside the log.

  Returns:
    Scalar `mean_{B,H,W} -sum_K m log(m + eps)`.
  """
  return jnp.mean(-jnp.sum(masks * jnp.log(masks + eps), axis=1))


def temporal_consistency(masks_a: jnp.ndarray, masks_b: jnp.ndarray) -> jnp.ndarray:
  """Motion Grouping's consistency between the masks of two flows of one frame.

  Args:
    masks_a: `[B, K, H, W]`.
    masks_b: `[B, K, H, W]`.

  Returns:
    Scalar `mean_B min_{i, j} mean_{H,W} (masks_a[:, i] - masks_b[:, j])^2`.
  """
  if masks_a.shape != masks_b.shape or masks_a.ndim != 4:
    raise ValueError(
      f"temporal_consistency expects two [B, K, H, W] masks of one shape, "
      f"got {masks_a.shape} and {masks_b.shape}."
    )
  differences = masks_a[:, :, None] - masks_b[:, None, :]  # [B, K_a, K_b, H, W]
  pair_errors = jnp.mean(differences**2, axis=(-2, -1))
  return jnp.mean(jnp.min(pair_errors.reshape(pair_errors.shape[0], -1), axis=-1))


def motion_grouping_regularizer_scale(
  step: Any, decay_steps: int = 80000, growth: float = 5.0, match_official_step_lag: bool = False
) -> jnp.ndarray:
  """Multiplier of the entropy and consistency weights at optimiser step `step` (0-based).

  `growth ** (step // decay_steps)`; with `match_official_step_lag`,
  `growth ** (max(step - 1, 0) // decay_steps)`.
  """
  step = jnp.asarray(step)
  if match_official_step_lag:
    step = jnp.maximum(step - 1, 0)
  return jnp.power(growth, (step // decay_steps).astype(jnp.float32))


def motion_grouping_losses(
  out_a: dict[str, jnp.ndarray],
  out_b: dict[str, jnp.ndarray],
  flow_a: jnp.ndarray,
  flow_b: jnp.ndarray,
  step: Any,
  *,
  recon_scale: float = 1e2,
  ent_scale: float = 1e-2,
  cons_scale: float = 1e-2,
  decay_steps: int = 80000,
  match_official_step_lag: bool = False,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Motion Grouping's total loss for a batch of flow pairs.

  Args:
    out_a: `MotionGrouping` output for the first flows (`recon` `[B, H, W, C]`, `masks`
      `[B, K, H, W]`).
    out_b: The same for the second flows of the same frames.
    flow_a: `[B, H, W, C]` model input (encoded flow) of the first flows: the target.
    flow_b: `[B, H, W, C]` the same for the second flows.
    step: 0-based optimiser step (may be traced).
    recon_scale: Reconstruction weight (`loss_scale`).
    ent_scale: Initial entropy weight.
    cons_scale: Initial consistency weight.
    decay_steps: Both regulariser weights grow x5 every `decay_steps` steps.
    match_official_step_lag: Reproduce the official one-step lag of the weight growth.

  Returns:
    total loss, and a dict with the unweighted terms ('reconstruction', 'entropy',
    'consistency'), the weighted terms ('*_weighted') and the current regulariser
    multiplier ('regularizer_scale').
  """
  reconstruction = 0.5 * (
    reconstruction_mse(out_a["recon"], flow_a) + reconstruction_mse(out_b["recon"], flow_b)
  )
  entropy = 0.5 * (mask_entropy(out_a["masks"]) + mask_entropy(out_b["masks"]))
  consistency = temporal_consistency(out_a["masks"], out_b["masks"])
  scale = motion_grouping_regularizer_scale(
    step, decay_steps, match_official_step_lag=match_official_step_lag
  )
  terms = {
    "reconstruction": reconstruction,
    "entropy": entropy,
    "consistency": consistency,
    "reconstruction_weighted": recon_scale * reconstruction,
    "entropy_weighted": ent_scale * scale * entropy,
    "consistency_weighted": cons_scale * scale * consistency,
    "regularizer_scale": scale,
  }
  total = (
    terms["reconstruction_weighted"] + terms["entropy_weighted"] + terms["consistency_weighted"]
  )
  return total, terms


def motion_grouping_lr_schedule(
  base_lr: float = 5e-4,
  warmup_steps: int = 200,
  decay_steps: int = 80000,
  match_official_step_lag: bool = False,
) -> optax.Schedule:
  """Motion Grouping learning rate as an optax schedule of the 0-based update count.

  Intended schedule: `base * s / warmup` for s < warmup, then
  `base * 0.5 ** (s // decay_steps)`.

  With `match_official_step_lag`, update s uses what the official loop set after update
  s - 1: `base` at s = 0; `base * (s - 1) / warmup` for 1 <= s <= warmup; afterwards
  `base * 0.5 ** (d // decay_steps)` with d the last multiple of `decay_steps` in
  [1, s - 1], or `base * (warmup - 1) / warmup` before the first decay.
  """
  if warmup_steps < 0 or decay_steps <= 0:
    raise ValueError(
      f"motion_grouping_lr_schedule: need warmup_steps >= 0 and "
      f"decay_steps > 0, got {warmup_steps}, {decay_steps}."
    )

  def intended(count):
    count = jnp.asarray(count)
    decayed = base_lr * jnp.power(0.5, (count // decay_steps).astype(jnp.float32))
    if warmup_steps == 0:
      return decayed
    warm = base_lr * count.astype(jnp.float32) / warmup_steps
    return jnp.where(count < warmup_steps, warm, decayed)

  def official(count):
    count = jnp.asarray(count)
    last = count - 1  # the loop iteration whose end-of-step update is in effect
    last_decay = (jnp.maximum(last, 0) // decay_steps) * decay_steps
    decay_value = base_lr * jnp.power(0.5, (last_decay // decay_steps).astype(jnp.float32))
    if warmup_steps > 0:
      last_warm = jnp.minimum(last, warmup_steps - 1)
      warm_value = base_lr * last_warm.astype(jnp.float32) / warmup_steps
      # Within one iteration the decay update runs after the warm-up one.
      value = jnp.where((last_decay > 0) & (last_decay >= last_warm), decay_value, warm_value)
    else:
      value = jnp.where(last_decay > 0, decay_value, base_lr)
    return jnp.where(count == 0, base_lr, value)

  return official if match_official_step_lag else intended
