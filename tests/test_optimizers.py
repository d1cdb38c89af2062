"""`vosjax.core.optimizers`: gradient clipping, per-group learning rates, labels by parameter path.

The grouped optimizer is checked against NumPy transcriptions of SGD and Adam (float64) on the
parameters of a small flax model, as a plain dict and as a FrozenDict.
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vosjax.core import optimizers

SWITCH_STEP = 3  # the encoder is frozen for updates 0, 1, 2 and trained at x0.01 from update 3
ENCODER_MULTIPLIER = 0.01
NUM_STEPS = 6
ADAM = {"b1": 0.9, "b2": 0.999, "eps": 1e-8}


LEARNING_RATE = 0.1


def base_learning_rate(step):
  """A decaying schedule, so that a wrong step count gives a wrong learning rate."""
  return LEARNING_RATE * 0.8**step


class Encoder(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.relu(nn.Dense(4)(x)))


class TinyModel(nn.Module):
  """Parameters `pre_encoder/`, `encoder/Dense_0/`, `encoder/Dense_1/`, `head/` (kernel, bias)."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(3, name="pre_encoder")(x)  # "encoder" inside the name, not at the start
    return nn.Dense(2, name="head")(Encoder(name="encoder")(x))


def tiny_params():
  return TinyModel().init(jax.random.key(0), jnp.zeros((1, 5)))["params"]


def path_name(path) -> str:
  return "/".join(k.key for k in path)


def is_encoder(path) -> bool:
  return path_name(path).startswith("encoder/")


def make_grouped(make_optimizer) -> optax.GradientTransformation:
  return optimizers.grouped_optimizer(
    make_optimizer,
    base_learning_rate,
    multipliers={
      "encoder": optimizers.step_multiplier(0.0, ENCODER_MULTIPLIER, SWITCH_STEP),
      "rest": 1.0,
    },
    label_fn=optimizers.label_by_path([(r"^encoder/", "encoder")], default="rest"),
  )


def random_gradients(params, num_steps: int) -> list:
  """A different gradient pytree (float32) for every update."""
  rng = np.random.default_rng(1)
  return [
    jax.tree.map(lambda p: rng.normal(size=np.shape(p)).astype(np.float32), params)
    for _ in range(num_steps)
  ]


def learning_rate(path, step: int) -> float:
  if not is_encoder(path):
    return base_learning_rate(step)
  return base_learning_rate(step) * (0.0 if step < SWITCH_STEP else ENCODER_MULTIPLIER)


def numpy_sgd(path, param, grads) -> list[np.ndarray]:
  """The parameter after each update."""
  param, history = np.float64(param), []
  for step, grad in enumerate(grads):
    param = param - learning_rate(path, step) * grad
    history.append(param)
  return history


def numpy_adam(path, param, grads) -> list[np.ndarray]:
  """Adam's moments advance at every update, also while the group's learning rate is 0."""
  param, history = np.float64(param), []
  mu, nu = np.zeros_like(param), np.zeros_like(param)
  for step, grad in enumerate(grads):
    mu = ADAM["b1"] * mu + (1 - ADAM["b1"]) * grad
    nu = ADAM["b2"] * nu + (1 - ADAM["b2"]) * grad**2
    mu_hat, nu_hat = mu / (1 - ADAM["b1"] ** (step + 1)), nu / (1 - ADAM["b2"] ** (step + 1))
    param = param - learning_rate(path, step) * mu_hat / (np.sqrt(nu_hat) + ADAM["eps"])
    history.append(param)
  return history


@pytest.mark.parametrize("container", ["dict", "FrozenDict"])
# float32 against float64, absolute tolerances far below the encoder's first move (~5e-4 of Adam):
# in float32 Adam's 1 - b2 alone is off by ~1e-5 relative, so its updates (~lr) by ~1e-6 each.
@pytest.mark.parametrize(
  "name, make_optimizer, reference, atol",
  [
    ("sgd", optax.sgd, numpy_sgd, 1e-6),
    ("adam", lambda lr: optax.adam(lr, **ADAM), numpy_adam, 1e-5),
  ],
)
def test_grouped_optimizer_matches_numpy(container, name, make_optimizer, reference, atol):
  del name
  params = tiny_params()
  assert isinstance(params, dict)
  if container == "FrozenDict":
    params = flax.core.freeze(params)
  grads = random_gradients(params, NUM_STEPS)
  tx = make_grouped(make_optimizer)
  update = jax.jit(tx.update)

  history, state, current = [], tx.init(params), params
  for step_grads in grads:
    updates, state = update(step_grads, state, current)
    current = optax.apply_updates(current, updates)
    assert type(current) is type(params)
    history.append(current)

  leaves = jax.tree_util.tree_leaves_with_path(params)
  assert sum(is_encoder(path) for path, _ in leaves) == 4 < len(leaves)
  for i, (path, initial) in enumerate(leaves):
    desired = reference(path, initial, [jax.tree_util.tree_leaves(g)[i] for g in grads])
    for step, params_after in enumerate(history):
      actual = np.asarray(jax.tree_util.tree_leaves(params_after)[i])
      where = f"{path_name(path)} after update {step}"
      if is_encoder(path) and step < SWITCH_STEP:
        np.testing.assert_array_equal(actual, initial, err_msg=where)  # frozen: not even rounding
      else:
        assert not np.allclose(actual, initial, rtol=0, atol=1e-6), where
      np.testing.assert_allclose(actual, desired[step], rtol=1e-5, atol=atol, err_msg=where)


def test_encoder_moves_at_a_hundredth_of_the_rest_after_the_switch():
  """SGD, the same gradient for every parameter: the steps' sizes are the learning rates."""
  params = tiny_params()
  tx = make_grouped(optax.sgd)
  ones = jax.tree.map(jnp.ones_like, params)
  state, current = tx.init(params), params
  for step in range(NUM_STEPS):
    updates, state = tx.update(ones, state, current)
    current = optax.apply_updates(current, updates)
    for path, leaf in jax.tree_util.tree_leaves_with_path(updates):
      expected = base_learning_rate(step) * (
        (0.0 if step < SWITCH_STEP else ENCODER_MULTIPLIER) if is_encoder(path) else 1.0
      )
      np.testing.assert_allclose(
        np.asarray(leaf), -expected, rtol=1e-6, err_msg=f"{path_name(path)} at update {step}"
      )


def test_gradient_clipping_off_on_and_invalid():
  assert optimizers.gradient_clipping(None) == []
  (clip,) = optimizers.gradient_clipping(1.0)
  large = {"a": jnp.full((4,), 3.0), "b": jnp.full((2, 2), -4.0)}  # global norm sqrt(36 + 64)
  clipped, _ = clip.update(large, clip.init(large))
  assert float(optax.tree.norm(clipped)) == pytest.approx(1.0, rel=1e-6)
  np.testing.assert_allclose(clipped["a"], 0.3, rtol=1e-6)  # the same direction, norm 1
  np.testing.assert_allclose(clipped["b"], -0.4, rtol=1e-6)
  small = {"a": jnp.full((4,), 0.1), "b": jnp.full((2, 2), 0.1)}  # global norm 0.28
  unchanged, _ = clip.update(small, clip.init(small))
  for key in small:
    np.testing.assert_allclose(unchanged[key], small[key], rtol=1e-6)
  for invalid in (0, 0.0, -1.0):
    with pytest.raises(ValueError, match="grad_clip_norm"):
      optimizers.gradient_clipping(invalid)


def test_label_by_path_labels_nested_paths_by_the_first_matching_rule():
  params = {
    "encoder": {"blocks": [np.zeros(2), np.zeros(3)], "norm": {"scale": np.zeros(2)}},
    "decoder": {"encoder_proj": {"kernel": np.zeros(2)}},
    "head": np.zeros(1),
  }
  label_fn = optimizers.label_by_path(
    [(r"^encoder/blocks/1$", "last_block"), (r"^encoder/", "encoder"), (r"/kernel$", "kernel")],
    default="rest",
  )
  assert label_fn(params) == {
    "encoder": {"blocks": ["encoder", "last_block"], "norm": {"scale": "encoder"}},
    "decoder": {"encoder_proj": {"kernel": "kernel"}},
    "head": "rest",
  }


def test_label_by_path_on_flax_params_as_dict_and_frozen_dict():
  params = tiny_params()
  label_fn = optimizers.label_by_path([(r"^encoder/", "encoder")], default="rest")
  expected = {
    "pre_encoder": {"kernel": "rest", "bias": "rest"},
    "encoder": {name: {"kernel": "encoder", "bias": "encoder"} for name in ("Dense_0", "Dense_1")},
    "head": {"kernel": "rest", "bias": "rest"},
  }
  assert label_fn(params) == expected
  frozen_labels = label_fn(flax.core.freeze(params))
  assert isinstance(frozen_labels, flax.core.FrozenDict)
  assert flax.core.unfreeze(frozen_labels) == expected


# Betrayed's and SMTC's `make_optimizer` as they were before `optimizers.adamw_cosine` replaced
# both (commit 66e0b0c), kept here to show that the shared setup changed nothing.
def _adamw(opt, learning_rate):
  return optax.adamw(
    learning_rate,
    b1=opt.b1,
    b2=opt.b2,
    eps=opt.eps,
    weight_decay=opt.weight_decay,
    mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
  )


def _old_schedule(config):
  opt = config.optimizer
  return optax.cosine_decay_schedule(
    init_value=opt.learning_rate,
    decay_steps=max(config.num_train_steps, 1),
    alpha=opt.final_learning_rate / opt.learning_rate,
  )


def old_betrayed_optimizer(config):
  adamw = _adamw(config.optimizer, _old_schedule(config))
  return optax.chain(*optimizers.gradient_clipping(config.optimizer.grad_clip_norm), adamw)


def old_smtc_optimizer(config):
  opt = config.optimizer
  encoder = optimizers.step_multiplier(
    opt.encoder_multiplier_before, opt.encoder_multiplier_after, opt.encoder_switch_step
  )
  grouped = optimizers.grouped_optimizer(
    lambda lr: _adamw(opt, lr),
    _old_schedule(config),
    {"encoder": encoder, "head": 1.0},
    optimizers.label_by_path([(r"^encoder/", "encoder")], default="head"),
  )
  return optax.chain(*optimizers.gradient_clipping(opt.grad_clip_norm), grouped)


def _method_config(name: str, grad_clip_norm):
  from vosjax.methods import betrayed, smtc

  config = {"betrayed": betrayed, "smtc": smtc}[name].default_config()
  config.num_train_steps = 8
  config.optimizer.grad_clip_norm = grad_clip_norm
  if name == "smtc":
    config.optimizer.encoder_switch_step = 3
  return config


def dino_cosine(base: float, final: float, steps: int) -> np.ndarray:
  """DINO's `utils.cosine_scheduler` without warm-up, one value per step (float64)."""
  return final + 0.5 * (base - final) * (1 + np.cos(np.pi * np.arange(steps) / steps))


def test_cosine_schedule_is_dinos():
  config = _method_config("betrayed", None)
  opt = config.optimizer
  schedule = optimizers.cosine_schedule(opt, config.num_train_steps)
  old = _old_schedule(config)
  steps = np.arange(config.num_train_steps + 3)  # past the end: stays at the final rate
  actual = np.array([float(schedule(s)) for s in steps])
  np.testing.assert_array_equal(actual, [float(old(s)) for s in steps])
  desired = dino_cosine(opt.learning_rate, opt.final_learning_rate, config.num_train_steps)
  np.testing.assert_allclose(actual[: config.num_train_steps], desired, rtol=1e-6)
  np.testing.assert_allclose(actual[config.num_train_steps :], opt.final_learning_rate, rtol=1e-6)


@pytest.mark.parametrize("grad_clip_norm", [None, 0.5])
@pytest.mark.parametrize("name", ["betrayed", "smtc"])
def test_methods_adamw_cosine_equals_the_old_setup(name, grad_clip_norm):
  """The methods' optimizers give the same updates, bit for bit, as their old own setups, through
  the switch of SMTC's encoder multiplier and the end of the schedule; biases are not decayed."""
  from vosjax.methods import betrayed, smtc

  config = _method_config(name, grad_clip_norm)
  new = {"betrayed": betrayed, "smtc": smtc}[name].make_optimizer(config)
  old = {"betrayed": old_betrayed_optimizer, "smtc": old_smtc_optimizer}[name](config)
  params = tiny_params()
  grads = random_gradients(params, config.num_train_steps + 2)
  new_params, old_params = params, params
  new_state, old_state = new.init(params), old.init(params)
  new_update, old_update = jax.jit(new.update), jax.jit(old.update)
  for step_grads in grads:
    new_updates, new_state = new_update(step_grads, new_state, new_params)
    old_updates, old_state = old_update(step_grads, old_state, old_params)
    jax.tree.map(np.testing.assert_array_equal, new_updates, old_updates)
    new_params = optax.apply_updates(new_params, new_updates)
    old_params = optax.apply_updates(old_params, old_updates)
  moved = jax.tree.map(
    lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new_params, params
  )
  assert all(jax.tree.leaves(moved)), moved


def test_adamw_cosine_with_multipliers_needs_labels():
  with pytest.raises(ValueError, match="label_fn"):
    optimizers.adamw_cosine(_method_config("smtc", None).optimizer, 8, {"encoder": 1.0})
