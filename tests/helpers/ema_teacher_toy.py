"""The toy method with extra state (tests/test_train_extra_state.py): Motion Grouping plus an EMA
teacher of its parameters, with a loss that pulls the parameters towards the teacher. It is not a
package of `vosjax.methods`; the subprocess runs import it from here."""

import types

import jax
import jax.numpy as jnp

from helpers.tiny_configs import LAYOUT_OVERRIDES, tiny_config

MOMENTUM = 0.9  # teacher <- MOMENTUM * teacher + (1 - MOMENTUM) * params, after every update
PULL = 10.0  # weight of the squared distance between the parameters and the teacher in the loss
NUM_STEPS = 6
CHECKPOINT_EVERY = 2
# 6 steps, a checkpoint every 2; a regulariser and lr decay of 1000 steps keeps the schedule flat
# (TINY's 2 would multiply the regularisers by 5 every 2 steps). The Adam epsilon of the layout
# comparison (see tiny_configs.LAYOUT_OVERRIDES) in every run, so that one uninterrupted run is the
# reference of both the resume and the 8-device runs.
RUN_OVERRIDES = {
  "num_train_steps": NUM_STEPS,
  "checkpoint_every_steps": CHECKPOINT_EVERY,
  "optimizer.decay_steps": 1000,
  "method": "ema_teacher_toy",
  **LAYOUT_OVERRIDES,
}


def ema_teacher_method(momentum: float = MOMENTUM, pull: float = PULL) -> types.SimpleNamespace:
  """Motion Grouping whose extra state is `{"teacher": params EMA}` and whose loss adds
  `pull * sum((params - teacher)^2)` (metric `teacher_distance`: the sum)."""
  from vosjax.methods import motion_grouping as mg  # pylint: disable=g-import-not-at-top

  def init_extra_state(params, config):
    del config
    return {"teacher": params}

  def update_extra_state(extra, params, step, config):
    del step, config
    return {
      "teacher": jax.tree.map(
        lambda t, p: momentum * t + (1 - momentum) * p, extra["teacher"], params
      )
    }

  def loss_fn(params, model, batch, rng, step, config, extra):
    total, terms = mg.loss_fn(params, model, batch, rng, step, config, {})
    distance = sum(
      jnp.sum((p - t) ** 2)
      for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(extra["teacher"]))
    )
    return total + pull * distance, dict(terms, teacher_distance=distance)

  return types.SimpleNamespace(
    default_config=mg.default_config,
    make_model=mg.make_model,
    make_optimizer=mg.make_optimizer,
    example_batch=mg.example_batch,
    init_params=mg.init_params,
    loss_fn=loss_fn,
    predict=mg.predict,
    summary_images=mg.summary_images,
    init_extra_state=init_extra_state,
    update_extra_state=update_extra_state,
  )


def run_config(data_dir, **overrides):
  return tiny_config(data_dir, **{**RUN_OVERRIDES, **overrides})
