"""Optimizer pieces the methods share: gradient clipping and per-parameter-group learning rates.

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
