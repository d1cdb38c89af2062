"""SMTC method glue (vosjax.methods.smtc) on a tiny random backbone: interface, one training step
with the official optimizer groups and EMA teacher, inference chunks and predictions."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax

from helpers.tiny_configs import SMTC_RES as RES
from helpers.tiny_configs import SMTC_T as T
from helpers.tiny_configs import tiny_smtc_config

from vosjax.methods import interface
from vosjax.methods import smtc


@functools.lru_cache(maxsize=None)
def _setup():
  config = tiny_smtc_config()
  model = smtc.make_model(config)
  batch = smtc.example_batch(config)
  params = jax.jit(lambda rng: smtc.init_params(model, config, rng, batch))(jax.random.key(0))
  video = jnp.asarray(np.random.default_rng(0).random((2, T, RES, RES, 3)), jnp.float32)
  return config, model, params, video


def test_satisfies_the_method_interface_and_the_official_recipe():
  assert isinstance(smtc, interface.Method) and isinstance(smtc, interface.OwnsExtraState)
  for name in ("loss_fn", "predict", "init_extra_state", "update_extra_state"):
    declared = getattr(interface.Method, name, None) or getattr(interface.OwnsExtraState, name)
    assert (
      list(inspect.signature(getattr(smtc, name)).parameters)
      == list(inspect.signature(declared).parameters)[1:]
    )
  config = smtc.default_config()
  assert (config.batch_size, config.num_train_steps, config.optimizer.learning_rate) == (
    128,
    10_000,
    2e-5,
  )
  assert (config.model.num_semantic_slots, config.model.num_instances) == (16, 4)
  assert (config.model.train_iterations, config.model.inference_iterations) == (3, 5)
  assert config.backbone.name == "dino_vits16" and config.ema_momentum == 0.999


def test_training_steps_move_the_encoder_only_after_the_switch_and_the_teacher_by_ema():
  config, model, params, video = _setup()
  tx = smtc.make_optimizer(config)
  extra = smtc.init_extra_state(params, config)

  @jax.jit
  def step(params, opt_state, extra, rng, count):
    (loss, metrics), grads = jax.value_and_grad(smtc.loss_fn, has_aux=True)(
      params, model, {"video": video}, rng, count, config, extra
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (
      params,
      opt_state,
      smtc.update_extra_state(extra, params, count + 1, config),
      loss,
      metrics,
      grads,
    )

  opt_state = tx.init(params)
  first, opt_state, extra1, loss, metrics, grads = step(
    params, opt_state, extra, jax.random.key(1), 0
  )
  assert np.isfinite(float(loss)) and set(metrics) >= {
    "transport_loss",
    "differ_loss",
    "instance_loss",
    "valid_instances",
  }
  leaves = lambda tree: jax.tree.leaves(tree)
  assert max(float(jnp.abs(g).max()) for g in leaves(grads["encoder"])) > 0  # fine-tuned
  assert max(float(jnp.abs(g).max()) for g in leaves(grads["head"])) > 0
  # Step 0: encoder multiplier 0 (no move, Adam moments still updated); head moves.
  for before, after in zip(leaves(params["encoder"]), leaves(first["encoder"])):
    np.testing.assert_array_equal(before, after)
  assert any(
    float(jnp.abs(a - b).max()) > 0 for a, b in zip(leaves(params["head"]), leaves(first["head"]))
  )
  # EMA: teacher head = 0.999 old + 0.001 new; teacher encoder = the initial one.
  for teacher, old, new in zip(
    leaves(extra1["teacher"]["head"]), leaves(params["head"]), leaves(first["head"])
  ):
    np.testing.assert_allclose(teacher, 0.999 * old + 0.001 * new, rtol=1e-6, atol=1e-7)
  # Step 1 >= encoder_switch_step: the encoder moves; the teacher's does not.
  second, _, extra2, *_ = step(first, opt_state, extra1, jax.random.key(2), 1)
  assert any(
    float(jnp.abs(a - b).max()) > 0
    for a, b in zip(leaves(first["encoder"]), leaves(second["encoder"]))
  )
  for teacher, initial in zip(leaves(extra2["teacher"]["encoder"]), leaves(params["encoder"])):
    np.testing.assert_array_equal(teacher, initial)


def test_weight_decay_only_on_multidimensional_parameters():
  config, _, params, _ = _setup()
  tx = smtc.make_optimizer(config)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  flat = jax.tree_util.tree_flatten_with_path(updates["head"])[0]
  for path, update in flat:
    value = params["head"]
    for key in path:
      value = value[key.key]
    if value.ndim > 1:  # -lr * wd * p
      np.testing.assert_allclose(update, -1e-2 * 0.1 * value, rtol=1e-5, atol=1e-9)
    else:
      np.testing.assert_array_equal(update, 0.0)
  assert "slots_mu" in str(flat)  # [1, S, 1, D]: decayed, as the official (not 1-D)


def test_chunk_indices_pad_with_the_last_frames_like_the_official():
  frames, positions = smtc.chunk_indices(6, 4)
  assert frames.tolist() == [[0, 1, 2, 3], [4, 5, 4, 5]] and positions.tolist() == [
    0,
    1,
    2,
    3,
    4,
    5,
  ]
  frames, positions = smtc.chunk_indices(5, 4)
  assert frames.tolist() == [[0, 1, 2, 3], [4, 2, 3, 4]] and positions.tolist() == [0, 1, 2, 3, 4]
  frames, positions = smtc.chunk_indices(4, 4)
  assert frames.tolist() == [[0, 1, 2, 3]] and positions.tolist() == [0, 1, 2, 3]


def test_predict_and_summary_images():
  config, model, params, video = _setup()
  long_video = jnp.concatenate([video, video[:, :2]], axis=1)  # T = 5: two chunks
  predict = jax.jit(lambda p, v: smtc.predict(p, model, {"video": v}, config))
  out, again = predict(params, long_video), predict(params, long_video)
  assert out["ids"].shape == (2, 5, RES, RES) and out["ids"].dtype == jnp.int32
  np.testing.assert_array_equal(out["ids"], again["ids"])  # fixed inference noise
  num_ids = config.model.num_semantic_slots * config.model.num_instances
  assert 0 <= int(out["ids"].min()) and int(out["ids"].max()) <= num_ids
  assert int(out["semantic_ids"].max()) < config.model.num_semantic_slots
  # Nearest upsampling: constant over each 16 x 16 patch.
  ids = np.asarray(out["ids"])
  assert (ids[:, :, :16, :16] == ids[:, :, :1, :1]).all()
  images = smtc.summary_images(params, model, {"video": video}, config)
  assert images["segmentation"].shape == (T, RES, 3 * RES, 3)
  assert images["segmentation"].dtype == np.uint8
