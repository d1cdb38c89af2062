"""Every config of configs/ trains 2 steps and evaluates on tiny data, as `vosjax.main` would run
it.

The configs are globbed: a new file in configs/ fails here until
`helpers.tiny_configs.CONFIG_OVERRIDES` gives it tiny overrides (data, model size, batch). Each case
runs the real `vosjax.train.train_and_evaluate` (data reader, method, checkpointing, the evaluation
its data source dispatches to) and checks the state, the metrics it returns and writes, and the
files that evaluation writes.
"""

import json
import math
import subprocess

import numpy as np
import pytest
from PIL import Image

from helpers.environment import PYTHON, REPO, subprocess_env
from helpers.tiny_configs import (
  CONFIGS,
  CONFIG_OVERRIDES,
  DAVIS2017_SIZE,
  DAVIS_NUM_FRAMES,
  DAVIS_SEQUENCES,
)
from vosjax import methods

CONFIG_FILES = sorted(p.name for p in CONFIGS.glob("*.py") if p.name != "__init__.py")
# What each data source's evaluation must report (besides step and num_videos) and its videos.
_EXPECTED = {
  "tfds": (("fg_ari", "miou"), 4),  # TINY_SYNTHETIC's 4 validation videos
  "davis": (
    ("J-Mean", "F-Mean", "J&F-Mean", "baseline_J-Mean", "baseline_F-Mean"),
    len(DAVIS_SEQUENCES),
  ),
  "frame_clips": (
    ("J&F-Mean", "J-Mean", "F-Mean", "perframe_J&F-Mean", "perframe_J-Mean", "perframe_F-Mean"),
    len(DAVIS_SEQUENCES),
  ),
}


def test_every_config_has_tiny_overrides():
  assert "demo.py" in CONFIG_FILES and len(CONFIG_FILES) >= 6
  assert sorted(CONFIG_OVERRIDES) == CONFIG_FILES


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_trains_two_steps_and_evaluates(name, config_run):
  config, workdir, result = config_run(name)
  source = config.data.source

  assert int(result.state.step) == 2 and not result.preempted
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
  metrics = result.eval_metrics
  assert json.loads((workdir / "eval_metrics.json").read_text()) == json.loads(json.dumps(metrics))
  keys, num_videos = _EXPECTED[source]
  assert metrics["step"] == 2 and metrics["num_videos"] == num_videos, metrics
  assert set(keys) <= set(metrics), (sorted(metrics), keys)
  for key, value in metrics.items():
    if isinstance(value, float):
      assert math.isfinite(value) and -1.0 <= value <= 1.0, (key, value)
  for key in keys:  # means of scores in [0, 1] (an adjusted Rand index may be below 0)
    assert 0.0 <= metrics[key] <= 1.0 or "ari" in key, (key, metrics[key])

  if source == "tfds":
    assert (workdir / "eval_outputs" / "video000.gif").stat().st_size > 0
  else:
    # Masks at the size of the evaluated frames (davis: 480p; frame_clips: the 240p eval root).
    results, size = (
      (workdir / "davis_results", (854, 480))
      if source == "davis"
      else (workdir / "frame_results", DAVIS2017_SIZE)
    )
    for sequence in DAVIS_SEQUENCES:
      pngs = sorted((results / sequence).glob("*.png"))
      assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(DAVIS_NUM_FRAMES)]
      with Image.open(pngs[0]) as image:
        assert image.mode == "P" and image.size == size
    assert (workdir / "eval_outputs" / f"{DAVIS_SEQUENCES[0]}.gif").stat().st_size > 0
  if source == "frame_clips":
    # Both DAVIS-2017 unsupervised protocols wrote their official CSV tables.
    for protocol, prefix in (
      ("davis2017-unsupervised", ""),
      ("davis2017-unsupervised-perframe", "perframe_"),
    ):
      table = (workdir / "frame_eval" / protocol / "global_results.csv").read_text().splitlines()
      row = dict(zip(table[0].split(","), table[1].split(",")))
      assert float(row["J&F-Mean"]) == pytest.approx(metrics[prefix + "J&F-Mean"], abs=5e-4)
    ids = np.stack(
      [
        np.asarray(Image.open(p))
        for p in sorted((workdir / "frame_results" / DAVIS_SEQUENCES[0]).glob("*.png"))
      ]
    )
    if methods.load_method(config).SEGMENT_IDS == "clusters":  # (class ids are written as is)
      # Cluster ids ranked by area: 0 is the largest segment of the video.
      assert np.bincount(ids.ravel()).argmax() == 0


def _flag(key: str, value) -> str:
  if isinstance(value, tuple):
    value = "(" + ",".join(str(v) for v in value) + ")"
  return f"--config.{key}={value}"


def test_ytvis_without_eval_root_trains_saves_and_exits_normally(tiny_davis_dir, tmp_path):
  """configs/ytvis.py with no `data.eval_root` (its default) used to exit 1 at the final evaluation.

  The real command line; the backbone is the config's ViT-S/8 with random weights (the tiny
  `arch_overrides` of the other cases are not command-line flags), at 32x56 (4x7 tokens).
  """
  overrides = {
    k: v
    for k, v in CONFIG_OVERRIDES["ytvis.py"].items()
    if not k.startswith(("backbone.arch_overrides.", "data.eval_"))
  }
  overrides["data.root"] = str(tiny_davis_dir)
  workdir = tmp_path / "work"
  command = [
    PYTHON,
    "-m",
    "vosjax.main",
    "--config",
    "configs/ytvis.py",
    "--workdir",
    str(workdir),
    *(_flag(k, v) for k, v in overrides.items()),
  ]
  proc = subprocess.run(
    command, env=subprocess_env(1), capture_output=True, text=True, timeout=900, cwd=REPO
  )
  output = proc.stdout + proc.stderr
  assert proc.returncode == 0, output[-5000:]
  assert "eval_root is not set" in output
  metrics = json.loads((workdir / "eval_metrics.json").read_text())
  assert metrics == {"step": 2, "num_videos": 0}
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
  assert not (workdir / "frame_results").exists()
