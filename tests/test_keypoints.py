"""PCK (CRW's JHMDB evaluation), JHMDB keypoint labels and propagation of synthetic object
centres against our transcription of the official test code."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import io as scipy_io
import torch

from helpers import dataset_layouts
from helpers.propagation_inputs import random_vit_features, synthetic_video
from references import propagation_reference as reference
from vosjax import propagate
from vosjax.correspondence import propagation
from vosjax.correspondence import readout
from vosjax.correspondence import settings
from vosjax.data import jhmdb
from vosjax.data import label_propagation as inputs
from vosjax.evaluation import keypoints


def official_pck(preds, gts, threshold):
  """Our transcription of videowalk code/eval/eval_pck.py (preds/gts as [2, J, T] per video)."""
  dist_all = {}
  for predres, nowgt in zip(preds, gts):
    visible = np.ones(predres.shape[1:])
    visible[predres[0] < 0] = 0
    boxes = np.zeros(nowgt.shape[2])
    for k in range(nowgt.shape[2]):
      minx, maxx, miny, maxy = 1e6, -1, 1e6, -1
      for j in range(nowgt.shape[1]):
        if visible[j, k] == 0:
          continue
        minx, miny = min(minx, nowgt[0, j, k]), min(miny, nowgt[1, j, k])
        maxx, maxy = max(maxx, nowgt[0, j, k]), max(maxy, nowgt[1, j, k])
      boxes[k] = 0.6 * np.linalg.norm(np.subtract([maxx, maxy], [minx, miny]))
    for j in range(nowgt.shape[1]):
      for k in range(1, nowgt.shape[2]):
        if visible[j, k]:
          d = np.linalg.norm(predres[:, j, k] - nowgt[:, j, k])
          dist_all.setdefault(j, []).append(d / boxes[k])
  return np.mean([100.0 * np.mean(np.asarray(d) <= threshold) for d in dist_all.values()])


def test_pck_equals_the_transcription_of_eval_pck():
  rng = np.random.default_rng(0)
  gts = [rng.uniform(0, 300, (t, 15, 2)) for t in (5, 9)]
  preds = [g + rng.normal(0, 25, g.shape) for g in gts]
  preds[0][2, 3] = -1  # invisible joint
  ours = keypoints.pck(preds, gts, (0.1, 0.2))
  for threshold in (0.1, 0.2):
    expected = official_pck(
      [p.transpose(2, 1, 0) for p in preds], [g.transpose(2, 1, 0) for g in gts], threshold
    )
    assert abs(ours[threshold] - expected) < 1e-9
  assert 0 < ours[0.1] < ours[0.2] < 100


def test_object_centres_propagate_as_the_transcription():
  """CRW protocol on a synthetic video: each object's centre is a keypoint channel; ours and the
  transcription give the same coordinates and the same PCK against the renderer's centres."""
  rgb, ids = synthetic_video(num_frames=8, height=160, width=288)
  config = settings.preset("crw")
  tokens, _, _ = random_vit_features(inputs.normalize(rgb, config.mean, config.std), "dino_vits16")
  stride = 16
  grid = tokens.shape[1:3]
  objects = [k for k in np.unique(ids[0]) if k]
  objects = [k for k in objects if (ids == k).any(axis=(1, 2)).all()]
  assert len(objects) >= 2
  centres = np.stack(
    [[np.argwhere(ids[t] == k)[:, ::-1].mean(0) for k in objects] for t in range(len(ids))]
  )  # [T, J, 2] (x, y) pixels
  first = np.zeros(grid + (1 + len(objects),), np.float32)
  first[..., 0] = 1
  for j, (x, y) in enumerate(centres[0]):
    cell = (int(y // stride), int(x // stride))
    first[cell] = 0
    first[cell + (j + 1,)] = 1
  spec = settings.spec_from(config)
  soft = np.asarray(propagation.propagate(propagation.l2_normalize(tokens), first, spec))
  ref, _ = reference.crw_reference(tokens, first, 20, 7.0, 7, 0.2)
  ours = np.stack([readout.keypoint_coordinates(s).T for s in soft]) * stride
  theirs = np.stack([readout.keypoint_coordinates(s).T for s in ref]) * stride
  np.testing.assert_allclose(ours, theirs, atol=1e-3)
  scores = keypoints.pck([ours], [centres], (0.1, 0.2))
  assert scores == keypoints.pck([theirs], [centres], (0.1, 0.2))
  print(f"synthetic object centres, random ViT: PCK {scores}")


@pytest.mark.parametrize("preset,crop", [("crw_stride8", 160), ("crw", 192)])
def test_jhmdb_keypoints_match_the_official_test_code(tmp_path, preset, crop):
  """A JHMDB-layout folder of a synthetic video whose joints are the objects' exact centres:
  the package's frames, label maps, propagated joints and PCK against our transcription of
  videowalk's jhmdb.py + eval_prop.py + process_pose + eval_pck.py, fed the same features."""
  rgb, ids, centres = dataset_layouts.synthetic_clip(num_frames=8, height=96, width=128)
  listing = dataset_layouts.write_jhmdb(tmp_path, {"clip": (rgb, ids, centres)})
  video = jhmdb.jhmdb_videos(listing)[0]
  config = settings.preset(preset)
  config.crop_size = crop
  stride = config.label_stride
  module, params = propagate.load_backbone("dino_vits16", random_init=True, depth=1)
  joints = jhmdb.read_joint_positions(video.joints_file)
  np.testing.assert_allclose(joints, centres, atol=1e-9)
  ours = propagate.propagate_keypoints(module, params, config, video.frames, joints[0])

  pos_img = scipy_io.loadmat(str(video.joints_file))["pos_img"]
  frames = reference.jhmdb_reference_frames(video.frames, crop, stride, config.mean, config.std)
  np.testing.assert_allclose(
    inputs.read_crw_frames(video.frames, stride, config.mean, config.std, crop), frames, atol=1e-6
  )
  first = reference.jhmdb_reference_labels(pos_img, rgb.shape[1:3], crop, stride)
  np.testing.assert_array_equal(ours["soft"][0], first)
  assert (first[..., 1:].max(axis=(0, 1)) == 1).all()  # every centre drawn as a peak of 1
  tokens = propagate.video_features(module, params, frames, config.feature)
  feats = torch.from_numpy(np.array(tokens)).permute(3, 0, 1, 2)[None]  # 1 C T h w
  feats = torch.nn.functional.interpolate(feats, (len(tokens),) + first.shape[:2], mode="trilinear")
  feats = feats[0].permute(1, 2, 3, 0).numpy()
  ref_soft, _ = reference.crw_reference(
    feats, first, config.context_frames, config.radius, config.topk, config.temperature
  )
  ref_grid, gaps = zip(*(reference.process_pose_reference(s) for s in ref_soft))
  ref_grid, gaps = np.stack(ref_grid, -1), np.stack(gaps)  # [2, J, T], [T, J]
  # process_pose's top-3 picks among equal values where they tie (a sigma-0.5 peak's four
  # neighbours on frame 0, and the propagated maps keep that symmetry within 1e-6): torch.topk's
  # choice among them is arbitrary. Elsewhere the coordinates are equal; PCK is then equal once
  # the transcription takes our choice at those ties.
  differ = np.abs(ours["grid"] - ref_grid.transpose(2, 1, 0)).max(-1) > 1e-4  # [T, J]
  assert (gaps[differ] <= 1e-6).all(), "a joint differs away from a top-3 tie"
  ref_grid[:, differ.T] = ours["grid"].transpose(2, 1, 0)[:, differ.T]
  ours_pck = keypoints.pck([ours["joints"]], [joints])
  ref_pck = reference.eval_pck_reference(
    [ref_grid], [pos_img], [rgb.shape[1]], [rgb.shape[2]], crop / stride
  )
  assert ours_pck == pytest.approx(ref_pck, abs=1e-9)
  print(
    f"{preset} crop {crop}: joints differing at top-3 ties: frame 0 {differ[0].sum()} of "
    f"{differ.shape[1]}, later frames {differ[1:].sum()} of {differ[1:].size}; PCK {ours_pck}"
  )
  # The same number from the written JSON through the scoring of `python -m vosjax.evaluate`.
  propagate.write_keypoint_outputs(tmp_path / "out", "clip", video.frames, ours["joints"])
  scored, count = keypoints.score_jhmdb(listing, tmp_path / "out" / "keypoints")
  assert count == 1 and scored == pytest.approx(ours_pck, abs=1e-9)


def test_gaussian_labels_match_draw_labelmap_near_every_border():
  """Joints inside, on and outside each border (int() truncation toward zero), sigma 0.5 / 1 /
  0 (one-hot): the label maps equal the transcription's."""
  xs = np.array([-2.2, -0.9, -0.2, 0.0, 0.4, 1.0, 1.49, 1.5, 5.3, 5.7, 18.6, 19.2, 19.9, 21.7])
  points = np.stack(np.meshgrid(xs, xs[::-1]), -1).reshape(-1, 2) * 8  # pixels of a 160 frame
  pos_img = (points + 1).T[:, :, None]
  for sigma in (0.5, 1.0, 0.0):
    ours = jhmdb.keypoint_label_maps(points, (160, 160), 0, 8, sigma)
    theirs = reference.jhmdb_reference_labels(pos_img, (160, 160), 0, 8, sigma)
    np.testing.assert_array_equal(ours, theirs)
  assert ours.shape == (20, 20, 1 + len(points))


def test_keypoint_json_round_trip_and_invisible_joints(tmp_path):
  joints = np.array([[[3.5, 4.25], [-1, -1]], [[10.0, 2.0], [7.0, 1.0]]])
  path = keypoints.write_keypoints_json(tmp_path / "v.json", "v", ["1", "2"], (24, 32), joints)
  np.testing.assert_array_equal(keypoints.read_keypoints_json(path), joints)
  (tmp_path / "bad.json").write_text('{"frames": [{"joints": [[1, 2]]}]}')
  with pytest.raises(ValueError, match="bad.json"):
    keypoints.read_keypoints_json(tmp_path / "bad.json")
