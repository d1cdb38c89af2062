"""Exactness of label propagation against our PyTorch transcriptions of the official loops.

Same feature maps in, label maps out: identical except at float ties, which are counted and shown
to be ties (the reference's own two best channels within TIE of each other at that pixel).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from tests import propagation_reference as reference
from vosjax.correspondence import propagation
from vosjax.correspondence import readout
from vosjax.correspondence import settings
from vosjax.data import label_propagation as inputs
from vosjax.data import synthetic_render
from vosjax.models import pretrained
from vosjax.models import vit

DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016"
TIE = 1e-4


def random_vit_features(frames: np.ndarray, arch_name: str, depth: int = 2):
  """Tokens and normed tokens [T, h, w, C] of a random (seed 0) ViT on normalised frames."""
  arch = vit.VIT_ARCHITECTURES[arch_name].replace(depth=depth)
  module = vit.VisionTransformer(arch)
  params = pretrained.random_params(arch, seed=0)

  @jax.jit
  def forward(batch):
    out = module.apply({"params": params}, batch)
    return out.tokens, out.tokens_normed

  tokens, normed = zip(*(forward(frames[i : i + 2]) for i in range(0, len(frames), 2)))
  return np.concatenate(tokens), np.concatenate(normed), arch.patch_size


def assert_equal_except_ties(mine, ref, ref_maps, label=""):
  """Label maps equal except where the reference's maps are within TIE of a tie. Returns the
  number of differing pixels."""
  differ = mine != ref
  if differ.any():
    flat_maps = ref_maps[differ]
    at_mine = np.take_along_axis(flat_maps, mine[differ][:, None].astype(np.int64), 1)[:, 0]
    gaps = flat_maps.max(-1) - at_mine
    assert gaps.max() <= TIE, f"{label}: {differ.sum()} pixels differ, worst gap {gaps.max()}"
  return int(differ.sum())


def dino_run(features_normed, first_onehot, patch, config):
  spec = settings.spec_from(config)
  soft = np.asarray(
    propagation.propagate(propagation.l2_normalize(features_normed), first_onehot, spec)
  )
  ids = [
    readout.dino_readout(s, patch, (s.shape[0] * patch, s.shape[1] * patch), config.norm_mask)
    for s in soft[1:]
  ]
  return soft, np.stack(ids)


def check_dino(normed, first_onehot, patch, config, label):
  soft, ids = dino_run(normed, first_onehot, patch, config)
  ref_soft, ref_maps, ref_ids = reference.dino_reference(
    normed,
    first_onehot,
    patch,
    n_last=config.context_frames,
    size=int(config.radius),
    topk=config.topk,
    temperature=config.temperature,
  )
  np.testing.assert_allclose(soft, ref_soft, atol=1e-4)
  differ = assert_equal_except_ties(ids, ref_ids, ref_maps, label)
  print(f"{label}: {differ} of {ids.size} label pixels differ, all float ties")
  return differ, ids


@pytest.mark.skipif(not DAVIS.is_dir(), reason="needs ../shared/data/davis2016")
@pytest.mark.parametrize(
  "short_side,num_frames,sequence",
  [
    (240, 6, "dog"),
    pytest.param(480, 10, "blackswan", marks=pytest.mark.slow),
  ],
)
def test_dino_protocol_matches_the_transcription_on_davis_frames(short_side, num_frames, sequence):
  """Real frames, random ViT-S/16 (2 blocks), the preset (at DINO's 480p: slow; default run at
  short side 240)."""
  config = settings.preset("dino")
  config.short_side = short_side
  frame_paths = inputs.list_frames(DAVIS / "JPEGImages/480p" / sequence)[:num_frames]
  frames = inputs.read_dino_frames(frame_paths, short_side, 64, config.mean, config.std)
  width = int(short_side * 854 / 480 // 64 * 64)
  assert frames.shape == (num_frames, short_side, width, 3)
  _, normed, patch = random_vit_features(frames, "dino_vits16")
  ids = inputs.read_annotation_ids(DAVIS / "Annotations/480p" / sequence / "00000.png")
  first = inputs.dino_first_labels(ids, patch, short_side, 64)
  assert first.shape == (short_side // 16, width // 16, 2)
  check_dino(normed, first, patch, config, f"dino/davis {sequence} {short_side}p")


def synthetic_video(num_frames=10, height=128, width=224, seed=3):
  scene = synthetic_render.sample_scene(np.random.default_rng(seed), num_frames, 3, 5)
  rendered = synthetic_render.render_scene(scene, height, width)
  layer = rendered["layer"]
  ids = np.where(layer == len(scene.objects), 0, layer + 1).astype(np.uint8)
  rgb = rendered["rgb"].astype(np.float32)
  return rgb, ids


@pytest.mark.parametrize("overrides", [{}, {"radius": 3.0, "topk": 9, "context_frames": 3}])
def test_dino_protocol_matches_the_transcription_on_synthetic_objects(overrides):
  """Several objects with exact masks, random ViT-S/8 (2 blocks); the preset and overrides."""
  config = settings.preset("dino")
  config.update(overrides)
  rgb, ids = synthetic_video()
  assert len(np.unique(ids[0])) >= 3
  frames = inputs.normalize(rgb, config.mean, config.std)
  _, normed, patch = random_vit_features(frames, "dino_vits8")
  first = inputs.dino_first_labels(ids[0], patch, 128, 1)
  assert first.shape[:2] == normed.shape[1:3]
  check_dino(normed, first, patch, config, f"dino/synthetic {overrides}")


@pytest.mark.parametrize("block_rows", [1, 4, 0])
def test_blocking_does_not_change_the_result(block_rows):
  rng = np.random.default_rng(0)
  features = propagation.l2_normalize(rng.standard_normal((5, 9, 11, 8)).astype(np.float32))
  first = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (9, 11))]
  for name in ("dino", "crw"):
    config = settings.preset(name)
    config.radius = 3.0
    config.context_frames = 2
    config.block_rows = 9
    whole = propagation.propagate(features, first, settings.spec_from(config))
    config.block_rows = block_rows
    blocked = propagation.propagate(features, first, settings.spec_from(config))
    np.testing.assert_allclose(blocked, whole, atol=1e-6, err_msg=name)


def test_block_rows_respect_the_budget():
  spec = settings.spec_from(settings.preset("dino"))
  rows = propagation.choose_block_rows(spec, 60, 104)
  band = rows + 2 * 12
  assert 1 <= rows <= 60 and rows * 104 * 8 * band * 104 * 4 <= propagation.BLOCK_BYTES
  assert (rows + 1) * 104 * 8 * (band + 1) * 104 * 4 > propagation.BLOCK_BYTES


def test_relative_windows_are_the_originals():
  square = propagation.relative_window("square", 2, 3, 2, 5)
  dense = reference.square_neighbourhood(3, 5, 2).numpy().astype(bool)
  # band rows 0..6 map to grid rows -2..4; keep those inside the 3-row grid.
  band = square.reshape(3, 5, 7, 5)[:, :, 2:5].reshape(15, 15)
  np.testing.assert_array_equal(band, dense)
  circle = propagation.relative_window("circle", 2.5, 4, 2, 6).reshape(4, 6, 8, 6)[:, :, 2:6]
  dense = reference.circle_mask(4, 6, 2.5).numpy() == 0
  np.testing.assert_array_equal(circle.reshape(24, 24), dense)
