"""`python -m vosjax.segment` with every override of the main command (`backbone.arch_overrides`),
the resolution the model runs at, and `--levels`: the masks of every level of Betrayed's clustering
hierarchy."""

import subprocess

import jax
import numpy as np
from PIL import Image

from helpers.environment import PYTHON, REPO, subprocess_env
from helpers.tiny_configs import TINY_BETRAYED, load_config, set_overrides
from helpers.videos import moving_square_video
from vosjax import methods
from vosjax import train
from vosjax.core import checkpoint
from vosjax.core import sharding
from vosjax.data import video as video_io
from vosjax.evaluation import windows

NUM_FRAMES = 8
# The frames go to the method at 32x48 and the backbone runs at 24x40 (3x5 tokens of 8 px).
OVERRIDES = {
  **TINY_BETRAYED,
  "data.resolution": (32, 48),
  "model.inference_resolution": (24, 40),
  "model.tau": 0.05,
}


def _flag(key, value):
  if isinstance(value, tuple):
    value = "(" + ",".join(str(v) for v in value) + ")"
  return f"--config.{key}={value}"


def test_segment_takes_arch_overrides_prints_the_model_resolution_and_writes_every_level(
  tmp_path,
):
  config = set_overrides(load_config("ytvis.py"), OVERRIDES)
  method = methods.load_method(config)
  model = method.make_model(config)
  state, _ = train.create_train_state(
    method, model, config, method.make_optimizer(config), sharding.make_mesh()
  )
  manager = checkpoint.CheckpointManager(str(tmp_path / "work"))
  manager.save(0, state, {"step": 0, "data_step": 0})
  manager.close()
  video = moving_square_video(tmp_path / "square.mp4", num_frames=NUM_FRAMES)
  output = tmp_path / "out"
  command = [
    PYTHON,
    "-m",
    "vosjax.segment",
    "--config",
    "configs/ytvis.py",
    "--workdir",
    str(tmp_path / "work"),
    "--input",
    str(video),
    "--output",
    str(output),
    "--levels",
    *(_flag(k, v) for k, v in OVERRIDES.items()),  # arch_overrides as command-line flags
  ]
  proc = subprocess.run(
    command, env=subprocess_env(1), capture_output=True, text=True, timeout=600, cwd=REPO
  )
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
  assert "the model runs at 40x24 (width x height)" in proc.stdout

  read = lambda folder: np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])
  masks = read(output / "masks")
  level_dirs = sorted((output / "levels").glob("level_*"), key=lambda p: int(p.name[6:]))
  levels = np.stack([read(folder) for folder in level_dirs])
  assert levels.shape[1:] == masks.shape == (NUM_FRAMES, 48, 64)

  # The whole video in one call (the command's single window): the hierarchy's levels, coarse to
  # fine, ranked by area and upsampled like the ids.
  frames = np.round(video_io.read_video(video) * 255).astype(np.uint8)
  inputs = method.segment_inputs(frames, config, cache_dir=None, cache_key="", flow_preset="")
  levels_config = method.with_hierarchy_levels(config)
  prediction = jax.jit(lambda p, v: method.predict(p, model, {"video": v}, levels_config))(
    state.params, inputs["video"][None]
  )
  num_levels = int(prediction["num_levels"][0])
  assert num_levels >= 2, "a one-level hierarchy would make this test weak"
  assert len(level_dirs) == num_levels
  expected = [
    windows.upsample_nearest(
      windows.rank_by_area(windows.upsample_labels(np.asarray(level), (32, 48))), (48, 64)
    )
    for level in np.asarray(prediction["levels"][0])[:num_levels][::-1]
  ]
  np.testing.assert_array_equal(levels, np.stack(expected))
  np.testing.assert_array_equal(levels[0], masks)  # the coarsest level is the id map
  counts = [len(np.unique(level)) for level in levels]
  assert counts[-1] > counts[0], f"segments per level, coarse to fine: {counts}"
  with Image.open(output / "levels" / "strip.png") as strip:
    assert strip.size == (64 * num_levels, 48)


def test_levels_of_a_method_without_a_hierarchy_is_a_clear_error(tmp_path):
  import pytest  # pylint: disable=g-import-not-at-top
  from vosjax import segment  # pylint: disable=g-import-not-at-top

  with pytest.raises(segment.SegmentError, match="--levels needs a method with a clustering"):
    segment.segment_video(
      load_config("demo.py"), str(tmp_path), str(tmp_path / "v.mp4"), str(tmp_path), levels=True
    )
