"""`vosjax.main` reports a missing bucket and missing pretrained weights as one line saying what to
do (the trace only with --traceback), before any training work."""

import subprocess

from helpers.environment import PYTHON, REPO, subprocess_env
from helpers.tiny_configs import TINY_SYNTHETIC


def _main(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [PYTHON, "-m", "vosjax.main", *flags],
    env=subprocess_env(1),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


def _assert_one_line_error(proc: subprocess.CompletedProcess, error: str, *phrases: str) -> None:
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.startswith("vosjax: ")]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith(f"vosjax: {error}: "), lines[0]
  for phrase in phrases:
    assert phrase in lines[0], (phrase, lines[0])
  assert "--traceback" in proc.stderr


def test_unreachable_bucket_is_one_line(tmp_path):
  # No network here: the gs:// probe fails within seconds (ConnectionError).
  proc = _main(
    "--config",
    "configs/movi_e.py",
    "--workdir",
    str(tmp_path / "w"),
    "--config.data.data_dir=gs://vosjax-no-such-bucket/tfds",
  )
  _assert_one_line_error(
    proc, "ConnectionError", "gs://vosjax-no-such-bucket/tfds", "--config.data.data_dir=DIR"
  )


def test_missing_pretrained_weights_are_one_line(tmp_path, tiny_synthetic_dir):
  proc = _main(
    "--config",
    "configs/movi_e.py",
    "--workdir",
    str(tmp_path / "w"),
    f"--config.data.tfds_name={TINY_SYNTHETIC}",
    f"--config.data.data_dir={tiny_synthetic_dir}",
    "--config.data.resolution=(32,32)",
    f"--config.backbone.cache_dir={tmp_path / 'empty_cache'}",
    "--config.backbone.allow_download=False",
  )
  _assert_one_line_error(
    proc, "PretrainedWeightsUnavailableError", "--config.backbone.checkpoint=PATH", "https://"
  )
  proc = _main(
    "--config",
    "configs/movi_e.py",
    "--workdir",
    str(tmp_path / "w"),
    f"--config.data.tfds_name={TINY_SYNTHETIC}",
    f"--config.data.data_dir={tiny_synthetic_dir}",
    f"--config.backbone.cache_dir={tmp_path / 'empty_cache'}",
    "--config.backbone.allow_download=False",
    "--traceback",
  )
  assert "Traceback" in proc.stderr and "PretrainedWeightsUnavailableError" in proc.stderr
