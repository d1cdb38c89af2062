"""`config.model.dtype="bfloat16"`: every method trains and predicts within a stated tolerance of
float32, with float32 parameters and gradients (`vosjax.models.precision`).

Each method at the every-config test's tiny sizes (tests/helpers/tiny_configs.CONFIG_OVERRIDES), on
random inputs, in float32 and in bfloat16 with the same parameters and rngs. bfloat16 keeps 8 bits
of mantissa (relative rounding 2^-9 = 0.2 %), so a forward pass of a few layers differs by about 1
%; the tolerances below are a few times the differences measured (stated per method), loose enough
for other CPUs' reduction orders, tight enough that a model left in float32 by mistake would not
show (that is checked separately: the bfloat16 program must contain bfloat16 matmuls).
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers.environment import REPO
from helpers.tiny_configs import CONFIG_OVERRIDES, set_overrides
from vosjax import methods

# config file -> (relative tolerance of the loss, of the gradient norm, of the gradient direction
# (1 - cosine), fraction of pixel pairs whose same-segment relation may differ). The measured
# differences (bf16 vs f32, this CPU) are in docs/tpu_kernels.md.
CASES = {
  "slot_attention.py": (0.02, 0.05, 0.01, 0.05),
  "motion_grouping.py": (0.02, 0.05, 0.01, 0.05),
  "movi_e.py": (0.02, 0.05, 0.01, 0.25),
  "smtc_ytvos.py": (0.02, 0.05, 0.03, 0.25),
}


def _config(name: str, dtype: str):
  spec = importlib.util.spec_from_file_location(name[:-3], f"{REPO}/configs/{name}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  overrides = {
    k: v
    for k, v in CONFIG_OVERRIDES[name].items()
    if not k.startswith("data.") or k in ("data.resolution",)
  }
  config = set_overrides(module.get_config(), overrides)
  config.model.dtype = dtype
  return config


def _random_batch(method, config, batch_size: int) -> dict:
  rng = np.random.default_rng(0)
  example = method.example_batch(config)
  return {
    k: rng.uniform(0.0, 1.0, (batch_size,) + v.shape[1:]).astype(np.float32)
    if "video" in k
    else rng.normal(0.0, 2.0, (batch_size,) + v.shape[1:]).astype(np.float32)
    for k, v in example.items()
  }


def _relative(a, b) -> float:
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _loss_and_gradient(method, config, batch):
  model = method.make_model(config)
  params = method.init_params(model, config, jax.random.key(0), method.example_batch(config))
  extra = method.init_extra_state(params, config) if hasattr(method, "init_extra_state") else {}

  def loss(p):
    return method.loss_fn(p, model, batch, jax.random.key(1), jnp.asarray(1), config, extra)

  (value, _), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  hlo = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params).as_text()
  return params, value, grads, hlo


@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_training_close_to_float32(name):
  loss_tol, norm_tol, direction_tol, _ = CASES[name]
  full_config, half_config = _config(name, "float32"), _config(name, "bfloat16")
  method = methods.load_method(full_config)
  batch = _random_batch(method, full_config, 2)
  params, full_loss, full_grads, full_hlo = _loss_and_gradient(method, full_config, batch)
  half_params, half_loss, half_grads, half_hlo = _loss_and_gradient(method, half_config, batch)
  # Parameters and gradients stay float32; the bfloat16 program does compute in bfloat16.
  for tree in (params, half_params, full_grads, half_grads):
    assert {x.dtype for x in jax.tree.leaves(tree)} == {np.dtype(np.float32)}
  assert "bf16" not in full_hlo and "bf16" in half_hlo
  assert half_loss.dtype == jnp.float32
  full, half = _flat(full_grads), _flat(half_grads)
  cosine = half @ full / (np.linalg.norm(half) * np.linalg.norm(full))
  print(  # the measured differences (pytest -s), recorded in docs/tpu_kernels.md
    f"{name}: loss {float(full_loss):.6g} vs {float(half_loss):.6g}, relative "
    f"{abs(float(half_loss) - float(full_loss)) / abs(float(full_loss)):.2e}; gradient norm "
    f"relative {abs(np.linalg.norm(half) - np.linalg.norm(full)) / np.linalg.norm(full):.2e}, "
    f"1 - cosine {1.0 - cosine:.2e}"
  )
  assert abs(float(half_loss) - float(full_loss)) <= loss_tol * abs(float(full_loss))
  assert abs(np.linalg.norm(half) - np.linalg.norm(full)) <= norm_tol * np.linalg.norm(full)
  assert 1.0 - cosine <= direction_tol


@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_prediction_close_to_float32(name):
  tolerance = CASES[name][3]
  predictions = {}
  for dtype in ("float32", "bfloat16"):
    config = _config(name, dtype)
    method = methods.load_method(config)
    model = method.make_model(config)
    params = method.init_params(model, config, jax.random.key(0), method.example_batch(config))
    batch = {"video": _random_batch(method, config, 1).get("video")}
    if "video" not in method.example_batch(config):  # Motion Grouping predicts from flows
      rng = np.random.default_rng(0)
      flow = rng.normal(0.0, 2.0, (1, 3) + tuple(config.data.resolution) + (2,)).astype(np.float32)
      batch = {"forward_flow": flow, "backward_flow": flow[:, ::-1]}
    elif batch["video"].shape[1] < 3:
      batch["video"] = np.repeat(batch["video"], 3, axis=1)
    predictions[dtype] = np.asarray(
      jax.jit(
        lambda p, b, config=config, method=method, model=model: method.predict(p, model, b, config)[
          "ids"
        ]
      )(params, batch)
    )
  full, half = predictions["float32"], predictions["bfloat16"]
  assert full.shape == half.shape
  # Ids are arbitrary for the clustering methods: compare which pixels share a segment.
  full, half = full.reshape(-1), half.reshape(-1)
  same_full, same_half = full[:, None] == full[None], half[:, None] == half[None]
  differing = np.mean(same_full != same_half)
  print(f"{name}: pixel pairs in a different same-segment relation: {differing:.2e}")
  assert differing <= tolerance
