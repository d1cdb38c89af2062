"""Exactness of label propagation against our PyTorch transcriptions of the official loops.

Same feature maps in, label maps out: identical except at float ties, which are counted and shown
to be ties (the reference's own two best channels within TIE of each other at that pixel).
"""

from __future__ import annotations


import cv2
import numpy as np
import pytest

from helpers import real_data
from helpers.propagation_inputs import random_vit_features, synthetic_video
from references import propagation_reference as reference
from vosjax.correspondence import propagation
from vosjax.correspondence import readout
from vosjax.correspondence import settings
from vosjax.data import label_propagation as inputs

TIE = 1e-4


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
  davis = real_data.davis2016_root()
  config = settings.preset("dino")
  config.short_side = short_side
  frame_paths = inputs.list_frames(davis / "JPEGImages/480p" / sequence)[:num_frames]
  frames = inputs.read_dino_frames(frame_paths, short_side, 64, config.mean, config.std)
  width = int(short_side * 854 / 480 // 64 * 64)
  assert frames.shape == (num_frames, short_side, width, 3)
  _, normed, patch = random_vit_features(frames, "dino_vits16")
  ids = inputs.read_annotation_ids(davis / "Annotations/480p" / sequence / "00000.png")
  first = inputs.dino_first_labels(ids, patch, short_side, 64)
  assert first.shape == (short_side // 16, width // 16, 2)
  check_dino(normed, first, patch, config, f"dino/davis {sequence} {short_side}p")


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


@pytest.mark.parametrize("block_rows,block_cols", [(1, 1), (4, 3), (2, 11), (9, 2), (0, 0)])
def test_tiling_does_not_change_the_result(block_rows, block_cols):
  """Any query tile (padded at the bottom/right edge or not) gives the one-tile result."""
  rng = np.random.default_rng(0)
  features = propagation.l2_normalize(rng.standard_normal((5, 9, 11, 8)).astype(np.float32))
  first = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (9, 11))]
  for name in ("dino", "crw"):
    config = settings.preset(name)
    config.radius = 3.0
    config.context_frames = 2
    config.block_rows, config.block_cols = 9, 11
    whole = propagation.propagate(features, first, settings.spec_from(config))
    config.block_rows, config.block_cols = block_rows, block_cols
    tiled = propagation.propagate(features, first, settings.spec_from(config))
    np.testing.assert_allclose(tiled, whole, atol=1e-6, err_msg=name)


def test_tile_shape_respects_the_budget_and_skips_unreachable_keys():
  spec = settings.spec_from(settings.preset("dino"))
  for height, width in ((30, 52), (60, 104)):
    rows, cols = propagation.choose_block_shape(spec, height, width)
    keys = 8 * min(rows + 24, height) * min(cols + 24, width)
    assert rows * cols * keys * 4 <= propagation.BLOCK_BYTES
    assert rows * cols >= propagation.MIN_TILE_QUERIES
    # Fewer score entries than one tile per row band spanning the whole width.
    assert keys < 8 * min(rows + 24, height) * width
  tiny = settings.preset("dino")
  tiny.block_rows = 1
  rows, cols = propagation.choose_block_shape(settings.spec_from(tiny), 60, 104)
  assert rows == 1 and 1 * cols * 8 * 25 * min(cols + 24, 104) * 4 <= propagation.BLOCK_BYTES


def test_relative_windows_are_the_originals():
  square = propagation.relative_window("square", 2, 3, 2, 5)
  dense = reference.square_neighbourhood(3, 5, 2).numpy().astype(bool)
  # band rows 0..6 map to grid rows -2..4; keep those inside the 3-row grid.
  band = square.reshape(3, 5, 7, 5)[:, :, 2:5].reshape(15, 15)
  np.testing.assert_array_equal(band, dense)
  circle = propagation.relative_window("circle", 2.5, 4, 2, 6).reshape(4, 6, 8, 6)[:, :, 2:6]
  dense = reference.circle_mask(4, 6, 2.5).numpy() == 0
  np.testing.assert_array_equal(circle.reshape(24, 24), dense)


def crw_reference_ids(ref_soft, label_ids, frame_hw):
  """`dump_predictions`: cv2 bilinear of the soft maps to the frame size, argmax, label ids."""
  maps = np.stack([cv2.resize(s, (frame_hw[1], frame_hw[0])) for s in ref_soft])
  return np.asarray(label_ids)[np.argmax(maps, -1)], maps


TOPK_TIE = 1e-5  # logits (dot / T); float32 resolution near 5 is 5e-7


def check_crw(features, first_soft, label_ids, frame_hw, config, label):
  """Each step on the same context (teacher forcing) equals the reference except at queries whose
  k-th and (k+1)-th logits tie; end to end the label maps may then differ downstream of such a
  tie: counted and bounded. Returns (step cells at ties, end-to-end differing label pixels)."""
  spec = settings.spec_from(config)
  soft = np.asarray(propagation.propagate(propagation.l2_normalize(features), first_soft, spec))
  kwargs = dict(
    video_len=config.context_frames,
    radius=config.radius,
    topk=config.topk,
    temperature=config.temperature,
  )
  forced, gaps = reference.crw_reference(features, first_soft, forced=soft, **kwargs)
  cell_differs = np.abs(soft - forced).max(-1) > 1e-4
  assert (gaps[cell_differs] <= TOPK_TIE).all(), f"{label}: a step differs off a top-k tie"
  ref_soft, _ = reference.crw_reference(features, first_soft, **kwargs)
  ids = np.stack([readout.crw_readout(s, label_ids, frame_hw) for s in soft])
  ref_ids, ref_maps = crw_reference_ids(ref_soft, label_ids, frame_hw)
  forced_ids, forced_maps = crw_reference_ids(forced, label_ids, frame_hw)
  channel = np.searchsorted(label_ids, ids)
  # Against the teacher-forced reference: only argmax ties, or pixels near a top-k-tie cell.
  differ = channel != np.searchsorted(label_ids, forced_ids)
  if differ.any():
    footprint = np.zeros_like(differ)
    for t in range(len(soft)):
      cells = cv2.resize(cell_differs[t].astype(np.uint8), (frame_hw[1], frame_hw[0]))
      footprint[t] = cv2.dilate(cells, np.ones((65, 65), np.uint8)) > 0
    off = differ & ~footprint
    assert_equal_except_ties(channel[off], np.argmax(forced_maps, -1)[off], forced_maps[off])
  free_differ = int((ids != ref_ids).sum())
  assert free_differ <= 0.01 * ids.size, f"{label}: {free_differ} pixels differ end to end"
  print(
    f"{label}: steps exact except {int(cell_differs.sum())} of {cell_differs.size} cells at "
    f"top-k ties; end to end {free_differ} of {ids.size} label pixels differ"
  )
  return int(cell_differs.sum()), free_differ


@pytest.mark.parametrize(
  "overrides", [{}, {"radius": 2.5, "topk": 4, "context_frames": 3}, {"topk": 28, "radius": 35.0}]
)
def test_crw_protocol_matches_the_transcription_on_synthetic_objects(overrides):
  """Several objects, random ViT-S/16 (2 blocks) at the stride-16 label grid; the preset, small
  overrides, and the stride-8 preset's top-28 / radius 35."""
  config = settings.preset("crw")
  config.update(overrides)
  rgb, ids = synthetic_video(num_frames=12, height=160, width=288)
  frames = inputs.normalize(rgb, config.mean, config.std)
  tokens, _, _ = random_vit_features(frames, "dino_vits16")
  first, label_ids = inputs.crw_first_labels(ids[0], 16)
  assert first.shape[:2] == tokens.shape[1:3] and len(label_ids) >= 3
  check_crw(tokens, first, label_ids, ids.shape[1:], config, f"crw/synthetic {overrides}")


@pytest.mark.parametrize(
  "scale,num_frames,sequence",
  [(0.5, 8, "dog"), pytest.param(1.0, 24, "blackswan", marks=pytest.mark.slow)],
)
def test_crw_protocol_matches_the_transcription_on_davis_frames(
  tmp_path, scale, num_frames, sequence
):
  """Real frames through the CRW readers (native 854x480 frames resized to 848 wide: slow; the
  default run first shrinks the JPEGs by `scale`), random ViT-S/16, the preset."""
  davis = real_data.davis2016_root()
  config = settings.preset("crw")
  paths = inputs.list_frames(davis / "JPEGImages/480p" / sequence)[:num_frames]
  annotation = davis / "Annotations/480p" / sequence / "00000.png"
  if scale != 1.0:
    for path in paths:
      image = cv2.imread(str(path))
      size = (int(image.shape[1] * scale), int(image.shape[0] * scale))
      cv2.imwrite(str(tmp_path / path.name), cv2.resize(image, size))
    paths = [tmp_path / p.name for p in paths]
  frames = inputs.read_crw_frames(paths, 16, config.mean, config.std)
  tokens, _, _ = random_vit_features(frames, "dino_vits16")
  ids = inputs.read_annotation_ids(annotation)
  if scale != 1.0:
    ids = cv2.resize(ids, (frames.shape[2] // 16 * 16 + 5, frames.shape[1]), cv2.INTER_NEAREST)
  first, label_ids = inputs.crw_first_labels(ids, 16)
  assert first.shape[:2] == tokens.shape[1:3]
  check_crw(tokens, first, label_ids, ids.shape, config, f"crw/davis {sequence} x{scale}")
