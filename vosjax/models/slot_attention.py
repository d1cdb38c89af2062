"""Slot Attention (Locatello et al. 2020) and its slot initialisers, in flax.linen.

One iteration, with slots `s` `[B, K, D]` and inputs `x` `[B, N, D_in]`:

  x = LN(x);  k = W_k x;  v = W_v x                        (computed once)
  q = W_q LN(s)
  attn = softmax_over_slots(q k^T * D^-0.5)                 [B, K, N]
  w = (attn + eps) / sum_N (attn + eps)                     weighted mean over inputs
  s = GRU(inputs=w v, hidden=s)        (or s + w v when use_gru=False, as SMTC)
  s = s + MLP(LN(s))                   (when mlp_hidden_size is set)

The epsilon is added to the attention (TF original and PyTorch Motion Grouping), not to
the denominator as in SAVi.

GRU: the PyTorch `nn.GRUCell` equations, which are also those of Keras/TF2 `GRUCell` with
its default `reset_after=True` (the TF2 original):
  r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
  z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
  n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
  h' = (1 - z) * n + z * h
Kernels use Keras' initialisers (glorot-uniform input kernel, orthogonal recurrent kernel,
zero biases). Gate order in the `[., 3D]` kernels is (r, z, n).

Gradient modes (`gradient_mode`):
  'full': backpropagate through every iteration.
  'last_iteration': `slots = stop_gradient(slots)` before the last iteration (implicit
     differentiation as a first-order fixed-point approximation, Chang et al. 2022); the
     slot initialiser then receives no gradient.
  'last_iteration_to_init': `slots = stop_gradient(slots) - stop_gradient(init) + init`
     before the last iteration (SMTC's straight-through trick): same forward values, and the
     gradient that reaches the pre-last-iteration slots is passed unchanged to `init`.
"""

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from vosjax.models import precision

GradientMode = Literal["full", "last_iteration", "last_iteration_to_init"]
_GRADIENT_MODES = ("full", "last_iteration", "last_iteration_to_init")


class GRUCell(nn.Module):
  """GRU cell with PyTorch / Keras(reset_after=True) equations (see module docstring).

  Attributes:
    features: Hidden size D.
  """

  features: int

  @nn.compact
  def __call__(self, inputs: jnp.ndarray, hidden: jnp.ndarray) -> jnp.ndarray:
    """`inputs` `[..., D_in]`, `hidden` `[..., D]` -> new hidden `[..., D]`."""
    gates_input = nn.Dense(
      3 * self.features, kernel_init=nn.initializers.glorot_uniform(), name="input"
    )(inputs)
    gates_hidden = nn.Dense(
      3 * self.features, kernel_init=nn.initializers.orthogonal(), name="hidden"
    )(hidden)
    input_r, input_z, input_n = jnp.split(gates_input, 3, axis=-1)
    hidden_r, hidden_z, hidden_n = jnp.split(gates_hidden, 3, axis=-1)
    reset = nn.sigmoid(input_r + hidden_r)
    update = nn.sigmoid(input_z + hidden_z)
    candidate = jnp.tanh(input_n + reset * hidden_n)
    return (1.0 - update) * candidate + update * hidden


class GaussianSlotInit(nn.Module):
  """Slots sampled from a learned diagonal Gaussian shared by all slots (original SA).

  `slots = mu + exp(log_sigma) * noise`, with `mu`, `log_sigma` `[1, 1, D]` glorot-uniform
  (as Keras does for that shape). The sample is reparameterised, so mu and log_sigma get
  gradients.

  Attributes:
    num_slots: K.
    slot_dim: D.
  """

  num_slots: int
  slot_dim: int

  @nn.compact
  def __call__(self, batch_size: int, noise: jnp.ndarray | None = None) -> jnp.ndarray:
    """Samples initial slots.

    Args:
      batch_size: B.
      noise: Optional standard-normal noise `[B, K, D]`; drawn from the 'slots' RNG stream
        when omitted.

    Returns:
      `[B, K, D]` initial slots.
    """
    shape = (batch_size, self.num_slots, self.slot_dim)
    mu = self.param("mu", nn.initializers.glorot_uniform(), (1, 1, self.slot_dim))
    log_sigma = self.param("log_sigma", nn.initializers.glorot_uniform(), (1, 1, self.slot_dim))
    if noise is None:
      noise = jax.random.normal(self.make_rng("slots"), shape)
    elif noise.shape != shape:
      raise ValueError(f"GaussianSlotInit: noise must have shape {shape}, got {noise.shape}.")
    return mu + jnp.exp(log_sigma) * noise


class LearnedSlotInit(nn.Module):
  """Deterministic learned slot queries (Motion Grouping's `nn.Embedding(K, D)`).

  Attributes:
    num_slots: K.
    slot_dim: D.
  """

  num_slots: int
  slot_dim: int

  @nn.compact
  def __call__(self, batch_size: int) -> jnp.ndarray:
    """Returns `[B, K, D]` copies of the learned queries (init N(0, 1) like nn.Embedding)."""
    queries = self.param(
      "queries", nn.initializers.normal(stddev=1.0), (self.num_slots, self.slot_dim)
    )
    return jnp.broadcast_to(queries[None], (batch_size, self.num_slots, self.slot_dim))


class SlotAttention(nn.Module):
  """Iterative slot attention; see the module docstring for the exact update.

  Attributes:
    num_iterations: Number of attention iterations (one GRU/MLP shared by all).
    mlp_hidden_size: Hidden width of the residual MLP; None disables the MLP (SAVi).
    epsilon: Added to the attention before the weighted-mean normalisation.
    use_qkv_bias: Bias in the q/k/v projections (Motion Grouping: True, original: False).
    use_gru: GRU slot update; False gives `slots_prev + updates` (SMTC).
    gradient_mode: 'full', 'last_iteration' or 'last_iteration_to_init'.
    return_all_attention: Return attention of every iteration `[iters, B, K, N]` instead of
      the last one `[B, K, N]`.
    layer_norm_epsilon: LayerNorm epsilon (PyTorch 1e-5; the Keras original used 1e-3).
  """

  num_iterations: int = 3
  mlp_hidden_size: int | None = 128
  epsilon: float = 1e-8
  use_qkv_bias: bool = False
  use_gru: bool = True
  gradient_mode: GradientMode = "full"
  return_all_attention: bool = False
  layer_norm_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, slots: jnp.ndarray, inputs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Runs the iterations.

    Args:
      slots: `[B, K, D]` initial slots (D is the slot and q/k/v size).
      inputs: `[B, N, D_in]` input set.

    Returns:
      slots: `[B, K, D]` final slots.
      attention: softmax over slots (before epsilon and the weighted-mean normalisation;
        sums to 1 over K) of the last iteration `[B, K, N]`, or of every iteration
        `[iters, B, K, N]` when `return_all_attention`.
    """
    if self.gradient_mode not in _GRADIENT_MODES:
      raise ValueError(
        f"SlotAttention.gradient_mode must be one of {_GRADIENT_MODES}, got {self.gradient_mode!r}."
      )
    if self.num_iterations < 1:
      raise ValueError(f"SlotAttention.num_iterations must be >= 1, got {self.num_iterations}.")
    if slots.ndim != 3 or inputs.ndim != 3 or slots.shape[0] != inputs.shape[0]:
      raise ValueError(
        f"SlotAttention expects slots [B, K, D] and inputs [B, N, D_in] "
        f"with the same B, got {slots.shape} and {inputs.shape}."
      )
    slot_dim = slots.shape[-1]

    inputs = nn.LayerNorm(epsilon=self.layer_norm_epsilon, name="norm_inputs")(inputs)
    keys = nn.Dense(slot_dim, use_bias=self.use_qkv_bias, name="project_k")(inputs)
    values = nn.Dense(slot_dim, use_bias=self.use_qkv_bias, name="project_v")(inputs)

    norm_slots = nn.LayerNorm(epsilon=self.layer_norm_epsilon, name="norm_slots")
    project_q = nn.Dense(slot_dim, use_bias=self.use_qkv_bias, name="project_q")
    gru = GRUCell(slot_dim, name="gru") if self.use_gru else None
    if self.mlp_hidden_size is not None:
      norm_mlp = nn.LayerNorm(epsilon=self.layer_norm_epsilon, name="norm_mlp")
      mlp_hidden = nn.Dense(self.mlp_hidden_size, name="mlp_hidden")
      mlp_out = nn.Dense(slot_dim, name="mlp_out")

    init_slots = slots
    attentions = []
    for iteration in range(self.num_iterations):
      if iteration == self.num_iterations - 1:
        if self.gradient_mode == "last_iteration":
          slots = jax.lax.stop_gradient(slots)
        elif self.gradient_mode == "last_iteration_to_init":
          slots = jax.lax.stop_gradient(slots) - jax.lax.stop_gradient(init_slots) + init_slots
      slots_prev = slots
      queries = project_q(norm_slots(slots)) * slot_dim**-0.5
      logits = jnp.einsum("bkd,bnd->bkn", queries, keys)
      attention = precision.softmax_float32(logits, axis=1)
      attentions.append(attention)
      weights = attention + self.epsilon
      weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
      updates = jnp.einsum("bkn,bnd->bkd", weights, values)
      slots = gru(updates, slots_prev) if gru is not None else slots_prev + updates
      if self.mlp_hidden_size is not None:
        slots = slots + mlp_out(nn.relu(mlp_hidden(norm_mlp(slots))))

    if self.return_all_attention:
      return slots, jnp.stack(attentions, axis=0)
    return slots, attentions[-1]
