"""Multi-host: 2 processes x 4 fake CPU devices on 127.0.0.1 train like 1 process x 8 devices, and
the checkpoint they write restores on a different device count and continues."""

import shutil
import socket

import numpy as np

from helpers.tiny_configs import LAYOUT_OVERRIDES
from helpers.training_runs import BackgroundTraining, assert_same_params, finish, start_training


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_hosts_match_one_host_and_resume_on_other_device_count(
  tiny_synthetic_dir, eight_device_run, tmp_path
):
  # Reference: 1 process x 8 devices, 4 steps (`eight_device_run`, shared with test_train.py and
  # running beside the two hosts when it is not done yet), then continued to 6 steps.
  coordinator = f"127.0.0.1:{_free_port()}"
  hosts = [
    start_training(
      4,
      tiny_synthetic_dir,
      tmp_path / "multi",
      tmp_path / f"m4_{i}.npz",
      num_processes=2,
      process_id=i,
      coordinator=coordinator,
      **LAYOUT_OVERRIDES,
    )
    for i in range(2)
  ]
  try:
    finish(*hosts)
  finally:
    for host in hosts:
      if host.poll() is None:
        host.kill()
  multi4 = dict(np.load(tmp_path / "m4_0.npz"))
  single4 = eight_device_run.params()
  assert_same_params(multi4, single4)

  # The 2-host checkpoint (step 4) restores on 1 process x 2 devices and trains on to step 6,
  # landing where the 8-device run lands when it continues to step 6 (both runs side by side).
  shutil.copytree(eight_device_run.workdir, tmp_path / "single")
  resumed = BackgroundTraining(
    2,
    tiny_synthetic_dir,
    tmp_path / "multi",
    tmp_path / "r6.npz",
    num_train_steps=6,
    **LAYOUT_OVERRIDES,
  )
  single = BackgroundTraining(
    8,
    tiny_synthetic_dir,
    tmp_path / "single",
    tmp_path / "s6.npz",
    num_train_steps=6,
    **LAYOUT_OVERRIDES,
  )
  try:
    resumed6, single6 = resumed.params(), single.params()
  finally:
    resumed.kill()
    single.kill()
  moved = [k for k in single6 if not np.allclose(single6[k], single4[k])]
  assert moved, "steps 5-6 changed nothing; the comparison would prove nothing"
  assert_same_params(resumed6, single6)
