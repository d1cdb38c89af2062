"""PCK (CRW's JHMDB evaluation) and keypoint propagation of synthetic object centres."""

from __future__ import annotations

import numpy as np

from helpers.propagation_inputs import random_vit_features, synthetic_video
from references import propagation_reference as reference
from vosjax.correspondence import propagation
from vosjax.correspondence import readout
from vosjax.correspondence import settings
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
