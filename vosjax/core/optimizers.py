"""Optimizer pieces the methods share: gradient clipping, per-parameter-group learning rates and
the DINO-style AdamW + cosine setup (`adamw_cosine`, used by Betrayed and SMTC).

Parameter groups: `optax.multi_transform` gives each group its own copy of the optimizer whose
learning rate is the base schedule times the group's multiplier, itself a function of the step, e.g.
a fine-tuned backbone frozen (x0) until step N and then trained at x0.01:

  tx = grouped_optimizer(
      lambda lr: optax.adamw(lr, weight_decay=0.04), schedule,
      multipliers={"encoder": step_multiplier(0.0, 0.01, switch_step=3000), "rest": 1.0},
      label_fn=label_by_path([(r"^encoder/", "encoder")], default="rest"))

As in PyTorch with a zero learning rate, a group at x0 still updates its Adam moments; its
parameters do not move (weight decay is scaled by the learning rate as well).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import ml_collections

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[Any], Any]


def gradient_clipping(grad_clip_norm: float | None) -> list[optax.GradientTransformation]:
  """`[clip_by_global_norm]`, or `[]` when `grad_clip_norm` is None (the one "off" value)."""
  if grad_clip_norm is None:
    return []
  if grad_clip_norm <= 0:
    raise ValueError(
      f"config.optimizer.grad_clip_norm must be positive or None (no clipping), "
      f"got {grad_clip_norm}."
    )
  return [optax.clip_by_global_norm(grad_clip_norm)]


def step_multiplier(before: float, after: float, switch_step: int) -> Schedule:
  """`before` for steps < `switch_step`, then `after`."""
  return lambda step: jnp.where(step < switch_step, before, after)


def label_by_path(rules: Sequence[tuple[str, str]], default: str) -> Callable[[Any], Any]:
  """A `label_fn` for `optax.multi_transform`: each leaf's label is that of the first rule whose
  regular expression matches (re.search) its '/'-joined path (e.g. "encoder/blocks_0/kernel"),
  else `default`."""
  compiled = [(re.compile(pattern), label) for pattern, label in rules]

  def label_of(path) -> str:
    name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
    return next((label for pattern, label in compiled if pattern.search(name)), default)

  return lambda params: jax.tree_util.tree_map_with_path(lambda path, _: label_of(path), params)


def grouped_optimizer(
  make_optimizer: Callable[[Schedule], optax.GradientTransformation],
  schedule: Schedule,
  multipliers: Mapping[str, float | Schedule],
  label_fn: Callable[[Any], Any],
) -> optax.GradientTransformation:
  """One `make_optimizer(lr)` per group with lr = schedule(step) * multiplier (float or
  schedule)."""

  def scaled(multiplier):
    if callable(multiplier):
      return lambda step: schedule(step) * multiplier(step)
    return lambda step: schedule(step) * multiplier

  return optax.multi_transform(
    {name: make_optimizer(scaled(multiplier)) for name, multiplier in multipliers.items()}, label_fn
  )


def cosine_schedule(opt: ml_collections.ConfigDict, num_train_steps: int) -> Schedule:
  """`opt.learning_rate` at step 0 down to `opt.final_learning_rate` at `num_train_steps` along a
  half cosine, no warm-up (DINO's `cosine_scheduler` with `warmup_epochs=0`, per step)."""
  return optax.cosine_decay_schedule(
    init_value=opt.learning_rate,
    decay_steps=max(num_train_steps, 1),
    alpha=opt.final_learning_rate / opt.learning_rate,
  )


def adamw_cosine(
  opt: ml_collections.ConfigDict,
  num_train_steps: int,
  multipliers: Mapping[str, float | Schedule] | None = None,
  label_fn: Callable[[Any], Any] | None = None,
) -> optax.GradientTransformation:
  """Optional clipping (`opt.grad_clip_norm`), then AdamW (`opt.b1`, `b2`, `eps`, `weight_decay`
  on >= 2-D parameters only: the official parameter groups leave biases and norms undecayed) at
  `cosine_schedule(opt, num_train_steps)`; per parameter group (`grouped_optimizer`) when
  `multipliers` and `label_fn` are given."""

  def adamw(learning_rate):
    return optax.adamw(
      learning_rate,
      b1=opt.b1,
      b2=opt.b2,
      eps=opt.eps,
      weight_decay=opt.weight_decay,
      mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
    )

  schedule = cosine_schedule(opt, num_train_steps)
  if multipliers is None:
    optimizer = adamw(schedule)
  else:
    if label_fn is None:
      raise ValueError(
        "adamw_cosine: `multipliers` needs a `label_fn` naming each parameter's group."
      )
    optimizer = grouped_optimizer(adamw, schedule, multipliers, label_fn)
  return optax.chain(*gradient_clipping(opt.grad_clip_norm), optimizer)
