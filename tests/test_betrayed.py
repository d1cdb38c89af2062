"""End-to-end: Betrayed by Attention trains a few steps and evaluates through `vosjax.train`.

Tiny synthetic MOVi-format data and a tiny randomly initialised backbone (numbers are meaningless;
the test checks that the pipeline runs, only the block is trained and the outputs are well formed).
"""

import json
import os

import jax
import numpy as np
import pytest

from helpers.tiny_configs import tiny_betrayed_config

from vosjax import train
from vosjax.methods import betrayed


# Slow: ~140 s on the shared 2-core machine (mostly compilation); run with -m slow. The default run
# trains and evaluates configs/movi_e.py with the same tiny backbone (tests/test_configs.py).
@pytest.mark.slow
def test_train_and_evaluate_tiny(tmp_path):
  config = tiny_betrayed_config(str(tmp_path / "tfds"))
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
  config = tiny_betrayed_config(str(tmp_path / "unused"))
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
  config = tiny_betrayed_config("/nonexistent")
  config.backbone.random_init = False
  with pytest.raises(ValueError, match="random_init"):
    betrayed.make_model(config)
