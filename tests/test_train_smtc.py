"""SMTC through the training loop (`vosjax.train.train_and_evaluate`) with a tiny random ViT on the
tiny synthetic MOVi-format TFDS set (whose `video` batches SMTC trains on).

Checked: the student's backbone has stochastic depth in `loss_fn` only (the teacher and `predict`
are deterministic); a run SIGKILLed after its first checkpoint resumes to exactly the uninterrupted
run's parameters, EMA teacher (the method's extra state) and optimizer state; 1 and 8 devices train
the same parameters and teacher. The subprocess runs use helpers.training_runs.Run with the script
below.
"""

import textwrap

import jax
import numpy as np
import pytest

from helpers.smtc_runs import CHECKPOINT_EVERY, NUM_STEPS, smtc_config
from helpers.training_runs import SCRIPT_HARNESS, Run, assert_same_params
from helpers.workdirs import checkpoint_meta

# ------------------------------------------------------------------ stochastic depth in the method


def test_stochastic_depth_in_the_training_student_only():
  from vosjax.methods import smtc  # pylint: disable=g-import-not-at-top

  assert smtc.default_config().backbone.drop_path_rate == 0.1  # the official student's
  config = smtc_config("unused")
  model = smtc.make_model(config)
  # Rates 0, 0.25, 0.5 over the 3 blocks: the last block's keys see the drops of block 1.
  assert model.backbone.drop_path_rate == 0.5 and model.backbone.arch.depth == 3
  batch = smtc.example_batch(config)
  params = jax.jit(lambda rng: smtc.init_params(model, config, rng, batch))(jax.random.key(0))
  video = jax.random.uniform(jax.random.key(1), (2, 4, 32, 32, 3))
  forward = jax.jit(
    lambda video, drop: model.forward(params, video, jax.random.key(2), drop_path_rng=drop).keys
  )
  plain = jax.jit(lambda video: model.forward(params, video, jax.random.key(2)).keys)(video)
  # Without an rng (teacher, inference): the ViT without stochastic depth.
  off = model.replace(backbone=model.backbone.clone(drop_path_rate=0.0))
  np.testing.assert_array_equal(
    jax.jit(lambda video: off.forward(params, video, jax.random.key(2)).keys)(video), plain
  )
  student = forward(video, jax.random.key(3))
  assert not np.allclose(student, plain, atol=1e-4)
  assert not np.allclose(forward(video, jax.random.key(4)), student, atol=1e-4)
  # The loss: reproducible from its rng; predict: deterministic, unaffected by the rate.
  extra = smtc.init_extra_state(params, config)
  loss = jax.jit(
    lambda rng: smtc.loss_fn(params, model, {"video": video}, rng, 0, config, extra)[0]
  )
  assert float(loss(jax.random.key(5))) == float(loss(jax.random.key(5)))
  predict = lambda m: jax.jit(lambda v: smtc.predict(params, m, {"video": v}, config))(video)
  for key, value in predict(model).items():
    np.testing.assert_array_equal(value, predict(off)[key], err_msg=key)


# ------------------------------------------------------------------ the loop, in subprocesses

_SCRIPT = SCRIPT_HARNESS + textwrap.dedent("""
    from helpers.smtc_runs import smtc_config
    result = train.train_and_evaluate(smtc_config({data_dir!r}), {workdir!r})
    one = lambda tree: flat_params(jax.tree.map(lambda x: x.addressable_data(0), tree))
    state = result.state
    np.savez({out!r}, **{{"params" + k: v for k, v in one(state.params).items()}},
             **{{"teacher" + k: v for k, v in one(state.extra["teacher"]).items()}},
             **{{"opt" + k: v for k, v in one(state.opt_state).items()}})
    with open({out!r} + ".json", "w") as f:
      json.dump({{"train": result.eval_metrics}}, f)
""")


def smtc_run(data_dir, workdir, **kwargs) -> Run:
  return Run(data_dir, workdir, script=_SCRIPT, **kwargs)


def saved_state(run: Run) -> dict[str, dict[str, np.ndarray]]:
  """{"params", "teacher", "opt"} -> flat arrays of the run's final state (waits for it)."""
  assert run.wait() == 0, run.output[-6000:]
  with np.load(run.out) as saved:
    arrays = dict(saved)
  return {
    part: {k[len(part) :]: v for k, v in arrays.items() if k.startswith(part)}
    for part in ("params", "teacher", "opt")
  }


@pytest.fixture(scope="module")
def uninterrupted(tiny_synthetic_dir, tmp_path_factory):
  run = smtc_run(tiny_synthetic_dir, tmp_path_factory.mktemp("smtc_uninterrupted") / "work")
  yield run
  run.kill()


@pytest.fixture(scope="module")
def eight_devices(tiny_synthetic_dir, tmp_path_factory):
  run = smtc_run(tiny_synthetic_dir, tmp_path_factory.mktemp("smtc_eight") / "work", devices=8)
  yield run
  run.kill()


@pytest.mark.slow  # three training subprocesses (compile-bound): ~3 min on 2 busy cores
def test_killed_run_resumes_to_the_uninterrupted_params_teacher_and_optimizer_state(
  uninterrupted, eight_devices, tiny_synthetic_dir, tmp_path
):
  """SIGKILL once checkpoint 2 is written; the same script resumes from it. (`eight_devices` is
  requested only to start it now, beside the others.)"""
  del eight_devices
  killed = smtc_run(tiny_synthetic_dir, tmp_path / "work", hang_after_checkpoint=CHECKPOINT_EVERY)
  killed.wait_for(f"CHECKPOINT {CHECKPOINT_EVERY} WRITTEN")
  killed.kill()
  resumed = smtc_run(tiny_synthetic_dir, tmp_path / "work")
  actual = saved_state(resumed)
  assert f"at step {CHECKPOINT_EVERY}." in resumed.output, resumed.output[-5000:]
  assert checkpoint_meta(resumed.workdir, NUM_STEPS)["step"] == NUM_STEPS

  desired = saved_state(uninterrupted)
  for part in ("params", "teacher", "opt"):
    assert actual[part].keys() == desired[part].keys() and len(desired[part]) > 10, part
    for key in desired[part]:
      np.testing.assert_array_equal(actual[part][key], desired[part][key], err_msg=part + key)
  params, teacher = desired["params"], desired["teacher"]
  # The teacher is its own state: its head lags the student's, its encoder is the initial one, which
  # the student's left after the switch at step 2.
  head = [k for k in params if k.startswith("['head']")]
  encoder = [k for k in params if k.startswith("['encoder']")]
  assert head and encoder and len(head) + len(encoder) == len(params)
  assert max(np.abs(teacher[k] - params[k]).max() for k in head) > 1e-4
  assert max(np.abs(teacher[k] - params[k]).max() for k in encoder) > 0  # lr x0.01: small moves
  print(
    f"\nwall: killed {killed.seconds:.0f} s, resumed {resumed.seconds:.0f} s, "
    f"uninterrupted {uninterrupted.seconds:.0f} s"
  )


@pytest.mark.slow  # shares the runs of the test above
def test_one_and_eight_devices_train_the_same_params_and_teacher(uninterrupted, eight_devices):
  one, eight = saved_state(uninterrupted), saved_state(eight_devices)
  assert_same_params(eight["params"], one["params"])
  assert_same_params(eight["teacher"], one["teacher"])
  moved = [k for k in one["params"] if np.abs(one["params"][k] - one["teacher"][k]).max() > 1e-4]
  assert len(moved) > len(one["params"]) // 4, f"only {len(moved)} parameters moved"
  print(f"\nwall: 8 devices {eight_devices.seconds:.0f} s")
