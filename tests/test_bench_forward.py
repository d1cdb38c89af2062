"""`python -m vosjax.bench forward`: a flow-segmenting model's forward on random flows."""

import pytest

from vosjax.benchmarks import forward as bench_forward

TINY_MOTION_GROUPING = [
  "model.encoder_widths=(8,8,8)",
  "model.slot_dim=8",
  "model.slot_mlp_hidden_size=8",
  "model.decoder_transpose_widths=(8,8,8)",
  "model.decoder_conv_width=8",
  "data.resolution=(16,16)",
]


def test_forward_benchmark_command(capsys):
  argv = ["--config", "configs/demo.py", "--flows", "3", "--repeats", "2"]
  assert bench_forward.main(argv + [a for o in TINY_MOTION_GROUPING for a in ("--set", o)]) == 0
  out = capsys.readouterr().out
  assert "3 flows at 16x16" in out and "median" in out and "per call" in out, out


def test_forward_benchmark_refuses_a_method_without_flow_input():
  with pytest.raises(SystemExit, match="does not segment from flow"):
    bench_forward.main(["--config", "configs/smtc_ytvos.py", "--flows", "1"])
