"""Plain NumPy (float64) transcription of the official SMTC forward and losses, for reference tests.

Written line by line from `shvdiwnkozbw/SMTC` `src/model/model_twostage.py`
(`SlotAttention.forward`, `SlotAttentionAutoEncoder.forward`/`calculate_transport`) and
`src/train.py` (`differ_loss` inline, `dense_transport_loss`, `sinkhorn_cluster`,
`filter_valid_instance`, `matching_cost`, `object_loss`), with PyTorch tensors replaced by NumPy
arrays and the weights read from the flax parameter dicts of `vosjax.models.smtc` (kernels
`[in, out]`). Matching uses scipy's `linear_sum_assignment`, as the official code does.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment


def f64(tree):
  if isinstance(tree, dict):
    return {k: f64(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)


def layer_norm(x, p, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def linear(x, p):
  return x @ p["kernel"] + p["bias"]


def softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def normalize(x, axis=-1, eps=1e-12):  # F.normalize
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def slot_attention(p, inputs, noise, iters, eps=1e-8):
  """`SlotAttention.forward`: inputs [b, n, d], noise [b, s, p, d] (torch.normal = mu + std*noise).
  Returns semantic_slots, semantic_attn (dots), instance_slots, instance_attn (dots)."""
  p = f64(p)
  inputs = layer_norm(np.asarray(inputs, np.float64), p["norm_inputs"])
  k = linear(inputs, p["project_k"])
  v = linear(inputs, p["project_v"])
  b, n, d = inputs.shape
  scale = d**-0.5
  mlp = lambda s: linear(
    np.maximum(linear(layer_norm(s, p["norm_mlp"]), p["mlp_hidden"]), 0), p["mlp_out"]
  )
  semantic_slots = np.broadcast_to(p["slots_mu"][:, :, 0], (b,) + p["slots_mu"].shape[1:2] + (d,))
  instance_slots = p["slots_mu"] + np.exp(p["slots_sigma"]) * np.asarray(noise, np.float64)
  slots = semantic_slots
  for _ in range(iters):
    slots_prev = slots
    q = linear(layer_norm(slots, p["norm_slots"]), p["project_q"])
    dots = np.einsum("bid,bjd->bij", q, k) * scale
    attn = softmax(dots, 1) + eps
    attn = attn / attn.sum(-1, keepdims=True)
    slots = slots_prev + np.einsum("bjd,bij->bid", v, attn)
    slots = slots + mlp(slots)
  semantic_slots, semantic_attn = slots, dots
  slots = instance_slots
  for _ in range(iters):
    slots_prev = slots
    q = linear(layer_norm(slots, p["norm_slots"]), p["project_q"])
    dots = np.einsum("bkid,bjd->bkij", q, k) * scale
    attn = softmax(dots, 2) + eps
    semantic_mask = (semantic_attn > 0.3).astype(np.float64)
    attn = attn * semantic_mask[:, :, None]
    attn = attn / (attn.sum(-1, keepdims=True) + 1e-8)
    slots = slots_prev + np.einsum("bjd,bkij->bkid", v, attn)
    slots = slots + mlp(slots)
  return semantic_slots, semantic_attn, slots, dots


def bilinear_resize(x, out_h, out_w):
  """`F.interpolate(x, (out_h, out_w), mode='bilinear')` (align_corners=False) on [n, c, h, w]."""

  def axis_weights(in_size, out_size):
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = src - i0
    w = np.zeros((out_size, in_size))
    w[np.arange(out_size), i0] += 1 - lam
    w[np.arange(out_size), i1] += lam
    return w

  wh, ww = axis_weights(x.shape[2], out_h), axis_weights(x.shape[3], out_w)
  return np.einsum("oh,nchw,pw->ncop", wh, x, ww)


def temporal_fusion(p, keys, end_size):
  """`forward` up to `k = k + correlation_map` with `calculate_transport`; keys [b, t, h, w, c]
  in, fused [b, t, h, w, c] out (the official works on [(b t), c, h, w])."""
  p = f64(p)
  keys = np.asarray(keys, np.float64)
  b, t, h, w, c = keys.shape
  k = keys.reshape(b * t, h, w, c).transpose(0, 3, 1, 2)
  resize_k = bilinear_resize(k, *end_size)
  k = k.reshape(b, t, c, h * w)
  resize_k = resize_k.reshape(b, t, c, end_size[0] * end_size[1])
  x_end = np.roll(resize_k, 1, axis=1).reshape(b * t, c, -1)
  x_start = k.reshape(b * t, c, h * w)
  correlation = np.einsum("bcn,bcm->bnm", x_end, x_start)
  # Conv1d(k=1): weight [out, in, 1] == kernel.T
  correlation = np.einsum("bnm,no->bom", correlation, p["kernel"]) + p["bias"][None, :, None]
  fused = k + correlation.reshape(b, t, c, h * w)
  return fused.transpose(0, 1, 3, 2).reshape(b, t, h, w, c)


def mlp_slot(p, x):
  p = f64(p)
  return normalize(linear(np.maximum(linear(x, p["hidden"]), 0), p["out"]))


# ---------------------------------------------------------------------------------------- losses


def differ_loss(motion_mask):
  """motion_mask (semantic logits) [b, t, s, hw]."""
  m = normalize(softmax(motion_mask, -2) + 1e-8, -1)
  loss = np.einsum("btmc,btnc->btmn", m, m)
  num_slots = motion_mask.shape[2]
  mask = np.ones_like(loss)
  mask[:, :, np.arange(num_slots), np.arange(num_slots)] = 0
  return np.sum(loss * mask) / np.sum(mask)


def sinkhorn_cluster(mu_s, mu_t, M, eps=0.05):
  K = np.exp(-M / eps)
  mu_s = mu_s / np.sum(mu_s, -1, keepdims=True)
  mu_t = mu_t / np.sum(mu_t, -1, keepdims=True)
  b = np.ones_like(mu_t)
  for _ in range(3):
    a = mu_s / np.sum(K * b[:, None, :], -1)
    b = mu_t / np.sum(K * a[:, :, None], 1)
  return a[:, :, None] * K * b[:, None, :]


def dense_transport_loss(map_s, map_t, token_s, token_t):
  """map [b, t, s, hw], token [b, t, hw, c]."""
  cost_matrix, mu_s, mu_t, cross_matrix = [], [], [], []
  token_s, token_t = normalize(token_s), normalize(token_t)
  for i in range(map_s.shape[1]):
    for j in range(map_t.shape[1]):
      if i == j:
        continue
      cost_matrix.append(np.einsum("bnc,bmc->bnm", token_s[:, i], token_t[:, j]))
      mu_s.append(np.abs(token_s[:, i]).sum(-1))
      mu_t.append(np.abs(token_t[:, j]).sum(-1))
      cross = np.sum(
        softmax(map_t[:, j][:, :, None, :], 1)
        * np.log(softmax(map_s[:, i][:, :, :, None], 1) + 1e-8),
        axis=1,
      )
      cross_matrix.append(cross)
  cost_matrix, mu_s, mu_t, cross_matrix = (
    np.concatenate(x, 0) for x in (cost_matrix, mu_s, mu_t, cross_matrix)
  )
  T = sinkhorn_cluster(mu_s, mu_t, 1 - cost_matrix)
  return np.mean(-cross_matrix * T, 0).sum()


def filter_valid_instance(mask, semantic, instance):
  mask = (softmax(mask, -2) > 0.3).astype(np.float64).mean(-1, keepdims=True)
  similarity = np.einsum("btsc,btspc->btsp", normalize(semantic), normalize(instance))
  return (similarity > 0.5).astype(np.float64) * (mask > 0.2).astype(np.float64)


def matching_cost(similarity):
  cost = 1 - similarity
  b, s, p, q = cost.shape
  indices = []
  for i in range(b):
    for j in range(s):
      row, col = linear_sum_assignment(cost[i, j])
      indice = np.tile(np.arange(q)[None], (p, 1))
      indice[row, col] = 0
      indice[row, 0] = col
      indices.append(indice)
  return np.stack(indices, 0).reshape(b, s, p, q)


def object_loss(valid_instance, valid_instance_t, objects, objects_t):
  """valid [b, t, s, p], objects [b, t, s, p, c]."""
  loss_stat, valid_stat = [], []
  for i in range(objects.shape[1]):
    for j in range(objects_t.shape[1]):
      instance, instance_t = objects[:, i], objects_t[:, j]
      similarity = np.einsum("bspc,bsqc->bspq", instance, instance_t)
      sort_idx = matching_cost(similarity)
      valid_t = np.take_along_axis(valid_instance_t[:, j], sort_idx[..., 0], -1)
      pos = np.take_along_axis(instance_t, sort_idx[..., 0][..., None], -2)
      repeat_t = np.repeat(instance_t[:, :, None], objects.shape[-2], axis=2)  # b s p q c
      neg = np.take_along_axis(repeat_t, sort_idx[..., 1:][..., None], -2)
      loss = valid_instance[:, i] * (
        np.maximum(np.sum(instance[..., None, :] * neg, -1) - 0.5, 0).mean(-1)
        - valid_t * np.sum(instance * pos, -1)
      )
      loss_stat.append(loss)
      valid_stat.append(valid_instance[:, i])
  loss_stat, valid_stat = np.concatenate(loss_stat, 0), np.concatenate(valid_stat, 0)
  return np.sum(loss_stat) / np.sum(valid_stat + 1e-10)
