"""`python -m vosjax.propagate`: DAVIS PNGs and overlays for a synthetic multi-object video."""

from __future__ import annotations

import numpy as np
from PIL import Image
import pytest

from vosjax import propagate
from vosjax.data import synthetic_render
from vosjax.data.davis import read_label_png
from vosjax.data.video import write_indexed_png


@pytest.fixture(scope="module")
def video(tmp_path_factory):
  folder = tmp_path_factory.mktemp("video")
  (folder / "frames").mkdir()
  scene = synthetic_render.sample_scene(np.random.default_rng(5), 6, 3, 4)
  rendered = synthetic_render.render_scene(scene, 96, 160)
  ids = np.where(rendered["layer"] == len(scene.objects), 0, rendered["layer"] + 1)
  for t, rgb in enumerate(rendered["rgb"]):
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(folder / "frames" / f"{t:05d}.png")
  write_indexed_png(folder / "first.png", ids[0])
  return folder, ids


@pytest.mark.parametrize("preset", ["dino", "crw", "crw_stride8"])
def test_command_writes_davis_pngs_and_overlays(video, tmp_path, preset, capsys):
  folder, ids = video
  overrides = ["--set", "short_side=96", "--set", "size_multiple=16"] if preset == "dino" else []
  code = propagate.main(
    [
      "--preset",
      preset,
      "--random_init",
      "--depth",
      "1",
      "--frames",
      str(folder / "frames"),
      "--first_labels",
      str(folder / "first.png"),
      "--output",
      str(tmp_path),
      *overrides,
    ]
  )
  assert code == 0
  pngs = sorted((tmp_path / "frames").glob("*.png"))
  assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(6)]
  masks = np.stack([read_label_png(p) for p in pngs])
  assert masks.shape == ids.shape
  assert set(np.unique(masks)) <= set(np.unique(ids[0]))
  if preset == "dino":
    np.testing.assert_array_equal(masks[0], ids[0])  # DINO writes the annotation as frame 0
  assert len(list((tmp_path / "overlays" / "frames").glob("*.jpg"))) == 6
  assert "6 frames" in capsys.readouterr().out


def test_bad_override_is_a_clear_error(video, tmp_path, capsys):
  folder, _ = video
  argv = ["--frames", str(folder / "frames"), "--first_labels", str(folder / "first.png")]
  code = propagate.main(argv + ["--output", str(tmp_path), "--random_init", "--set", "topk"])
  assert code == 1 and "key=value" in capsys.readouterr().err
