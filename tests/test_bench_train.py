"""`python -m vosjax.bench train`: the loop's own step on synthetic inputs of the configured
shapes."""

import json

import numpy as np
import pytest

from vosjax.benchmarks import _config_file as config_file
from vosjax.benchmarks import train as bench_train


def test_synthetic_batch_and_image_count():
  example = {
    "flow_a": np.zeros((1, 8, 8, 2), np.float32),
    "flow_b": np.zeros((1, 8, 8, 2), np.float32),
  }
  batch = bench_train.synthetic_batch(example, 4)
  assert batch["flow_a"].shape == (4, 8, 8, 2) and batch["flow_a"].dtype == np.float32
  assert 0 < batch["flow_a"].max() <= 4.0  # flow-like, in pixels
  assert bench_train.images_per_example(example) == 2
  assert bench_train.images_per_example({"video": np.zeros((1, 3, 8, 8, 3))}) == 3


def test_overrides_are_checked():
  with pytest.raises(ValueError, match="no such config key"):
    config_file.load_config("configs/demo.py", ["model.no_such_key=1"])
  config = config_file.load_config("configs/demo.py", ["batch_size=4", "model.flow_encoding=raw"])
  assert config.batch_size == 4 and config.model.flow_encoding == "raw"


def test_benchmark_runs_the_training_step(tmp_path, capsys):
  """Through the command line: its printed seconds per step and its JSON."""
  overrides = [
    "batch_size=2",
    "model.encoder_widths=(8,8,8)",
    "model.slot_dim=8",
    "model.slot_mlp_hidden_size=8",
    "model.decoder_transpose_widths=(8,8,8)",
    "model.decoder_conv_width=8",
    "data.resolution=(16,16)",
  ]
  argv = ["--config", "configs/demo.py", "--steps", "2", "--json", str(tmp_path / "r.json")]
  assert bench_train.main(argv + [a for o in overrides for a in ("--set", o)]) == 0
  with open(tmp_path / "r.json") as f:
    result = json.load(f)
  assert result["finite"] and np.isfinite(result["loss"])
  assert result["steps_per_s"] > 0 and result["compile_s"] > 0
  assert result["images_per_s"] == pytest.approx(result["steps_per_s"] * 2 * 2)
  assert result["peak_memory_gib"] > 0
  # The seconds per step are printed (steps/s at 2 decimals is too coarse for a slow step).
  assert f"({1 / result['steps_per_s']:.2f} s/step, mean of 2)" in capsys.readouterr().out


def test_benchmark_runs_smtc_training_step_without_dino_weights():
  """configs/smtc_ytvos.py through the bench (student + teacher forward, losses, EMA) with a random
  backbone: no DINO file is read (the cache dir does not exist) and an image is a clip frame."""
  from helpers.tiny_configs import TINY_SMTC, set_overrides  # pylint: disable=import-outside-toplevel

  config = config_file.load_config(
    "configs/smtc_ytvos.py",
    ["batch_size=2", "data.resolution=(32,32)", "backbone.cache_dir='/nonexistent/dino'"],
  )
  set_overrides(config, TINY_SMTC)
  result = bench_train.benchmark(config, steps=1)
  assert result["config_method"] == "smtc" and result["finite"] and np.isfinite(result["loss"])
  assert result["images_per_s"] == pytest.approx(result["steps_per_s"] * 2 * 4)  # T = 4 frames


def test_backbone_benchmark_command(capsys):
  """`python -m vosjax.bench backbone` (docs/performance.md) at a tiny resolution."""
  from vosjax.benchmarks import backbone  # pylint: disable=g-import-not-at-top

  assert (
    backbone.main(
      [
        "--archs",
        "dino_vits16",
        "--resolutions",
        "32x64",
        "--frames",
        "2",
        "--frame-chunk",
        "2",
        "--repeats",
        "1",
        "--peak-size",
        "64",
      ]
    )
    == 0
  )
  row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dino_vits16")]
  assert len(row) == 1 and "2x4" in row[0]  # the 2x4 patch grid of 32x64
