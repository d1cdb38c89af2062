"""SMTC's two-stage "semantic-aware masked slot attention" (Qian et al., ICCV 2023), in flax.linen.

Official code: `shvdiwnkozbw/SMTC` `src/model/model_twostage.py::SlotAttention`. One set of layers
(input/slot/MLP LayerNorms, q/k/v Linear with bias, MLP D -> D ReLU -> D) serves both stages;
there is no GRU. With inputs `x` `[B, N, D]` (k = W_k LN(x), v = W_v LN(x), computed once):

Stage 1, S semantic slots, initialised deterministically at the learned means `slots_mu`:
  logits = W_q LN(s) k^T * D^-0.5                                 [B, S, N]
  w = softmax_over_slots(logits) + eps;  w = w / sum_N w          (weighted mean)
  s = s + w v;  s = s + MLP(LN(s))
Stage 2, P instance slots per semantic, drawn from N(slots_mu, exp(slots_sigma)^2):
  logits = W_q LN(s) k^T * D^-0.5                                 [B, S, P, N]
  w = softmax_over_the_P_instances_of_each_semantic(logits) + eps
  w = w * [semantic_logits > 0.3];  w = w / (sum_N w + eps)
  s = s + w v;  s = s + MLP(LN(s))

Quirks of the official code, kept:
  * The stage-2 mask thresholds the RAW stage-1 logits (the last iteration's scaled dot products)
    at 0.3, not the semantic softmax: the official line computing the softmax is overwritten by the
    next one. A semantic whose logits never exceed 0.3 gives its instances all-zero weights, so
    their updates are 0 and only the MLP moves them.
  * The instance sample is `torch.normal(mu, sigma)`, which is not reparameterised: no gradient
    reaches `slots_mu` or `slots_sigma` through it (here: `stop_gradient` on the sample). It is
    resampled on every call, evaluation included (explicit noise or the 'instances' RNG stream).
  * Straight-through after iteration `iters - 2` in both stages:
    `s = stop_gradient(s) - stop_gradient(init) + init`. Stage 1 thereby sends the gradient of the
    later iterations directly into `slots_mu`; in stage 2 the init is a constant sample, so the
    earlier iterations get no gradient at all.
  * `slots_sigma` is a log standard deviation initialised with PyTorch's `xavier_uniform_` on its
    `[1, S, 1, D]` shape (fan_in = S * D, fan_out = D).
"""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vosjax.models import precision
from vosjax.models import spatiotemporal

TORCH_LAYER_NORM_EPS = spatiotemporal.TORCH_LAYER_NORM_EPS


def torch_xavier_uniform_init(key, shape, dtype=jnp.float32):
  """PyTorch `nn.init.xavier_uniform_`: fan_in = shape[1] * prod(shape[2:]), fan_out = shape[0] *
  prod(shape[2:]); U(-b, b) with b = sqrt(6 / (fan_in + fan_out))."""
  receptive = int(np.prod(shape[2:]))
  bound = np.sqrt(6.0 / (shape[1] * receptive + shape[0] * receptive))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


@flax.struct.dataclass
class TwoStageSlots:
  """Outputs of `SemanticInstanceSlotAttention` (S semantic slots, P instances each, N inputs).

  Attributes:
    semantic_slots: `[B, S, D]` after the last stage-1 iteration.
    semantic_logits: `[B, S, N]` scaled dot products of the last stage-1 iteration.
    instance_slots: `[B, S, P, D]` after the last stage-2 iteration.
    instance_logits: `[B, S, P, N]` scaled dot products of the last stage-2 iteration.
  """

  semantic_slots: jax.Array
  semantic_logits: jax.Array
  instance_slots: jax.Array
  instance_logits: jax.Array


class SemanticInstanceSlotAttention(nn.Module):
  """The two-stage slot attention; see the module docstring for the exact updates.

  Attributes:
    num_semantic_slots: S (official 16).
    num_instances: P instance slots per semantic slot (official 4).
    num_iterations: iterations of each stage (official 3 in training, 5 at inference).
    mlp_hidden_size: hidden width of the residual MLP; None: the slot width D (official
      max(D, 128) = D for D = 384).
    epsilon: added to the attention before the weighted mean (official 1e-8).
    mask_threshold: stage-2 mask on the raw stage-1 logits (official 0.3).
    layer_norm_epsilon: LayerNorm epsilon (PyTorch default 1e-5).
  """

  num_semantic_slots: int = 16
  num_instances: int = 4
  num_iterations: int = 3
  mlp_hidden_size: int | None = None
  epsilon: float = 1e-8
  mask_threshold: float = 0.3
  layer_norm_epsilon: float = TORCH_LAYER_NORM_EPS

  @nn.compact
  def __call__(self, inputs: jax.Array, instance_noise: jax.Array | None = None) -> TwoStageSlots:
    """Runs both stages.

    Args:
      inputs: `[B, N, D]`; D is also the slot width.
      instance_noise: standard-normal noise `[B, S, P, D]` of the instance sample; drawn from
        the 'instances' RNG stream when None.

    Returns:
      TwoStageSlots.
    """
    if self.num_iterations < 1:
      raise ValueError(f"num_iterations must be >= 1, got {self.num_iterations}.")
    if inputs.ndim != 3:
      raise ValueError(f"inputs must be [B, N, D], got shape {inputs.shape}.")
    batch, _, dim = inputs.shape
    num_slots, num_instances = self.num_semantic_slots, self.num_instances
    hidden = dim if self.mlp_hidden_size is None else self.mlp_hidden_size
    dense = spatiotemporal.torch_dense
    layer_norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_epsilon, name=name)

    slots_mu = self.param("slots_mu", nn.initializers.normal(1.0), (1, num_slots, 1, dim))
    slots_sigma = self.param("slots_sigma", torch_xavier_uniform_init, (1, num_slots, 1, dim))
    noise_shape = (batch, num_slots, num_instances, dim)
    if instance_noise is None:
      instance_noise = jax.random.normal(self.make_rng("instances"), noise_shape)
    elif instance_noise.shape != noise_shape:
      raise ValueError(f"instance_noise must have shape {noise_shape}, got {instance_noise.shape}.")
    # torch.normal is not reparameterised: the sample is a constant for the gradient.
    instance_init = jax.lax.stop_gradient(slots_mu + jnp.exp(slots_sigma) * instance_noise)
    semantic_init = jnp.broadcast_to(slots_mu[:, :, 0], (batch, num_slots, dim))

    inputs = layer_norm("norm_inputs")(inputs)
    keys = dense(dim, dim, name="project_k")(inputs)
    values = dense(dim, dim, name="project_v")(inputs)
    norm_slots = layer_norm("norm_slots")
    project_q = dense(dim, dim, name="project_q")
    norm_mlp = layer_norm("norm_mlp")
    mlp_hidden = dense(hidden, dim, name="mlp_hidden")
    mlp_out = dense(dim, hidden, name="mlp_out")

    def refine(init, attention_weights):
      """Iterates one stage from `init` `[B, S, (P,) D]`; returns (slots, last logits)."""
      slots, logits = init, None
      for iteration in range(self.num_iterations):
        queries = project_q(norm_slots(slots))
        logits = jnp.einsum("b...d,bnd->b...n", queries, keys) * dim**-0.5
        weights = attention_weights(logits)
        slots = slots + jnp.einsum("b...n,bnd->b...d", weights, values)
        slots = slots + mlp_out(nn.relu(mlp_hidden(norm_mlp(slots))))
        if iteration == self.num_iterations - 2:
          # Straight-through: later iterations' gradient goes to `init`, skipping the earlier ones.
          slots = jax.lax.stop_gradient(slots) - jax.lax.stop_gradient(init) + init
      return slots, logits

    def semantic_weights(logits):  # [B, S, N]
      weights = precision.softmax_float32(logits, axis=1) + self.epsilon
      return weights / jnp.sum(weights, axis=-1, keepdims=True)

    semantic_slots, semantic_logits = refine(semantic_init, semantic_weights)
    # Hard mask on the raw logits (official quirk, see the module docstring).
    semantic_mask = (semantic_logits > self.mask_threshold).astype(inputs.dtype)[:, :, None]

    def instance_weights(logits):  # [B, S, P, N]
      weights = (precision.softmax_float32(logits, axis=2) + self.epsilon) * semantic_mask
      return weights / (jnp.sum(weights, axis=-1, keepdims=True) + self.epsilon)

    instance_slots, instance_logits = refine(instance_init, instance_weights)
    return TwoStageSlots(
      semantic_slots=semantic_slots,
      semantic_logits=semantic_logits,
      instance_slots=instance_slots,
      instance_logits=instance_logits,
    )
