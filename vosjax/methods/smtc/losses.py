"""SMTC's training losses, as the official `src/train.py` computes them (every weight 1).

Shapes: B clips, T frames, S semantic slots, P instances per semantic, N tokens, C channels.

  * `differ_loss` (`--entro_cons`): mean off-diagonal cosine between the semantic masks
    (softmax over S + 1e-8, L2-normalised over N) of each frame.
  * `dense_transport_loss` (`--bi_cons`): for every ordered frame pair i != j, an entropic optimal
    transport plan between the teacher's tokens of frames i and j (cost 1 - cosine, marginals the L1
    norms of the unit tokens, Sinkhorn eps 0.05, 3 iterations, no gradient) weights the cross
    entropy between the teacher's semantic distribution at m (frame j) and the student's at n
    (frame i): -sum_{n,m} plan[n, m] sum_s q_t[s, m] log(q_s[s, n] + 1e-8), averaged over the pairs
    and clips (`mean(0).sum()`).
  * `instance_consistency_loss`: for every pair (student frame i, teacher frame j), i = j included,
    and every semantic, the student's instance embeddings are matched one-to-one with the teacher's
    by a minimum-cost assignment on 1 - cosine (`matching.min_cost_assignment`, the official
    Hungarian); per student instance p, with its match q*:
      valid_s[p] * (mean_{q != q*} relu(sim[p, q] - 0.5) - valid_t[q*] * sim[p, q*]),
    summed and divided by the number of valid student instances over all pairs (+ 1e-10 per
    entry, as the official `sum(valid + 1e-10)`).
  * `valid_instances` (`filter_valid_instance`): an instance counts when its semantic's mask
    (softmax over S > 0.3) covers more than 20 % of the tokens and cos(semantic slot, instance
    slot) > 0.5.

The official index construction of the matching (`matching_cost`) swaps the matched column to the
front of arange(Q); with P = Q every row is assigned, so the positives and negatives are exactly the
match and the other columns (the duplicated index 0 it could produce needs P > Q, refused here).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from vosjax.methods.smtc import matching
from vosjax.models import smtc as smtc_model

SINKHORN_EPSILON = 0.05
SINKHORN_ITERATIONS = 3


def differ_loss(semantic_logits: jax.Array) -> jax.Array:
  """Slot-mask diversity; `semantic_logits` `[B, T, S, N]` -> scalar."""
  masks = smtc_model.l2_normalize(jax.nn.softmax(semantic_logits, axis=2) + 1e-8)
  cosine = jnp.einsum("btmn,btkn->btmk", masks, masks)
  num_slots = semantic_logits.shape[2]
  off_diagonal = 1.0 - jnp.eye(num_slots, dtype=cosine.dtype)
  return jnp.sum(cosine * off_diagonal) / (off_diagonal.sum() * np.prod(cosine.shape[:2]))


def sinkhorn(
  source_mass: jax.Array,
  target_mass: jax.Array,
  cost: jax.Array,
  epsilon: float = SINKHORN_EPSILON,
  num_iterations: int = SINKHORN_ITERATIONS,
) -> jax.Array:
  """The official `sinkhorn_cluster`: entropic transport plan `[..., N, M]`.

  K = exp(-cost / epsilon), masses normalised to sum 1, b = 1, then `num_iterations` times
  a = mu_s / (K b), b = mu_t / (K^T a); plan = diag(a) K diag(b). No log-domain stabilisation (as
  the official: exp(-2 / 0.05) ~ 4e-18 is still a normal float32).

  Args:
    source_mass: `[..., N]` non-negative.
    target_mass: `[..., M]` non-negative.
    cost: `[..., N, M]`.
  """
  kernel = jnp.exp(-cost / epsilon)
  source_mass = source_mass / jnp.sum(source_mass, axis=-1, keepdims=True)
  target_mass = target_mass / jnp.sum(target_mass, axis=-1, keepdims=True)
  target_scaling = jnp.ones_like(target_mass)
  for _ in range(num_iterations):
    source_scaling = source_mass / jnp.einsum("...nm,...m->...n", kernel, target_scaling)
    target_scaling = target_mass / jnp.einsum("...nm,...n->...m", kernel, source_scaling)
  return source_scaling[..., :, None] * kernel * target_scaling[..., None, :]


def ordered_frame_pairs(num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """(first, second) frame indices of every ordered pair with first != second, official order."""
  pairs = [(i, j) for i, j in itertools.product(range(num_frames), repeat=2) if i != j]
  return tuple(np.asarray(side, np.int32) for side in zip(*pairs))


def dense_transport_loss(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  teacher_keys: jax.Array,
  epsilon: float = SINKHORN_EPSILON,
  sinkhorn_iterations: int = SINKHORN_ITERATIONS,
) -> jax.Array:
  """Semantic temporal consistency by optimal transport (see the module docstring).

  Args:
    student_logits: `[B, T, S, N]` the student's semantic logits (the only input with gradient).
    teacher_logits: `[B, T, S, N]` the teacher's semantic logits.
    teacher_keys: `[B, T, N, C]` the teacher's backbone keys before fusion (official `feat_t`,
      passed as both token sets).

  Returns:
    scalar.
  """
  if student_logits.shape[1] < 2:
    raise ValueError(f"dense_transport_loss needs T >= 2 frames, got {student_logits.shape}.")
  first, second = ordered_frame_pairs(student_logits.shape[1])
  tokens = jax.lax.stop_gradient(smtc_model.l2_normalize(teacher_keys))
  source, target = tokens[:, first], tokens[:, second]  # [B, pairs, N, C]
  cost = 1.0 - jnp.einsum("bpnc,bpmc->bpnm", source, target)
  plan = jax.lax.stop_gradient(
    sinkhorn(
      jnp.sum(jnp.abs(source), -1), jnp.sum(jnp.abs(target), -1), cost, epsilon, sinkhorn_iterations
    )
  )
  student_log = jnp.log(jax.nn.softmax(student_logits, axis=2) + 1e-8)[:, first]
  teacher_prob = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits), axis=2)[:, second]
  cross = jnp.einsum("bpsm,bpsn->bpnm", teacher_prob, student_log)
  return -jnp.sum(plan * cross) / (plan.shape[0] * plan.shape[1])


def valid_instances(
  semantic_logits: jax.Array,
  semantic_slots: jax.Array,
  instance_slots: jax.Array,
  mask_threshold: float = 0.3,
  min_coverage: float = 0.2,
  min_similarity: float = 0.5,
) -> jax.Array:
  """The official `filter_valid_instance`: float 0/1 `[B, T, S, P]`, no gradient.

  Args:
    semantic_logits: `[B, T, S, N]`.
    semantic_slots: `[B, T, S, C]`.
    instance_slots: `[B, T, S, P, C]`.
  """
  coverage = jnp.mean(jax.nn.softmax(semantic_logits, axis=2) > mask_threshold, axis=-1)
  similarity = jnp.einsum(
    "btsc,btspc->btsp",
    smtc_model.l2_normalize(semantic_slots),
    smtc_model.l2_normalize(instance_slots),
  )
  valid = (similarity > min_similarity) & (coverage > min_coverage)[..., None]
  return jax.lax.stop_gradient(valid.astype(semantic_slots.dtype))


def instance_consistency_loss(
  student_valid: jax.Array,
  teacher_valid: jax.Array,
  student_embeddings: jax.Array,
  teacher_embeddings: jax.Array,
  margin: float = 0.5,
) -> jax.Array:
  """The official `object_loss` over every (student frame, teacher frame) pair.

  Args:
    student_valid: `[B, T, S, P]` 0/1 (`valid_instances` of the student).
    teacher_valid: `[B, T, S, P]` 0/1 of the teacher.
    student_embeddings: `[B, T, S, P, C]` unit-norm `mlp_slot` outputs of the student.
    teacher_embeddings: `[B, T, S, P, C]` the same of the teacher (the caller passes them without
      gradient, as the official teacher has none).
    margin: negatives count above this cosine (official 0.5).

  Returns:
    scalar.
  """
  batch, frames, slots, instances = student_valid.shape
  if instances < 2:
    raise ValueError(
      f"instance_consistency_loss needs P >= 2 instances (negatives), got {instances}."
    )
  similarity = jnp.einsum("bispc,bjsqc->bijspq", student_embeddings, teacher_embeddings)
  columns = matching.min_cost_assignment(1.0 - similarity)  # [B, Ti, Tj, S, P]
  positive = jnp.take_along_axis(similarity, columns[..., None], axis=-1)[..., 0]
  is_positive = jax.nn.one_hot(columns, instances, dtype=similarity.dtype)
  negative = jnp.sum(jax.nn.relu(similarity - margin) * (1.0 - is_positive), -1) / (instances - 1)
  teacher_valid = jnp.broadcast_to(
    teacher_valid[:, None], (batch, frames) + teacher_valid.shape[1:]
  )
  positive_valid = jnp.take_along_axis(teacher_valid, columns, axis=-1)
  per_instance = student_valid[:, :, None] * (negative - positive_valid * positive)
  normaliser = frames * jnp.sum(student_valid) + 1e-10 * frames * student_valid.size
  return jnp.sum(per_instance) / normaliser
