"""End-to-end: Betrayed by Attention trains a few steps and evaluates through `vosjax.train`.

Tiny synthetic MOVi-format data and a tiny randomly initialised backbone (numbers are meaningless;
the test checks that the pipeline runs, only the block is trained and the outputs are well formed).
"""

import importlib.util
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from conftest import TINY_BETRAYED, set_overrides
from vosjax import train
from vosjax.methods import betrayed

_CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def _load_config(name: str):
  spec = importlib.util.spec_from_file_location(name, _CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _tiny_config(data_dir: str):
  config = _load_config("movi_e")
  config.data.tfds_name = "vosjax_synthetic/32x32_f6_o2-3_n4-2"
  config.data.data_dir = data_dir
  config.data.resolution = (32, 32)
  config.data.shuffle_buffer = 4
  config.model.train_resolution = (32, 32)  # 4 x 4 tokens of 8 px
  config.model.inference_resolution = (32, 32)
  set_overrides(config, TINY_BETRAYED)  # a tiny random backbone, loss counts for 16 tokens
  config.batch_size = config.eval_batch_size = jax.device_count()
  config.num_train_steps = 3
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  config.num_eval_videos_to_write = 1
  return config


# Slow: ~140 s on the shared 2-core machine (mostly compilation); run with -m slow. The default run
# trains and evaluates configs/movi_e.py with the same tiny backbone (tests/test_configs.py).
@pytest.mark.slow
def test_train_and_evaluate_tiny(tmp_path):
  config = _tiny_config(str(tmp_path / "tfds"))
  workdir = str(tmp_path / "work")
  result = train.train_and_evaluate(config, workdir)

  # Only the spatio-temporal block is trained and checkpointed; the backbone stays outside.
  params = result.state.params
  assert set(params) == {"norm1", "qkv", "proj", "norm2", "fc1", "fc2"}
  assert int(result.state.step) == 3
  metrics = result.eval_metrics
  assert metrics["num_videos"] == 2
  for key in ("fg_ari", "miou"):
    assert np.isfinite(metrics[key]) and -1.0 <= metrics[key] <= 1.0
  # The predicted label maps written for the first video have the input resolution.
  written = sorted(os.listdir(os.path.join(workdir, "eval_outputs", "video000")))
  assert len(written) == 6
  with open(os.path.join(workdir, "eval_metrics.json")) as f:
    assert json.load(f)["num_videos"] == 2
  assert os.listdir(os.path.join(workdir, "eval_outputs"))


def test_loss_decreases_on_a_fixed_clip(tmp_path):
  config = _tiny_config(str(tmp_path / "unused"))
  config.augment.grayscale_prob = config.augment.jitter_prob = config.augment.blur_prob = 0.0
  config.optimizer.learning_rate, config.optimizer.final_learning_rate = 3e-3, 3e-3
  model = betrayed.make_model(config)
  video = np.random.default_rng(0).uniform(size=(2, 3, 32, 32, 3)).astype(np.float32)
  batch = {"video": video}
  params = betrayed.init_params(model, config, jax.random.key(0), batch)
  tx = betrayed.make_optimizer(config)

  @jax.jit
  def step(params, opt_state, model):
    (loss, _), grads = jax.value_and_grad(betrayed.loss_fn, has_aux=True)(
      params, model, batch, jax.random.key(1), 0, config, {}
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(lambda p, u: p + u, params, updates), opt_state, loss

  opt_state = tx.init(params)
  losses = []
  for _ in range(15):
    params, opt_state, loss = step(params, opt_state, model)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_arch_overrides_require_random_init():
  config = _tiny_config("/nonexistent")
  config.backbone.random_init = False
  with pytest.raises(ValueError, match="random_init"):
    betrayed.make_model(config)
