"""Plain NumPy (float64) transcription of slot attention, for reference tests.

Written line by line from the equations in Locatello et al. 2020 / the PyTorch Motion
Grouping code (GRU with the PyTorch `nn.GRUCell` equations), reading weights from the flax
parameter dict of `vosjax.models.slot_attention.SlotAttention`.
"""

import numpy as np


def layer_norm(x: np.ndarray, params: dict, eps: float) -> np.ndarray:
  mean = x.mean(axis=-1, keepdims=True)
  var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * params["scale"] + params["bias"]


def dense(x: np.ndarray, params: dict) -> np.ndarray:
  out = x @ np.asarray(params["kernel"], np.float64)
  if "bias" in params:
    out = out + params["bias"]
  return out


def sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def gru_cell(x: np.ndarray, h: np.ndarray, params: dict) -> np.ndarray:
  """PyTorch GRUCell: gates (r, z, n); reset applied after the hidden projection."""
  d = h.shape[-1]
  w_i = np.asarray(params["input"]["kernel"], np.float64)
  b_i = np.asarray(params["input"]["bias"], np.float64)
  w_h = np.asarray(params["hidden"]["kernel"], np.float64)
  b_h = np.asarray(params["hidden"]["bias"], np.float64)
  r = sigmoid(x @ w_i[:, :d] + b_i[:d] + h @ w_h[:, :d] + b_h[:d])
  z = sigmoid(x @ w_i[:, d : 2 * d] + b_i[d : 2 * d] + h @ w_h[:, d : 2 * d] + b_h[d : 2 * d])
  n = np.tanh(x @ w_i[:, 2 * d :] + b_i[2 * d :] + r * (h @ w_h[:, 2 * d :] + b_h[2 * d :]))
  return (1.0 - z) * n + z * h


def slot_attention(
  params: dict,
  slots: np.ndarray,
  inputs: np.ndarray,
  *,
  num_iterations: int,
  epsilon: float,
  layer_norm_epsilon: float,
  use_gru: bool = True,
  use_mlp: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """Returns final slots `[B, K, D]` and per-iteration attention `[iters, B, K, N]`."""
  p = {k: v for k, v in params.items()}
  slots = np.asarray(slots, np.float64)
  inputs = layer_norm(np.asarray(inputs, np.float64), p["norm_inputs"], layer_norm_epsilon)
  d = slots.shape[-1]
  k = dense(inputs, p["project_k"])
  v = dense(inputs, p["project_v"])
  attentions = []
  for _ in range(num_iterations):
    slots_prev = slots
    q = dense(layer_norm(slots, p["norm_slots"], layer_norm_epsilon), p["project_q"])
    logits = np.einsum("bkd,bnd->bkn", q, k) / np.sqrt(d)
    logits = logits - logits.max(axis=1, keepdims=True)
    attn = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    attentions.append(attn)
    w = attn + epsilon
    w = w / w.sum(axis=2, keepdims=True)
    updates = np.einsum("bkn,bnd->bkd", w, v)
    if use_gru:
      slots = gru_cell(updates, slots_prev, p["gru"])
    else:
      slots = slots_prev + updates
    if use_mlp:
      hidden = np.maximum(
        dense(layer_norm(slots, p["norm_mlp"], layer_norm_epsilon), p["mlp_hidden"]), 0
      )
      slots = slots + dense(hidden, p["mlp_out"])
  return slots, np.stack(attentions)
