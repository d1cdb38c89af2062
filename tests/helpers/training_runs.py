"""Training in child pythons (the tiny demo run on any number of fake devices and processes; a
method's run that reports its checkpoints and can be killed) and comparisons of their parameters."""

import json
import os
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers.environment import COMPILATION_CACHE, PYTHON, REPO, subprocess_env
from helpers.tiny_configs import tiny_config


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
    from helpers.tiny_configs import tiny_config
    from helpers.training_runs import flat_params
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


def initial_params(data_dir) -> dict:
  """The parameters every tiny run starts from (as `train.create_train_state` draws them)."""
  from vosjax import methods  # pylint: disable=g-import-not-at-top
  from vosjax.data import pipeline  # pylint: disable=g-import-not-at-top

  config = tiny_config(data_dir)
  method = methods.load_method(config)
  batch = next(pipeline.make_train_iterator(config))
  return flat_params(
    method.init_params(method.make_model(config), config, jax.random.key(config.seed), batch)
  )


# ------------------------------------------------------------------ Subprocess runs

# The harness of a training subprocess (the `Run` template fields; also tests/test_train_smtc.py's
# script): reports every checkpoint and hangs after `hang_after_checkpoint` for the test to kill.
SCRIPT_HARNESS = textwrap.dedent("""
    import json, logging, sys, time
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    from helpers.training_runs import flat_params
    from vosjax import train
    from vosjax.core import checkpoint

    assert jax.device_count() == {devices}, jax.devices()
    save = checkpoint.CheckpointManager.save

    def save_and_report(self, step, *args, **kwargs):
      save(self, step, *args, **kwargs)
      self.wait()
      print(f"CHECKPOINT {{step}} WRITTEN", flush=True)
      if step == {hang_after_checkpoint}:
        time.sleep(3600)  # the test SIGKILLs this process here

    checkpoint.CheckpointManager.save = save_and_report
""")

# The toy method's run (helpers.ema_teacher_toy), `Run`'s default script.
TOY_SCRIPT = SCRIPT_HARNESS + textwrap.dedent("""
    from helpers.ema_teacher_toy import ema_teacher_method, run_config
    toy, config = ema_teacher_method(), run_config({data_dir!r})
    result = train.train_and_evaluate(config, {workdir!r}, method=toy)
    one = lambda tree: flat_params(jax.tree.map(lambda x: x.addressable_data(0), tree))
    np.savez({out!r}, **{{"params" + k: v for k, v in one(result.state.params).items()}},
             **{{"teacher" + k: v for k, v in one(result.state.extra["teacher"]).items()}})
    metrics = {{"train": result.eval_metrics}}
    if {evaluate_checkpoint}:
      metrics["checkpoint"] = train.evaluate_checkpoint(config, {workdir!r}, method=toy)
    with open({out!r} + ".json", "w") as f:
      json.dump(metrics, f)
""")


class Run:
  """One training subprocess of the toy method (or of `script`, a template with the same fields,
  e.g. tests/test_train_smtc.py's); a thread collects its output as it comes."""

  def __init__(
    self,
    data_dir,
    workdir,
    *,
    devices: int = 1,
    hang_after_checkpoint=None,
    evaluate_checkpoint: bool = False,
    script: str = TOY_SCRIPT,
  ):
    self.workdir, self.out = str(workdir), str(workdir) + ".npz"
    script = script.format(
      tests=os.path.join(REPO, "tests"),
      devices=devices,
      data_dir=data_dir,
      workdir=self.workdir,
      out=self.out,
      hang_after_checkpoint=hang_after_checkpoint,
      evaluate_checkpoint=evaluate_checkpoint,
    )
    env = dict(
      subprocess_env(devices),
      PYTHONUNBUFFERED="1",
      JAX_COMPILATION_CACHE_DIR=COMPILATION_CACHE,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    self.started = time.monotonic()
    self.proc = subprocess.Popen(
      [PYTHON, "-c", script],
      env=env,
      cwd=REPO,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
    )
    self._lines = []
    self._reader = threading.Thread(
      target=lambda: self._lines.extend(self.proc.stdout), daemon=True
    )
    self._reader.start()

  @property
  def output(self) -> str:
    return "".join(self._lines)

  def wait_for(self, text: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while text not in self.output:
      if self.proc.poll() is not None or time.monotonic() > deadline:
        self.proc.kill()
        pytest.fail(f"no {text!r} (exit {self.proc.poll()}):\n{self.output[-5000:]}")
      time.sleep(0.01)

  def wait(self, timeout: float = 600) -> int:
    self.proc.wait(timeout)
    self._reader.join(timeout)
    self.seconds = time.monotonic() - self.started
    return self.proc.returncode

  def result(self) -> tuple[dict, dict, dict]:
    """(params, teacher, {"train": eval metrics[, "checkpoint": evaluate_checkpoint's]})."""
    assert self.wait() == 0, self.output[-6000:]
    with np.load(self.out) as saved:
      arrays = dict(saved)
    with open(self.out + ".json") as f:
      metrics = json.load(f)
    return (
      {k[len("params") :]: v for k, v in arrays.items() if k.startswith("params")},
      {k[len("teacher") :]: v for k, v in arrays.items() if k.startswith("teacher")},
      metrics,
    )

  def kill(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
      self.wait()
