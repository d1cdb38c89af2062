"""The training loop: 1 vs 8 devices, exact resume, and the command line end to end."""

import json
import os
import subprocess

import numpy as np
import pytest

from helpers.environment import PYTHON, REPO, subprocess_env
from helpers.tiny_configs import LAYOUT_OVERRIDES, TINY_OVERRIDES, tiny_config
from helpers.training_runs import (
  BackgroundTraining,
  assert_same_params,
  flat_params,
  initial_params,
)


def test_one_and_eight_devices_train_the_same_parameters(
  tiny_synthetic_dir, eight_device_run, tmp_path
):
  # The 1-device run beside the 8-device one (a session fixture, shared with
  # test_train_multihost.py).
  one = BackgroundTraining(
    1, tiny_synthetic_dir, tmp_path / "one", tmp_path / "one.npz", **LAYOUT_OVERRIDES
  )
  try:
    initial = initial_params(tiny_synthetic_dir)
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
