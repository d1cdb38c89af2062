"""The training loop: 1 vs 8 devices, exact resume, and the command line end to end."""

import json
import os
import subprocess
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import PYTHON, REPO, TINY_OVERRIDES, set_overrides, subprocess_env


def tiny_config(data_dir, **overrides):
  from configs import demo  # pylint: disable=g-import-not-at-top

  config = demo.get_config()
  config.data.data_dir = data_dir
  return set_overrides(config, {**TINY_OVERRIDES, **overrides})


# The device-layout comparisons train with Adam's epsilon at 1e-3 instead of 1e-8. With 1e-8, Adam
# divides a gradient by its own magnitude, so parameters whose true gradient is ~0 (a conv bias that
# the InstanceNorm after it subtracts again, the alpha bias that the softmax over slots cancels)
# move by +-lr depending on the sign of float noise, which differs between reduction orders. A
# larger epsilon keeps such noise at noise size; every parameter is then compared, none excluded.
# The absolute tolerance is 2e-6: convolution kernel gradients are sums over the per-device batch in
# blocks (vosjax.models.convolution), so 1 and 8 devices sum in different orders; after the toy
# run's steps one decoder kernel entry of 3200 differed by 1.5e-6 (value 2.4e-3).
LAYOUT_OVERRIDES = {"optimizer.eps": 1e-3}


def assert_same_params(actual: dict, desired: dict, initial: dict | None = None) -> None:
  """Every parameter equal to float tolerance (and, with `initial`, most of them really trained)."""
  assert actual.keys() == desired.keys() and len(desired) > 10
  for key in desired:
    np.testing.assert_allclose(actual[key], desired[key], rtol=1e-4, atol=2e-6, err_msg=key)
  if initial is not None:
    moved = [k for k in desired if np.abs(desired[k] - initial[k]).max() > 1e-4]
    assert len(moved) > len(desired) // 2, f"only {len(moved)} of {len(desired)} moved"


def flat_params(params) -> dict:
  return {
    jax.tree_util.keystr(path): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
  }


_TRAIN_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, jax
    sys.path.insert(0, {tests!r})
    if {num_processes} > 1:
      jax.distributed.initialize(coordinator_address={coordinator!r},
                                 num_processes={num_processes}, process_id={process_id})
    from test_train import tiny_config, flat_params
    from vosjax import train
    assert jax.device_count() == {devices} * {num_processes}, jax.devices()
    result = train.train_and_evaluate(tiny_config({data_dir!r}, **{overrides!r}), {workdir!r})
    if jax.process_index() == 0:
      # Replicated parameters: every process holds a full copy on each of its devices.
      params = jax.tree.map(lambda x: x.addressable_data(0), result.state.params)
      np.savez({out!r}, **flat_params(params))
""")


def start_training(
  devices, data_dir, workdir, out, *, num_processes=1, process_id=0, coordinator="", **overrides
) -> subprocess.Popen:
  """Starts one training process (of `num_processes`) faking `devices` CPU devices."""
  script = _TRAIN_SCRIPT.format(
    tests=os.path.join(REPO, "tests"),
    devices=devices,
    num_processes=num_processes,
    process_id=process_id,
    coordinator=coordinator,
    data_dir=data_dir,
    workdir=str(workdir),
    out=str(out),
    overrides=overrides,
  )
  env = subprocess_env(devices)
  if num_processes > 1:
    # No persistent compilation cache: JAX writes it from process 0 only, so process 0 would load
    # its programs from it while the others compile theirs, and reach the first cross-process
    # barrier so much earlier that the wait there (30 s) can time out on a busy machine.
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  return subprocess.Popen(
    [PYTHON, "-c", script],
    env=env,
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def finish(*procs: subprocess.Popen, timeout: float = 600) -> None:
  for proc in procs:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-6000:]


class BackgroundTraining:
  """One `start_training` process, started now; `params()` waits for it and returns its flat
  parameters. Runs that do not depend on each other run side by side (2 cores, mostly compiling)."""

  def __init__(self, devices, data_dir, workdir, out, **kwargs):
    self.workdir, self.out = Path(workdir), Path(out)
    self.proc = start_training(devices, data_dir, workdir, out, **kwargs)
    self._params = None

  def params(self) -> dict:
    if self._params is None:
      finish(self.proc)
      self._params = dict(np.load(self.out))
    return self._params

  def kill(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.communicate()


def _initial_params(data_dir) -> dict:
  """The parameters every tiny run starts from (as `train.create_train_state` draws them)."""
  from vosjax import methods  # pylint: disable=g-import-not-at-top
  from vosjax.data import pipeline  # pylint: disable=g-import-not-at-top

  config = tiny_config(data_dir)
  method = methods.load_method(config)
  batch = next(pipeline.make_train_iterator(config))
  return flat_params(
    method.init_params(method.make_model(config), config, jax.random.key(config.seed), batch)
  )


def test_one_and_eight_devices_train_the_same_parameters(
  tiny_synthetic_dir, eight_device_run, tmp_path
):
  # The 1-device run beside the 8-device one (a session fixture, shared with test_multihost.py).
  one = BackgroundTraining(
    1, tiny_synthetic_dir, tmp_path / "one", tmp_path / "one.npz", **LAYOUT_OVERRIDES
  )
  try:
    initial = _initial_params(tiny_synthetic_dir)
    assert_same_params(eight_device_run.params(), one.params(), initial)
  finally:
    one.kill()


def test_resume_continues_to_the_uninterrupted_result(tiny_synthetic_dir, tmp_path):
  from vosjax import train  # pylint: disable=g-import-not-at-top

  uninterrupted = train.train_and_evaluate(tiny_config(tiny_synthetic_dir), str(tmp_path / "a"))
  # The same run stopped after 2 steps (final checkpoint at 2), then restarted with the full length.
  first = train.train_and_evaluate(
    tiny_config(tiny_synthetic_dir, num_train_steps=2), str(tmp_path / "b")
  )
  assert int(first.state.step) == 2
  resumed = train.train_and_evaluate(tiny_config(tiny_synthetic_dir), str(tmp_path / "b"))
  assert int(resumed.state.step) == 4
  a, b = flat_params(uninterrupted.state.params), flat_params(resumed.state.params)
  changed = [k for k in a if not np.allclose(a[k], flat_params(first.state.params)[k])]
  assert changed, "steps 3-4 changed no parameter; the test would prove nothing"
  for key in a:
    np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_command_line_trains_evaluates_and_writes_outputs(tiny_synthetic_dir, tmp_path):
  workdir = tmp_path / "work"
  overrides = [f"--config.{k}={v}" for k, v in TINY_OVERRIDES.items()]
  overrides = [o.replace(" ", "") for o in overrides]
  cmd = [
    PYTHON,
    "-m",
    "vosjax.main",
    "--config",
    "configs/demo.py",
    "--workdir",
    str(workdir),
    f"--config.data.data_dir={tiny_synthetic_dir}",
    *overrides,
  ]
  proc = subprocess.run(
    cmd, env=subprocess_env(1), capture_output=True, text=True, timeout=600, cwd=REPO
  )
  output = proc.stdout + proc.stderr
  assert proc.returncode == 0, output[-5000:]
  assert "steps/s" in output and "ETA" in output
  assert "EVAL " in proc.stdout
  metrics = json.loads((workdir / "eval_metrics.json").read_text())
  assert metrics["num_videos"] == 4 and metrics["step"] == 4
  assert -1.0 <= metrics["fg_ari"] <= 1.0, metrics  # an adjusted Rand index: 0 is chance level
  for key in ("miou", "fg_j", "baseline_fg_j"):
    assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
  assert (workdir / "eval_outputs" / "video000.gif").stat().st_size > 0
  assert len(list((workdir / "eval_outputs" / "video000").glob("*.png"))) == 8
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))

  # --mode eval restores the final checkpoint and reproduces the metrics.
  proc = subprocess.run(
    cmd + ["--mode", "eval"],
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
  again = json.loads((workdir / "eval_metrics.json").read_text())
  assert again == pytest.approx(metrics)
