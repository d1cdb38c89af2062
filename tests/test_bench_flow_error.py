"""`python -m vosjax.bench flow_error`: DIS against exact flow on a tiny synthetic set."""

import json

import pytest

from helpers.tiny_configs import TINY_SYNTHETIC
from vosjax.benchmarks import flow_error


def test_flow_error_of_the_dis_twin(tmp_path):
  output = tmp_path / "flow_error.json"
  assert (
    flow_error.main(
      ["--tfds_name", TINY_SYNTHETIC, "--data_dir", str(tmp_path / "tfds"), "--json", str(output)]
    )
    == 0
  )
  result = json.loads(output.read_text())
  assert result["tfds_name"] == TINY_SYNTHETIC
  assert 0.0 < result["object_fraction"] < 1.0
  # The objects move and the background (mostly) does not; DIS is close but not exact.
  assert result["object_flow"] > 2 * result["background_flow"]
  assert 0.0 < result["object_epe"] < result["object_flow"]
  assert result["background_epe"] > 0.0


def test_flow_error_wants_the_exact_set():
  with pytest.raises(ValueError, match="without '_dis'"):
    flow_error.flow_error(TINY_SYNTHETIC + "_dis", "/nonexistent")
