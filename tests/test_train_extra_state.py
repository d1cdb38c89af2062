"""Method-owned extra state (`interface.OwnsExtraState`) through the training loop.

The method is a toy defined here, not a package of `vosjax.methods`: Motion Grouping plus an EMA
teacher of its parameters (the extra state), with a loss that pulls the parameters towards the
teacher. `train.train_and_evaluate(..., method=...)` trains it; the subprocess runs import it from
this module. Its `config.method` names no package, so a run that looked the method up by name
would fail.

Checked: the loop initialises, updates (NumPy EMA), passes to the loss and checkpoints the extra
state; a run SIGKILLed after its first checkpoint resumes to the uninterrupted run's parameters and
teacher; 1 and 8 devices train the same parameters and teacher.
"""

import os
import signal
import types

import jax
import numpy as np
import pytest

from helpers.ema_teacher_toy import (
  CHECKPOINT_EVERY,
  MOMENTUM,
  NUM_STEPS,
  PULL,
  ema_teacher_method,
  run_config,
)
from helpers.training_runs import Run, assert_same_params, flat_params, initial_params
from helpers.workdirs import checkpoint_meta, folder_snapshot


def test_toy_method_satisfies_the_interface():
  from vosjax.methods import interface  # pylint: disable=g-import-not-at-top

  toy = ema_teacher_method()
  assert isinstance(toy, interface.Method) and isinstance(toy, interface.OwnsExtraState)
  assert not isinstance(
    types.SimpleNamespace(**{k: v for k, v in vars(toy).items() if k != "update_extra_state"}),
    interface.OwnsExtraState,
  )


# ------------------------------------------------------------------ Subprocess runs


@pytest.fixture(scope="module")
def uninterrupted(tiny_synthetic_dir, tmp_path_factory):
  """The reference: one device, no interruption (started at first use, in the background)."""
  run = Run(tiny_synthetic_dir, tmp_path_factory.mktemp("uninterrupted") / "work")
  yield run
  run.kill()


@pytest.fixture(scope="module")
def eight_devices(tiny_synthetic_dir, tmp_path_factory):
  run = Run(tiny_synthetic_dir, tmp_path_factory.mktemp("eight") / "work", devices=8)
  yield run
  run.kill()


def test_killed_run_resumes_to_the_uninterrupted_params_and_teacher(
  uninterrupted, eight_devices, tiny_synthetic_dir, tmp_path
):
  """SIGKILL once checkpoint 2 is written (the run hangs there); the same script resumes it.
  (`eight_devices` is requested only to start it now, on the other core.)"""
  del eight_devices
  killed = Run(tiny_synthetic_dir, tmp_path / "work", hang_after_checkpoint=CHECKPOINT_EVERY)
  killed.wait_for(f"CHECKPOINT {CHECKPOINT_EVERY} WRITTEN")
  killed.proc.send_signal(signal.SIGKILL)
  assert killed.wait() == -signal.SIGKILL
  checkpoints = os.path.join(killed.workdir, "checkpoints")
  assert sorted(os.listdir(checkpoints)) == [str(CHECKPOINT_EVERY)]
  before = folder_snapshot(checkpoints)

  resumed = Run(tiny_synthetic_dir, tmp_path / "work", evaluate_checkpoint=True)
  params, teacher, metrics = resumed.result()
  assert f"at step {CHECKPOINT_EVERY}." in resumed.output, resumed.output[-5000:]  # resumed, ...
  assert folder_snapshot(checkpoints).items() >= before.items()  # ... from the kept checkpoint
  assert checkpoint_meta(resumed.workdir, NUM_STEPS)["step"] == NUM_STEPS
  # `evaluate_checkpoint(method=toy)` restores the final checkpoint and scores it the same.
  assert metrics["checkpoint"] == pytest.approx(metrics["train"])

  desired_params, desired_teacher, desired_metrics = uninterrupted.result()
  assert metrics["train"] == pytest.approx(desired_metrics["train"])
  for actual, desired in ((params, desired_params), (teacher, desired_teacher)):
    assert actual.keys() == desired.keys() and len(desired) > 10
    for key in desired:
      np.testing.assert_allclose(actual[key], desired[key], rtol=1e-6, atol=1e-7, err_msg=key)
  # The teacher is its own state: after 6 updates it lags the parameters (not a copy of them).
  assert max(np.abs(teacher[k] - params[k]).max() for k in params) > 1e-4
  print(
    f"\nwall: killed run {killed.seconds:.0f} s, resumed run {resumed.seconds:.0f} s, "
    f"uninterrupted {uninterrupted.seconds:.0f} s"
  )


# In file order after the kill test: it runs while the 8-device run goes on in the background.
def test_extra_state_is_initialised_updated_and_given_to_the_loss(tiny_synthetic_dir):
  """The loop's own state and step functions, 4 steps on one device, against NumPy."""
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from vosjax import train  # pylint: disable=g-import-not-at-top
  from vosjax.core import sharding  # pylint: disable=g-import-not-at-top
  from vosjax.data import pipeline  # pylint: disable=g-import-not-at-top

  toy, config = ema_teacher_method(), run_config(tiny_synthetic_dir)
  mesh = sharding.make_mesh(jax.devices()[:1])
  data_sharding = NamedSharding(mesh, P("data"))
  model, tx = toy.make_model(config), toy.make_optimizer(config)
  batches = pipeline.make_train_iterator(config)
  state, shardings = train.create_train_state(toy, model, config, tx, mesh, next(batches))
  train_step = train.make_train_step(toy, model, config, tx, shardings, data_sharding)

  params, teacher = flat_params(state.params), flat_params(state.extra["teacher"])
  assert params.keys() == teacher.keys() and len(params) > 10
  for key in params:
    np.testing.assert_array_equal(teacher[key], params[key], err_msg=key)  # init: a copy
  initial, distances = params, []
  for step in range(1, 5):
    state, metrics = train_step(
      state, sharding.to_global(next(batches), data_sharding), jax.random.key(0)
    )
    metrics = jax.device_get(metrics)
    assert metrics["finite"] and int(state.step) == step
    # The loss saw the teacher from before this update ...
    distance = sum(np.sum((params[k].astype(np.float64) - teacher[k]) ** 2) for k in params)
    np.testing.assert_allclose(metrics["teacher_distance"], distance, rtol=1e-4, atol=1e-12)
    distances.append(distance)
    # ... and the reported loss is the differentiated one, Motion Grouping's plus the pull.
    motion_grouping_loss = sum(
      metrics[f"{term}_weighted"] for term in ("reconstruction", "entropy", "consistency")
    )
    np.testing.assert_allclose(metrics["loss"], motion_grouping_loss + PULL * distance, rtol=1e-6)
    # The teacher after the update: the EMA towards the new parameters.
    params = flat_params(state.params)
    expected = {k: MOMENTUM * teacher[k] + (1 - MOMENTUM) * params[k] for k in params}
    teacher = flat_params(state.extra["teacher"])
    for key in params:
      np.testing.assert_allclose(teacher[key], expected[key], rtol=1e-6, atol=1e-9, err_msg=key)
  # Step 1's learning rate is 0 (warm-up), so the teacher differs from the parameters from step 3;
  # by then the pull is well above the float32 resolution of the loss.
  assert distances[0] == 0.0 and PULL * min(distances[2:]) > 1e-4 * metrics["loss"], distances
  moved = [k for k in teacher if not np.allclose(teacher[k], initial[k], rtol=0, atol=1e-6)]
  assert len(moved) > len(teacher) // 2, f"the teacher moved in {len(moved)} of {len(teacher)}"


def test_one_and_eight_devices_train_the_same_params_and_teacher(
  uninterrupted, eight_devices, tiny_synthetic_dir
):
  one_params, one_teacher, _ = uninterrupted.result()
  eight_params, eight_teacher, _ = eight_devices.result()
  initial = initial_params(tiny_synthetic_dir)  # the teacher's initial value, too
  assert_same_params(eight_params, one_params, initial)
  assert_same_params(eight_teacher, one_teacher, initial)
  print(f"\nwall: 8 devices {eight_devices.seconds:.0f} s")
