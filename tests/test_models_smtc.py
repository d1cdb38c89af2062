"""SMTC model (vosjax.models.smtc, smtc_slot_attention) against a NumPy transcription of the
official forward (tests/references/reference_smtc.py) with the same parameters and the same
instance noise."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from references import reference_smtc as reference
from vosjax.models import smtc
from vosjax.models import smtc_slot_attention

B, T, H, W, D = 2, 3, 5, 4, 16
S, P = 4, 3
N = H * W
CORRELATION_SIZE = (3, 2)


def _random_params(module, *args, seed=0):
  """Every leaf random (biases, LayerNorm scales and the slot Gaussian too), without `init`."""
  shapes = jax.eval_shape(
    lambda key: module.init({"params": key, "instances": key}, *args), jax.random.key(0)
  )["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    name = path[-1].key
    if name == "kernel":
      return jnp.asarray(noise / np.sqrt(leaf.shape[0]))
    if name == "scale":
      return jnp.asarray(1.0 + 0.3 * noise)
    if name == "slots_sigma":
      return jnp.asarray(-1.0 + 0.3 * noise)  # std around 0.37
    if name == "slots_mu":
      return jnp.asarray(noise)
    return jnp.asarray(0.3 * noise)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _slot_attention(iterations):
  return smtc_slot_attention.SemanticInstanceSlotAttention(
    num_semantic_slots=S, num_instances=P, num_iterations=iterations
  )


@functools.lru_cache(maxsize=None)
def _slot_inputs(seed=0):
  rng = np.random.default_rng(seed)
  inputs = rng.normal(size=(B, N, D)).astype(np.float32)
  noise = rng.normal(size=(B, S, P, D)).astype(np.float32)
  return jnp.asarray(inputs), jnp.asarray(noise)


@functools.lru_cache(maxsize=None)
def _slot_params(seed=0):
  return _random_params(_slot_attention(3), *_slot_inputs(), seed=seed)


@pytest.mark.parametrize("iterations", [3, 5])
def test_two_stage_slot_attention_matches_the_official_forward(iterations):
  inputs, noise = _slot_inputs()
  params = _slot_params()
  out = _slot_attention(iterations).apply({"params": params}, inputs, noise)
  ref_slots, ref_logits, ref_instances, ref_instance_logits = reference.slot_attention(
    params, inputs, noise, iterations
  )
  # The stage-2 mask thresholds the raw stage-1 logits at 0.3: float32 vs float64 could flip a
  # logit that close to it, so the test needs a margin (and a mask that is neither empty nor full).
  assert np.abs(ref_logits - 0.3).min() > 1e-4
  assert 0.1 < (ref_logits > 0.3).mean() < 0.9
  assert out.semantic_slots.shape == (B, S, D) and out.semantic_logits.shape == (B, S, N)
  assert out.instance_slots.shape == (B, S, P, D) and out.instance_logits.shape == (B, S, P, N)
  tolerance = dict(rtol=1e-4, atol=1e-4)  # float32 against float64
  np.testing.assert_allclose(out.semantic_slots, ref_slots, **tolerance)
  np.testing.assert_allclose(out.semantic_logits, ref_logits, **tolerance)
  np.testing.assert_allclose(out.instance_slots, ref_instances, **tolerance)
  np.testing.assert_allclose(out.instance_logits, ref_instance_logits, **tolerance)


def test_mask_is_on_raw_logits_not_softmax():
  """Raising the threshold above every raw logit zeroes the instance updates: the instances move by
  the MLP only, which the reference reproduces with no mask at all (attention weights 0)."""
  inputs, noise = _slot_inputs()
  params = _slot_params()
  module = smtc_slot_attention.SemanticInstanceSlotAttention(
    num_semantic_slots=S, num_instances=P, num_iterations=3, mask_threshold=1e6
  )
  out = module.apply({"params": params}, inputs, noise)
  p = reference.f64(params)
  slots = p["slots_mu"] + np.exp(p["slots_sigma"]) * np.asarray(noise, np.float64)
  for _ in range(3):
    hidden = np.maximum(
      reference.linear(reference.layer_norm(slots, p["norm_mlp"]), p["mlp_hidden"]), 0
    )
    slots = slots + reference.linear(hidden, p["mlp_out"])
  np.testing.assert_allclose(out.instance_slots, slots, rtol=1e-4, atol=1e-4)


def test_instance_noise_is_drawn_from_the_instances_stream():
  inputs, _ = _slot_inputs()
  module, params = _slot_attention(3), _slot_params()
  draw = lambda seed: module.apply(
    {"params": params}, inputs, rngs={"instances": jax.random.key(seed)}
  )
  first, again, other = draw(0), draw(0), draw(1)
  np.testing.assert_array_equal(first.instance_slots, again.instance_slots)
  assert np.abs(np.asarray(first.instance_slots - other.instance_slots)).max() > 1e-2
  np.testing.assert_array_equal(first.semantic_slots, other.semantic_slots)  # deterministic


def _grad(module, params, inputs, noise, loss_of):
  return jax.jit(jax.grad(lambda p: loss_of(module.apply({"params": p}, inputs, noise))))(params)


def test_no_gradient_reaches_the_gaussian_through_the_instance_sample():
  inputs, noise = _slot_inputs()
  module, params = _slot_attention(3), _slot_params()
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(B, S, P, D)), jnp.float32)
  grads = _grad(
    module,
    params,
    inputs,
    noise,
    lambda out: jnp.sum(out.instance_slots * weights) + jnp.sum(out.instance_logits),
  )
  np.testing.assert_array_equal(grads["slots_mu"], 0.0)
  np.testing.assert_array_equal(grads["slots_sigma"], 0.0)
  assert np.abs(np.asarray(grads["project_q"]["kernel"])).max() > 1e-3  # the loss is live


def test_stage_one_straight_through_sends_the_last_iteration_gradient_to_mu():
  """With one clip, d loss / d mu of the 3-iteration module equals the gradient of a 1-iteration
  module started at the slots the first two iterations produced (the straight-through skips them),
  and sigma gets nothing."""
  inputs, noise = _slot_inputs()
  inputs, noise = inputs[:1], noise[:1]
  params = _slot_params()
  weights = jnp.asarray(np.random.default_rng(2).normal(size=(1, S, D)), jnp.float32)
  loss_of = lambda out: jnp.sum(out.semantic_slots * weights) + jnp.sum(out.semantic_logits**2)
  grads = _grad(_slot_attention(3), params, inputs, noise, loss_of)
  before_last = _slot_attention(2).apply({"params": params}, inputs, noise).semantic_slots
  restarted = dict(params, slots_mu=before_last[:, :, None])
  last_only = _slot_attention(1)
  np.testing.assert_allclose(  # same forward value
    last_only.apply({"params": restarted}, inputs, noise).semantic_slots,
    _slot_attention(3).apply({"params": params}, inputs, noise).semantic_slots,
    atol=1e-5,
  )
  expected = _grad(last_only, restarted, inputs, noise, loss_of)["slots_mu"]
  assert np.abs(np.asarray(grads["slots_mu"])).max() > 1e-2
  np.testing.assert_allclose(grads["slots_mu"], expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(grads["slots_sigma"], 0.0)


def test_xavier_uniform_bound_is_pytorchs():
  sigma = smtc_slot_attention.torch_xavier_uniform_init(jax.random.key(0), (1, 16, 1, 384))
  bound = np.sqrt(6.0 / (16 * 384 + 384))
  assert float(jnp.abs(sigma).max()) <= bound and float(jnp.abs(sigma).max()) > 0.95 * bound


@pytest.mark.parametrize("grid", [(H, W), (2, 3), (3, 2)])
def test_temporal_fusion_matches_the_official_calculate_transport(grid):
  """Down-, up- and no resampling of the previous frame's keys (PyTorch bilinear rules)."""
  keys = jnp.asarray(np.random.default_rng(3).normal(size=(B, T, H, W, D)), jnp.float32)
  module = smtc.TemporalCorrelationFusion(correlation_size=grid)
  params = _random_params(module, keys, seed=4)
  fused = module.apply({"params": params}, keys)
  expected = reference.temporal_fusion(params["transport_proj"], keys, grid)
  assert fused.shape == keys.shape
  np.testing.assert_allclose(fused, expected, rtol=1e-4, atol=1e-4)


def test_bilinear_reference_is_pytorchs():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(5).normal(size=(2, 3, 7, 5))
  for size in [(3, 2), (16, 16), (7, 5)]:
    expected = torch.nn.functional.interpolate(
      torch.from_numpy(x), size, mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_allclose(reference.bilinear_resize(x, *size), expected, atol=1e-12)


def test_whole_model_outputs_and_inference_masks():
  rng = np.random.default_rng(6)
  keys = jnp.asarray(rng.normal(size=(B, T, H, W, D)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(B, T, S, P, D)), jnp.float32)
  model = smtc.SMTC(
    num_semantic_slots=S, num_instances=P, num_iterations=3, correlation_size=CORRELATION_SIZE
  )
  params = _random_params(model, keys, noise, seed=7)
  out = model.apply({"params": params}, keys, noise)
  assert set(params) == {"fusion", "slot_attention", "mlp_slot"}
  fused = reference.temporal_fusion(params["fusion"]["transport_proj"], keys, CORRELATION_SIZE)
  ref = reference.slot_attention(
    params["slot_attention"],
    fused.reshape(B * T, N, D),
    np.asarray(noise).reshape(B * T, S, P, D),
    3,
  )
  ref = [x.reshape((B, T) + x.shape[1:]) for x in ref]
  assert np.abs(ref[1] - 0.3).min() > 1e-4
  np.testing.assert_allclose(out.semantic_logits, ref[1], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out.instance_slots, ref[2], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
    out.instance_embeddings, reference.mlp_slot(params["mlp_slot"], ref[2]), rtol=1e-4, atol=1e-4
  )
  np.testing.assert_allclose(out.keys, np.asarray(keys).reshape(B, T, N, D))
  # Inference outputs as the official `p_s is None` branch.
  semantic = reference.softmax(ref[1], 2)
  np.testing.assert_allclose(out.semantic_masks, semantic, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
    out.instance_masks, semantic[:, :, :, None] * reference.softmax(ref[3], 3), atol=1e-5
  )
  np.testing.assert_allclose(
    out.similarity,
    np.einsum("btsc,btspc->btsp", reference.normalize(ref[0]), reference.normalize(ref[2])),
    atol=1e-5,
  )
  np.testing.assert_allclose(np.asarray(out.instance_masks).sum(axis=(2, 3)), 1.0, atol=1e-5)


def test_official_head_has_the_official_parameter_count():
  """16 slots, 4 instances, D = 384, 16 x 16 correlation: slot attention 753,792 (3 LayerNorms,
  q/k/v, MLP, mu, sigma) + transport_proj 98,688 + mlp_slot 590,976, as the PyTorch module."""
  keys = jax.ShapeDtypeStruct((1, 4, 16, 16, 384), jnp.float32)
  shapes = jax.eval_shape(
    lambda k: smtc.SMTC().init({"params": jax.random.key(0), "instances": jax.random.key(1)}, k),
    keys,
  )
  counts = {
    name: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    for name, tree in shapes["params"].items()
  }
  assert counts == {"slot_attention": 753_792, "fusion": 98_688, "mlp_slot": 590_976}
  assert shapes["params"]["slot_attention"]["slots_sigma"].shape == (1, 16, 1, 384)
