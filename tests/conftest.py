"""Shared fixtures: a tiny synthetic MOVi-format dataset, built for real once per test session."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/ is not an installed package; tests import it from the checkout.
if REPO not in sys.path:
  sys.path.insert(0, REPO)
TINY_SYNTHETIC = "vosjax_synthetic/32x32_f8_o2-4_n8-4_s1"


@pytest.fixture(scope="session")
def tiny_synthetic_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding `TINY_SYNTHETIC` (8 train / 4 validation videos, 8 frames, 32x32)."""
  from vosjax.data import movi  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds_tiny"))
  data_config = movi.default_data_config()
  data_config.tfds_name = TINY_SYNTHETIC
  data_config.data_dir = data_dir
  movi.get_builder(data_config)  # builds it
  return data_dir


def subprocess_env(num_devices: int = 1) -> dict:
  """Environment for a child python that fakes `num_devices` CPU devices and finds the repo."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  env["JAX_PLATFORMS"] = "cpu"
  return env


PYTHON = sys.executable
