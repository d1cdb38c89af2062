"""Faults during training (issue 7): kills, a damaged checkpoint and bad inputs lose no work.

The training runs are the real command line (`python -m vosjax.main`) on the tiny synthetic dataset
with 15 steps and a checkpoint every 5, killed and restarted with the same command. A run is
compared with one uninterrupted run of the same command: the saved train states (parameters,
optimizer state, step) must be equal array for array.

Every run compiles the same programs, so the processes share the persistent JAX compilation cache
of helpers.environment (content-addressed, kept between sessions in the system temporary folder),
here for every program however quick to compile: a warm run takes ~30 s instead of ~100 s on two
busy cores.
"""

import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from helpers.environment import COMPILATION_CACHE, PYTHON, REPO, subprocess_env
from helpers.tiny_configs import TINY_OVERRIDES, TINY_SYNTHETIC, tiny_config
from helpers.workdirs import checkpoint_meta, checkpoint_state, folder_snapshot
from vosjax.train import EXIT_PREEMPTED


NUM_STEPS = 15
CHECKPOINT_EVERY = 5
# TINY_OVERRIDES with 15 steps; log (and print) every step, so a test knows the step reached. A
# regulariser decay of 1000 steps keeps the schedule flat (TINY's 2 multiplies it by 5 every 2
# steps). Raw (u, v) flow input: the default rgb encoding turns NaN flow into black "unknown" pixels
# (as the official cvbase flow2rgb does), so only the raw encoding lets a NaN input reach the loss.
FAULT_OVERRIDES = {
  **TINY_OVERRIDES,
  "num_train_steps": NUM_STEPS,
  "log_every_steps": 1,
  "checkpoint_every_steps": CHECKPOINT_EVERY,
  "optimizer.decay_steps": 1000,
  "model.flow_encoding": "raw",
}
ORBAX_TMP = ".orbax-checkpoint-tmp"


def _flag_value(value) -> str:
  if isinstance(value, tuple):
    return "(" + ",".join(str(v) for v in value) + ")"
  return str(value)


class TrainingRun:
  """One `python -m vosjax.main` process; a thread collects its (merged) output as it comes."""

  def __init__(self, workdir, data_dir, *, devices: int = 1, **overrides):
    self.workdir = str(workdir)
    values = {**FAULT_OVERRIDES, "data.data_dir": str(data_dir), **overrides}
    self.command = [
      PYTHON,
      "-m",
      "vosjax.main",
      "--config",
      "configs/demo.py",
      "--workdir",
      self.workdir,
      *(f"--config.{key}={_flag_value(value)}" for key, value in values.items()),
    ]
    self._devices = devices
    self._lines = []
    self.proc = None
    self._starter = None  # thread of `start_after`
    self._start_error = None

  def start(self) -> "TrainingRun":
    env = dict(
      subprocess_env(self._devices),
      PYTHONUNBUFFERED="1",
      JAX_COMPILATION_CACHE_DIR=COMPILATION_CACHE,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    self._lines = []
    self.proc = subprocess.Popen(
      self.command, env=env, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()
    return self

  def start_after(self, prepare) -> "TrainingRun":
    """Starts the process from a thread once `prepare()` has returned (e.g. copied a checkpoint)."""

    def prepare_and_start():
      try:
        prepare()
        self.start()
      except Exception as e:  # pylint: disable=broad-except
        self._start_error = e

    self._starter = threading.Thread(target=prepare_and_start, daemon=True)
    self._starter.start()
    return self

  def kill(self) -> None:
    if self._starter is not None:
      self._starter.join(600)
    if self.proc is not None and self.proc.poll() is None:
      self.proc.kill()
      self.wait()

  def _read(self):
    for line in self.proc.stdout:
      self._lines.append(line)

  @property
  def output(self) -> str:
    return "".join(self._lines)

  def last_step(self) -> int:
    """The last `step N/15` progress line printed (0 if none)."""
    steps = [int(m.group(1)) for m in re.finditer(rf"^step (\d+)/{NUM_STEPS} ", self.output, re.M)]
    return steps[-1] if steps else 0

  def wait_until(self, condition, what: str, timeout: float = 600) -> None:
    """Polls `condition()` every 2 ms; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
      if self.proc.poll() is not None:
        self.wait()
        pytest.fail(
          f"training exited ({self.proc.returncode}) before {what}:\n{self.output[-5000:]}"
        )
      if time.monotonic() > deadline:
        self.proc.kill()
        pytest.fail(f"timed out waiting for {what}:\n{self.output[-5000:]}")
      time.sleep(0.002)

  def wait(self, timeout: float = 600) -> int:
    if self._starter is not None:
      self._starter.join(timeout)
      self._starter = None
      if self._start_error is not None:
        raise self._start_error
    self.proc.wait(timeout)
    self._reader.join(timeout)
    return self.proc.returncode

  def run(self, expect_success: bool = True) -> str:
    self.start()
    returncode = self.wait()
    if expect_success:
      assert returncode == 0, self.output[-6000:]
    return self.output

  def checkpoint_dir(self) -> str:
    return os.path.join(self.workdir, "checkpoints")

  def entries(self) -> list[str]:
    try:
      return sorted(os.listdir(self.checkpoint_dir()))
    except FileNotFoundError:
      return []

  def steps(self) -> list[int]:
    return sorted(int(name) for name in self.entries() if name.isdigit())


def differing_arrays(workdir, reference_workdir, step: int) -> list[str]:
  """Names of the arrays of the state at `step` that differ from the reference run's (exactly)."""
  actual, desired = checkpoint_state(workdir, step), checkpoint_state(reference_workdir, step)
  assert actual.keys() == desired.keys() and len(desired) > 100
  return [key for key in desired if not np.array_equal(actual[key], desired[key])]


def truncate_files(folder) -> int:
  """Cuts every file under `folder` to half its size (a partial copy, a full disk); returns
  count."""
  paths = [p for p in glob.glob(os.path.join(folder, "**"), recursive=True) if os.path.isfile(p)]
  for path in paths:
    os.truncate(path, os.path.getsize(path) // 2)
  return len(paths)


def copy_checkpoints(source_workdir, workdir, steps) -> None:
  for step in steps:
    shutil.copytree(
      os.path.join(source_workdir, "checkpoints", str(step)),
      os.path.join(workdir, "checkpoints", str(step)),
    )


def dataset_files(data_dir, split: str) -> list[str]:
  return glob.glob(os.path.join(data_dir, TINY_SYNTHETIC, "*", f"*-{split}.tfrecord-*"))


@pytest.fixture(scope="module")
def reference(tiny_synthetic_dir, tmp_path_factory):
  """The uninterrupted run (started at first use, in the background; `finished()` waits for it)."""
  run = TrainingRun(tmp_path_factory.mktemp("reference"), tiny_synthetic_dir).start()
  yield run
  run.kill()


def finished(reference: TrainingRun) -> str:
  assert reference.wait() == 0, reference.output[-6000:]
  assert reference.steps() == [5, 10, 15]
  return reference.workdir


def copy_reference_checkpoint_5(reference: TrainingRun, workdir) -> dict:
  """Waits for the uninterrupted run's checkpoint 5, copies it; returns the copy's snapshot."""
  deadline = time.monotonic() + 600
  while 5 not in reference.steps():
    if reference.proc.poll() is not None or time.monotonic() > deadline:
      raise RuntimeError(f"the uninterrupted run made no checkpoint 5:\n{reference.output[-3000:]}")
    time.sleep(0.05)
  copy_checkpoints(reference.workdir, workdir, [5])
  return folder_snapshot(workdir)


# The runs of the later tests start as soon as they can (the first test asks for them), so that they
# use the second core while the first test's runs, one after the other, use the first.


def write_nan_flow_range_copy(data_dir, copy_dir) -> None:
  """Copies the dataset; the first training record gets the flow range [NaN, NaN], so the reader
  decodes its forward flow as NaN (uint16 / 65535 * (max - min) + min)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  shutil.copytree(data_dir, copy_dir)
  (path,) = dataset_files(copy_dir, "train")
  records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  example = tf.train.Example.FromString(records[0])
  example.features.feature["metadata/forward_flow_range"].float_list.value[:] = [math.nan] * 2
  records[0] = example.SerializeToString()
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)


@pytest.fixture(scope="module")
def nan_run(reference, tiny_synthetic_dir, tmp_path_factory):
  """Resumes the uninterrupted run's checkpoint 5 on the NaN dataset, checking every 5 steps."""
  folder = tmp_path_factory.mktemp("nan")
  write_nan_flow_range_copy(tiny_synthetic_dir, str(folder / "tfds"))
  run = TrainingRun(folder / "work", folder / "tfds", log_every_steps=5)
  run.data_dir = str(folder / "tfds")
  run.start_after(
    lambda: setattr(run, "checkpoints_before", copy_reference_checkpoint_5(reference, run.workdir))
  )
  yield run
  run.kill()


@pytest.fixture(scope="module")
def wrong_type_run(reference, tiny_synthetic_dir, tmp_path_factory):
  """`--config.num_train_steps=1.5` in a workdir that holds a checkpoint."""
  run = TrainingRun(tmp_path_factory.mktemp("wrong_type"), tiny_synthetic_dir, num_train_steps=1.5)
  run.start_after(
    lambda: setattr(run, "workdir_before", copy_reference_checkpoint_5(reference, run.workdir))
  )
  yield run
  run.kill()


@pytest.fixture(scope="module")
def indivisible_batch_run(tiny_synthetic_dir, tmp_path_factory):
  """8 devices, `--config.batch_size=6`."""
  run = TrainingRun(
    tmp_path_factory.mktemp("batch") / "work", tiny_synthetic_dir, devices=8, batch_size=6
  ).start()
  yield run
  run.kill()


def test_killed_damaged_and_terminated_runs_resume_to_the_uninterrupted_state(
  reference, nan_run, wrong_type_run, indivisible_batch_run, tiny_synthetic_dir, tmp_path
):
  """One workdir lives through four faults; each restart is the same command:

  1. SIGKILL while checkpoint 10 is being written (its temporary folder exists).
  2. SIGKILL between checkpoint writes (at step 12, after checkpoint 10).
  3. Checkpoint 10 truncated on disk: the restart falls back to 5 and rewrites 10.
  4. SIGTERM: the run saves its current step and exits with the requeue status (75).
  The final restart must end with the states of the uninterrupted run at steps 10 and 15.
  (`nan_run`, `wrong_type_run` and `indivisible_batch_run` are requested only to start them now.)
  """
  del nan_run, wrong_type_run, indivisible_batch_run
  run = TrainingRun(tmp_path / "work", tiny_synthetic_dir)
  lost = {}  # fault -> training steps that had to be computed again

  # 1. SIGKILL during a checkpoint write. Orbax writes `10.orbax-checkpoint-tmp` and renames it
  # when complete; the kill must land while the temporary folder exists (bounded retries).
  for _ in range(3):
    shutil.rmtree(run.workdir, ignore_errors=True)
    run.start()
    run.wait_until(lambda: 5 in run.steps(), "checkpoint 5")
    run.wait_until(
      lambda: any(n.startswith(f"10{ORBAX_TMP}") for n in run.entries()),
      "the write of checkpoint 10",
    )
    run.proc.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    if any(n.startswith(f"10{ORBAX_TMP}") for n in run.entries()):
      break  # killed mid-write: the temporary folder is still there
  else:
    pytest.fail(f"3 kills missed the write of checkpoint 10: {run.entries()}")
  assert run.steps() == [5], run.entries()
  lost["SIGKILL during the write of checkpoint 10"] = run.last_step() - 5

  # 2. Restart; SIGKILL between checkpoint writes, at step 12.
  run.start()
  run.wait_until(lambda: run.last_step() >= 12, "step 12")
  run.proc.send_signal(signal.SIGKILL)
  assert run.wait() == -signal.SIGKILL
  assert "Resumed from" in run.output and "at step 5." in run.output, run.output[-5000:]
  assert not [n for n in run.entries() if ORBAX_TMP in n], "restart kept the partial checkpoint"
  assert run.steps() == [5, 10] and run.last_step() < 15, (run.entries(), run.last_step())
  lost["SIGKILL between checkpoint writes"] = run.last_step() - 10

  # 3. Damage checkpoint 10, restart: it is skipped (log), 5 restored, and 10 written again.
  # 4. SIGTERM in the same run once it is past step 12: it saves the current step and exits with
  # the documented requeue status, which schedulers requeue on (a finished run exits 0, below).
  assert truncate_files(os.path.join(run.checkpoint_dir(), "10")) > 5
  run.start()
  run.wait_until(lambda: run.last_step() >= 12, "step 12 after the truncated checkpoint")
  run.proc.send_signal(signal.SIGTERM)
  assert run.wait() == EXIT_PREEMPTED == 75, run.output[-5000:]
  assert "Exiting with status 75 (stopped by SIGTERM, checkpoint saved)" in run.output
  assert re.search(r"Checkpoint \S+/10 is unreadable .*trying the previous one", run.output)
  assert "at step 5." in run.output and "Replacing the unreadable checkpoint" in run.output
  lost["checkpoint 10 truncated"] = 10 - 5
  stopped = re.search(r"Stopped at step (\d+) after SIGTERM", run.output)
  assert stopped, run.output[-5000:]
  stopped_at = int(stopped.group(1))
  assert stopped_at % CHECKPOINT_EVERY and stopped_at == run.last_step()
  assert run.steps() == [5, 10, stopped_at]
  assert checkpoint_meta(run.workdir, stopped_at) == {
    "step": stopped_at,
    "data_step": stopped_at,
    "reason": "preempted",
  }
  assert not os.path.exists(os.path.join(run.workdir, "eval_metrics.json"))

  # The final restart continues from the SIGTERM checkpoint to the uninterrupted result.
  output = run.run()
  resumed = re.search(r"Resumed from \S+ at step (\d+)\.", output)
  assert resumed and int(resumed.group(1)) == stopped_at, output[-5000:]
  lost["SIGTERM"] = stopped_at - int(resumed.group(1))
  reference_workdir = finished(reference)
  assert run.steps() == [10, stopped_at, 15]  # max_to_keep=3
  for step in (10, 15):
    assert not differing_arrays(run.workdir, reference_workdir, step), f"step {step}"
  lost["final state arrays differing"] = (
    f"{len(differing_arrays(run.workdir, reference_workdir, 15))} of "
    f"{len(checkpoint_state(reference_workdir, 15))}"
  )
  with open(os.path.join(run.workdir, "eval_metrics.json")) as f:
    metrics = json.load(f)
  with open(os.path.join(reference_workdir, "eval_metrics.json")) as f:
    assert metrics == json.load(f)
  print("\nsteps computed again:", lost)


def test_nan_input_stops_at_the_step_and_keeps_the_last_good_checkpoint(reference, nan_run):
  """A training record whose flow range is NaN: the reader decodes its flow as NaN."""
  from vosjax.data import pipeline  # pylint: disable=g-import-not-at-top
  from vosjax.methods import motion_grouping  # pylint: disable=g-import-not-at-top

  # The default rgb encoding makes the NaN video's pixels "unknown" (black, -1): finite input.
  rgb_config = tiny_config(nan_run.data_dir)
  flow = next(pipeline.make_train_iterator(rgb_config))["forward_flow"][:, 0]  # [B, H, W, 2]
  nan_videos = np.isnan(flow).any(axis=(1, 2, 3))
  assert nan_videos.sum() == 1 and np.isnan(flow[nan_videos]).all()
  encoded = np.asarray(motion_grouping.encode(flow, rgb_config))
  assert np.all(encoded[nan_videos] == -1.0) and np.isfinite(encoded).all()

  # Raw flow input (FAULT_OVERRIDES): the NaN reaches the loss. The run resumed from the
  # uninterrupted run's checkpoint 5; every batch holds all 8 training videos, so steps 6.. are
  # non-finite, and with a check every 5 steps, steps 6-9 must not go unnoticed.
  assert nan_run.wait() != 0
  output = nan_run.output
  assert "at step 5." in output
  assert re.search(
    r"NonFiniteLossError: Non-finite loss or gradient at step 6 and 4 later "
    r"step\(s\) up to 10 .*last good state \(step 5\) is saved in",
    output,
  ), output[-5000:]
  assert "Traceback" not in output
  assert nan_run.steps() == [5]
  assert folder_snapshot(nan_run.workdir).items() >= nan_run.checkpoints_before.items()
  assert not differing_arrays(nan_run.workdir, finished(reference), 5)
  assert checkpoint_meta(nan_run.workdir, 5)["data_step"] == 5


def test_config_override_of_the_wrong_type_fails_before_touching_the_workdir(wrong_type_run):
  assert wrong_type_run.wait() != 0
  output = wrong_type_run.output
  assert (
    "FATAL Flags parsing error: flag --config.num_train_steps=1.5: invalid literal for int()"
    in output
  ), output[-3000:]
  assert "Traceback" not in output
  assert folder_snapshot(wrong_type_run.workdir) == wrong_type_run.workdir_before


def test_batch_size_not_divisible_by_the_device_count_fails_before_compiling(indivisible_batch_run):
  run = indivisible_batch_run
  assert run.wait() != 0
  assert (
    "config.batch_size=6 is not divisible by the number of devices (8 over 1 process(es)); "
    "set --config.batch_size to a multiple of 8."
  ) in run.output, run.output[-3000:]
  assert "Traceback" not in run.output  # one line naming the problem
  # Raised before the summary writer, hence before any data was read or program compiled.
  assert os.listdir(run.workdir) == []


@pytest.mark.parametrize("split", ["validation", "train"])
def test_dataset_directory_missing_a_split_fails_before_training(
  split, tiny_synthetic_dir, tmp_path
):
  from vosjax import train  # pylint: disable=g-import-not-at-top

  data_dir = str(tmp_path / "tfds")
  shutil.copytree(tiny_synthetic_dir, data_dir)
  (missing,) = dataset_files(data_dir, split)
  os.remove(missing)
  config = tiny_config(data_dir, **FAULT_OVERRIDES)
  with pytest.raises(FileNotFoundError) as error:
    train.train_and_evaluate(config, str(tmp_path / "work"))
  message = str(error.value)
  for part in (
    f"Split {split!r}",
    os.path.dirname(missing),
    os.path.basename(missing),
    "--config.data.data_dir",
  ):
    assert part in message, message
  assert not os.path.exists(tmp_path / "work" / "checkpoints")


def test_checkpoints_of_another_config_are_an_error_not_a_fresh_start(
  reference, tiny_synthetic_dir, tmp_path
):
  """Starting over instead would let max_to_keep delete the old run's checkpoints."""
  from vosjax.core import checkpoint  # pylint: disable=g-import-not-at-top
  from vosjax import train  # pylint: disable=g-import-not-at-top

  workdir = tmp_path / "work"
  shutil.copytree(os.path.join(finished(reference), "checkpoints"), workdir / "checkpoints")
  before = folder_snapshot(str(workdir / "checkpoints"))
  config = tiny_config(tiny_synthetic_dir, **{**FAULT_OVERRIDES, "model.slot_dim": 24})
  with pytest.raises(checkpoint.CheckpointMismatchError, match="rerun with the config"):
    train.train_and_evaluate(config, str(workdir))
  assert folder_snapshot(str(workdir / "checkpoints")) == before


# A corrupt video file: `tests/test_segment.py::test_corrupt_video_fails_with_a_message_naming_it`
# (the `vosjax.segment` command exits with one line naming the file, no traceback, nothing written)
# and `tests/test_video.py::test_corrupt_and_empty_files_raise` (the reader itself).
