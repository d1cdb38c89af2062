"""Tests for vosjax.models.slot_attention."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from references import reference_slot_attention as reference
from vosjax.models import autoencoder
from vosjax.models import slot_attention as sa

B, K, N, D, D_IN = 2, 4, 10, 8, 6
_MLP_HIDDEN = 12
# Every module in this file uses this MLP width so that one parameter set serves all.
_slot_attention = functools.partial(sa.SlotAttention, mlp_hidden_size=_MLP_HIDDEN)


def _random_params(module, *args, seed=0):
  """Random parameters with the module's tree structure, without compiling `init`.

  Every entry is random (biases and LayerNorm scales included, so that none of them is a
  trivial 0 or 1): kernels N(0, 1/fan_in), scales 1 + N(0, 0.5^2), others N(0, 0.5^2).
  """
  shapes = jax.eval_shape(lambda key: module.init(key, *args), jax.random.key(0))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    name = path[-1].key
    if name == "kernel":
      return jnp.asarray(noise / np.sqrt(np.prod(leaf.shape[:-1])))
    if name == "scale":
      return jnp.asarray(1.0 + 0.5 * noise)
    return jnp.asarray(0.5 * noise)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  slots = rng.normal(size=(B, K, D)).astype(np.float32)
  inputs = rng.normal(size=(B, N, D_IN)).astype(np.float32)
  return jnp.asarray(slots), jnp.asarray(inputs)


@functools.lru_cache(maxsize=None)
def _full_params(seed=0):
  """Random parameters of the largest variant (q/k/v bias, GRU, MLP); initialised once
  because parameter initialisation dominates this file's run time."""
  module = _slot_attention(use_qkv_bias=True)
  return _random_params(module, *_inputs(), seed=seed)


def _init(module, slots, inputs, seed=0):
  """Parameters for `module`: the full random set minus the parts it does not use."""
  del slots, inputs
  params = dict(_full_params(seed))
  if not module.use_qkv_bias:
    for name in ("project_q", "project_k", "project_v"):
      params[name] = {"kernel": params[name]["kernel"]}
  if not module.use_gru:
    del params["gru"]
  if module.mlp_hidden_size is None:
    for name in ("norm_mlp", "mlp_hidden", "mlp_out"):
      del params[name]
  return params


@pytest.mark.parametrize(
  "use_qkv_bias,use_gru,use_mlp",
  [(False, True, True), (True, True, True), (True, False, True), (False, True, False)],
)
def test_matches_numpy_reference(use_qkv_bias, use_gru, use_mlp):
  module = _slot_attention(
    num_iterations=3,
    mlp_hidden_size=_MLP_HIDDEN if use_mlp else None,
    epsilon=1e-8,
    use_qkv_bias=use_qkv_bias,
    use_gru=use_gru,
    return_all_attention=True,
  )
  slots, inputs = _inputs()
  params = _init(module, slots, inputs)
  out_slots, attn = module.apply({"params": params}, slots, inputs)
  np_params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
  ref_slots, ref_attn = reference.slot_attention(
    np_params,
    np.asarray(slots),
    np.asarray(inputs),
    num_iterations=3,
    epsilon=1e-8,
    layer_norm_epsilon=1e-5,
    use_gru=use_gru,
    use_mlp=use_mlp,
  )
  assert attn.shape == (3, B, K, N)
  np.testing.assert_allclose(np.asarray(out_slots), ref_slots, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(attn), ref_attn, rtol=1e-5, atol=1e-6)


def test_large_epsilon_is_added_to_attention():
  # With a big epsilon the weighted mean becomes nearly uniform: this separates "added to
  # the attention" (ours, as the reference) from "added to the denominator" (SAVi).
  module = _slot_attention(num_iterations=2, epsilon=0.5)
  slots, inputs = _inputs(1)
  params = _init(module, slots, inputs)
  out_slots, _ = module.apply({"params": params}, slots, inputs)
  np_params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
  ref_slots, _ = reference.slot_attention(
    np_params,
    np.asarray(slots),
    np.asarray(inputs),
    num_iterations=2,
    epsilon=0.5,
    layer_norm_epsilon=1e-5,
  )
  np.testing.assert_allclose(np.asarray(out_slots), ref_slots, rtol=1e-5, atol=1e-5)


def test_attention_is_softmax_over_slots():
  module = _slot_attention(num_iterations=3)
  slots, inputs = _inputs(2)
  params = _init(module, slots, inputs)
  _, attn = module.apply({"params": params}, slots, inputs)
  assert attn.shape == (B, K, N)
  np.testing.assert_allclose(np.asarray(attn.sum(axis=1)), 1.0, atol=1e-6)
  assert float(attn.min()) >= 0.0


def test_invariant_to_input_permutation():
  module = _slot_attention(num_iterations=3, use_qkv_bias=True)
  slots, inputs = _inputs(3)
  params = _init(module, slots, inputs)
  perm = np.random.default_rng(0).permutation(N)
  out, attn = module.apply({"params": params}, slots, inputs)
  out_perm, attn_perm = module.apply({"params": params}, slots, inputs[:, perm])
  np.testing.assert_allclose(np.asarray(out_perm), np.asarray(out), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    np.asarray(attn_perm), np.asarray(attn[:, :, perm]), rtol=1e-5, atol=1e-6
  )


def test_equivariant_to_slot_permutation_with_gaussian_init():
  init = sa.GaussianSlotInit(num_slots=K, slot_dim=D)
  module = _slot_attention(num_iterations=3)
  _, inputs = _inputs(4)
  noise = jax.random.normal(jax.random.key(5), (B, K, D))
  init_params = _random_params(init, B, noise)
  slots = init.apply({"params": init_params}, B, noise)
  params = _init(module, slots, inputs)
  perm = np.array([2, 0, 3, 1])
  slots_perm = init.apply({"params": init_params}, B, noise[:, perm])
  np.testing.assert_allclose(np.asarray(slots_perm), np.asarray(slots[:, perm]), atol=1e-6)
  out, attn = module.apply({"params": params}, slots, inputs)
  out_perm, attn_perm = module.apply({"params": params}, slots_perm, inputs)
  np.testing.assert_allclose(np.asarray(out_perm), np.asarray(out[:, perm]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(attn_perm), np.asarray(attn[:, perm]), rtol=1e-5, atol=1e-6)


def test_gaussian_init_uses_slots_rng_and_checks_noise_shape():
  init = sa.GaussianSlotInit(num_slots=K, slot_dim=D)
  variables = init.init({"params": jax.random.key(0), "slots": jax.random.key(1)}, B)
  first = init.apply(variables, B, rngs={"slots": jax.random.key(2)})
  second = init.apply(variables, B, rngs={"slots": jax.random.key(3)})
  assert first.shape == (B, K, D)
  assert not np.allclose(np.asarray(first), np.asarray(second))
  mu = variables["params"]["mu"]
  sigma = jnp.exp(variables["params"]["log_sigma"])
  noise = jax.random.normal(jax.random.key(4), (B, K, D))
  np.testing.assert_allclose(
    np.asarray(init.apply(variables, B, noise)), np.asarray(mu + sigma * noise), atol=1e-6
  )
  with pytest.raises(ValueError, match="noise must have shape"):
    init.apply(variables, B, jnp.zeros((B, K + 1, D)))


def test_learned_init_is_shared_over_batch():
  init = sa.LearnedSlotInit(num_slots=K, slot_dim=D)
  variables = init.init(jax.random.key(0), 3)
  slots = init.apply(variables, 3)
  assert slots.shape == (3, K, D)
  np.testing.assert_array_equal(np.asarray(slots[0]), np.asarray(slots[2]))
  np.testing.assert_array_equal(np.asarray(slots[1]), np.asarray(variables["params"]["queries"]))


def test_rejects_bad_arguments():
  slots, inputs = _inputs()
  with pytest.raises(ValueError, match="gradient_mode"):
    sa.SlotAttention(gradient_mode="nope").init(jax.random.key(0), slots, inputs)
  with pytest.raises(ValueError, match="same B"):
    sa.SlotAttention().init(jax.random.key(0), slots, inputs[:1])


def _grads(mode, params, slots, inputs, cotangent, iters=3):
  module = _slot_attention(num_iterations=iters, gradient_mode=mode)

  def loss(p, s):
    out, _ = module.apply({"params": p}, s, inputs)
    return jnp.sum(out * cotangent)

  return jax.grad(loss, argnums=(0, 1))(params, slots)


def _manual_last_iteration(params, slots, inputs, cotangent, iters=3):
  """Gradient of the last iteration alone, taken at the (constant) pre-last slots."""
  head = _slot_attention(num_iterations=iters - 1)
  last = _slot_attention(num_iterations=1)
  slots_mid, _ = head.apply({"params": params}, slots, inputs)

  def loss(p, s):
    out, _ = last.apply({"params": p}, s, inputs)
    return jnp.sum(out * cotangent)

  return jax.grad(loss, argnums=(0, 1))(params, slots_mid)


def test_straight_through_gradients_only_pass_the_last_iteration():
  slots, inputs = _inputs(6)
  module = _slot_attention(num_iterations=3)
  params = _init(module, slots, inputs)
  cotangent = jax.random.normal(jax.random.key(7), (B, K, D))
  full_p, full_s = _grads("full", params, slots, inputs, cotangent)
  last_p, last_s = _grads("last_iteration", params, slots, inputs, cotangent)
  init_p, init_s = _grads("last_iteration_to_init", params, slots, inputs, cotangent)
  manual_p, manual_s_mid = _manual_last_iteration(params, slots, inputs, cotangent)

  def assert_trees_close(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=2e-5)

  assert_trees_close(last_p, manual_p)
  assert_trees_close(init_p, manual_p)
  # 'last_iteration' cuts the initial slots off; the SMTC variant hands them the gradient
  # of the pre-last slots unchanged.
  np.testing.assert_array_equal(np.asarray(last_s), 0.0)
  np.testing.assert_allclose(np.asarray(init_s), np.asarray(manual_s_mid), rtol=1e-4, atol=2e-5)
  # Full backprop differs (gradient also flows through the first two iterations).
  assert not np.allclose(np.asarray(full_s), np.asarray(init_s), atol=1e-4)
  diffs = [
    float(jnp.max(jnp.abs(x - y)))
    for x, y in zip(jax.tree_util.tree_leaves(full_p), jax.tree_util.tree_leaves(last_p))
  ]
  assert max(diffs) > 1e-4


def test_gradient_modes_share_the_forward_pass():
  slots, inputs = _inputs(8)
  outs = []
  for mode in ("full", "last_iteration", "last_iteration_to_init"):
    module = _slot_attention(num_iterations=3, gradient_mode=mode)
    params = _init(module, slots, inputs)
    outs.append(np.asarray(module.apply({"params": params}, slots, inputs)[0]))
  np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outs[2], outs[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- autoencoder

_SMALL_AE = dict(
  num_slots=3,
  encoder_widths=(8, 8),
  slot_dim=8,
  slot_mlp_hidden_size=16,
  decoder_initial_size=(8, 8),
  decoder_width=8,
)


def test_autoencoder_shapes_masks_and_slot_equivariance():
  model = autoencoder.SlotAttentionAutoEncoder(**_SMALL_AE)
  image = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.key(1), (2, 3, 8))
  params = _random_params(model, image, noise)
  apply = jax.jit(model.apply)
  out = apply({"params": params}, image, noise)
  assert out["recon"].shape == (2, 32, 32, 3)
  assert out["masks"].shape == (2, 3, 32, 32)
  assert out["slot_recons"].shape == (2, 3, 32, 32, 3)
  assert out["attn"].shape == (2, 3, 32 * 32)
  np.testing.assert_allclose(np.asarray(out["masks"].sum(1)), 1.0, atol=1e-5)
  np.testing.assert_allclose(
    np.asarray(out["recon"]),
    np.asarray((out["slot_recons"] * out["masks"][..., None]).sum(1)),
    atol=1e-5,
  )
  # Permuting the slot noise permutes the slots' masks and leaves the image unchanged.
  perm = np.array([2, 0, 1])
  out_perm = apply({"params": params}, image, noise[:, perm])
  np.testing.assert_allclose(
    np.asarray(out_perm["masks"]), np.asarray(out["masks"][:, perm]), atol=1e-4
  )
  np.testing.assert_allclose(np.asarray(out_perm["recon"]), np.asarray(out["recon"]), atol=1e-4)


def test_autoencoder_default_parameter_count_matches_original():
  model = autoencoder.SlotAttentionAutoEncoder()
  shapes = jax.eval_shape(
    lambda key: model.init({"params": key, "slots": key}, jnp.zeros((1, 128, 128, 3))),
    jax.random.key(0),
  )
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
  conv = lambda k, cin, cout: k * k * cin * cout + cout
  dense = lambda cin, cout, bias=True: cin * cout + (cout if bias else 0)
  # Layer by layer, the Keras model of google-research/slot_attention/model.py.
  encoder = conv(5, 3, 64) + 3 * conv(5, 64, 64) + dense(4, 64) + 2 * 64 + 2 * dense(64, 64)
  slot_attn = (
    3 * 2 * 64
    + 2 * 64
    + 3 * dense(64, 64, bias=False)
    + 2 * 64 * 192
    + 2 * 192  # GRUCell(reset_after=True): bias shape (2, 192)
    + dense(64, 128)
    + dense(128, 64)
  )
  decoder = dense(4, 64) + 5 * conv(5, 64, 64) + conv(3, 64, 4)
  assert count == encoder + slot_attn + decoder == 890308


def test_autoencoder_rejects_bad_resolution():
  model = autoencoder.SlotAttentionAutoEncoder(**_SMALL_AE)
  with pytest.raises(ValueError, match="power of 2"):
    model.init({"params": jax.random.key(0), "slots": jax.random.key(1)}, jnp.zeros((1, 32, 64, 3)))
  with pytest.raises(ValueError, match="power of 2"):
    model.init({"params": jax.random.key(0), "slots": jax.random.key(1)}, jnp.zeros((1, 24, 24, 3)))
