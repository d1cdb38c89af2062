"""The checkout, the interpreter and the environment of child pythons; the persistent JAX
compilation cache they all share (tests/conftest.py applies it to the pytest process)."""

import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = sys.executable

# The persistent compilation cache: kept between sessions in the system temporary folder, bounded
# (least recently used entries evicted; the eviction's file lock also keeps concurrent test
# sessions from reading half-written entries). Every writer must bound it: JAX's eviction needs
# the access-time file that only a bounded cache writes beside each entry. Programs that compile
# faster than the threshold (eager single operations) are not worth a file.
COMPILATION_CACHE = os.path.join(tempfile.gettempdir(), "vosjax-test-jax-cache")
COMPILATION_CACHE_SETTINGS = {
  "JAX_COMPILATION_CACHE_DIR": COMPILATION_CACHE,
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2",
  "JAX_COMPILATION_CACHE_MAX_SIZE": str(1 << 30),  # bytes
}


def subprocess_env(num_devices: int = 1) -> dict:
  """Environment for a child python that fakes `num_devices` CPU devices and finds the repo (it
  inherits the persistent compilation cache settings, `COMPILATION_CACHE_SETTINGS`)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  env["JAX_PLATFORMS"] = "cpu"
  return env
