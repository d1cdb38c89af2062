"""SMTC end to end on tiny data: a 2-step training run on DAVIS frame folders (tiny RANDOM ViT), its
final frame-folder evaluation (candidates scored each on its own with both DAVIS-2017 unsupervised
protocols, PNGs written) and `vosjax.segment` with its checkpoint."""

import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

from helpers.tiny_configs import (
  DAVIS2017_QUALITY,
  DAVIS2017_SIZE,
  DAVIS_NUM_FRAMES,
  DAVIS_SEQUENCES,
)
from vosjax import segment
from vosjax import train
from vosjax.data import video as video_io
from vosjax.evaluation import davis_protocol
from vosjax.evaluation import frame_folders
from vosjax.evaluation import windows
from vosjax.methods import smtc


def tiny_smtc_config(train_root, eval_root) -> ml_collections.ConfigDict:
  """SMTC with a tiny random ViT on DAVIS frame folders (the frame_clips reader), 2 steps."""
  config = smtc.default_config()
  config.data = ml_collections.ConfigDict()
  config.data.source = "frame_clips"
  config.data.root = str(train_root)
  config.data.quality = "480p"
  config.data.sequences = ()
  config.data.resolution = (32, 32)
  config.data.clip_length = 4
  config.data.frame_gap = 1
  config.data.gap_shrink = "until_fits"
  config.data.eval_root = str(eval_root)
  config.data.eval_quality = DAVIS2017_QUALITY
  config.data.eval_sequences = ()
  config.data.eval_chunk_frames = 4  # one chunk per call
  config.backbone.random_init = True
  config.backbone.arch_overrides.embed_dim = 32
  config.backbone.arch_overrides.depth = 1
  config.backbone.arch_overrides.num_heads = 2
  config.model.num_semantic_slots, config.model.num_instances = 4, 3
  config.model.train_iterations, config.model.inference_iterations = 2, 3
  config.model.correlation_size = (2, 2)
  config.model.inference_resolution = (32, 48)
  config.model.similarity_threshold = 0.0  # random slots: keep about half as candidates
  config.batch_size, config.num_train_steps = 2, 2
  config.log_every_steps = config.checkpoint_every_steps = 2
  config.num_eval_videos_to_write = 1
  return config


@pytest.fixture(scope="module")
def trained(tiny_davis_dir, tiny_davis2017_dir, tmp_path_factory):
  config = tiny_smtc_config(tiny_davis_dir, tiny_davis2017_dir)
  workdir = tmp_path_factory.mktemp("smtc") / "work"
  result = train.train_and_evaluate(config, str(workdir))
  return config, workdir, result


@pytest.mark.slow  # one tiny SMTC training step compiles for ~1 min on a shared CPU
def test_frame_folder_evaluation_scores_the_candidates(trained, tiny_davis2017_dir):
  config, workdir, result = trained
  metrics = json.loads((workdir / "eval_metrics.json").read_text())
  assert metrics["step"] == 2 and metrics["num_videos"] == len(DAVIS_SEQUENCES)
  for prefix in ("", "perframe_"):
    for key in ("J&F-Mean", "J-Mean", "F-Mean"):
      assert 0.0 <= metrics[prefix + key] <= 1.0, (prefix + key, metrics)
  for protocol in frame_folders.PROTOCOLS:
    assert (workdir / "frame_eval" / protocol / "global_results.csv").is_file()

  annotations = frame_folders.annotation_folder(tiny_davis2017_dir, DAVIS2017_QUALITY)
  for sequence in DAVIS_SEQUENCES:
    pngs = sorted((workdir / "frame_results" / sequence).glob("*.png"))
    assert len(pngs) == DAVIS_NUM_FRAMES
    ids = np.stack([np.asarray(Image.open(p)) for p in pngs])
    assert Image.open(pngs[0]).mode == "P" and ids.shape[1:] == DAVIS2017_SIZE[::-1]
    with np.load(workdir / "frame_candidates" / f"{sequence}.npz") as saved:
      masks, valid = saved["masks"], saved["valid"]
    assert masks.shape == (DAVIS_NUM_FRAMES, 12, 2, 3) and 0 < valid.mean() < 1
    # Each PNG pixel shows one of the candidates covering it, and 0 where none does.
    full = windows.upsample_nearest_floor(masks, ids.shape[1:])
    shown = np.take_along_axis(full, np.maximum(ids.astype(np.int64) - 1, 0)[:, None], 1)[:, 0]
    assert (shown | (ids == 0)).all() and ((ids > 0) == full.any(1)).all()
  # The reported score is the candidates' score (not the PNGs').
  scored = frame_folders.score_candidates(
    annotations, workdir / "frame_candidates", list(DAVIS_SEQUENCES)
  )
  for protocol, prefix in (
    ("davis2017-unsupervised", ""),
    ("davis2017-unsupervised-perframe", "perframe_"),
  ):
    results = scored[protocol].global_results()
    assert results["J&F-Mean"] == pytest.approx(metrics[prefix + "J&F-Mean"])
  assert result.eval_metrics["J&F-Mean"] == pytest.approx(metrics["J&F-Mean"])


@pytest.mark.slow
def test_segment_writes_the_masks_of_the_evaluation(trained, tiny_davis2017_dir, tmp_path):
  """`vosjax.segment` restores the checkpoint and writes the masks of the evaluation (the same
  chunk per call: binarised masks are compared exactly), plus overlays."""
  config, workdir, _ = trained
  sequence = DAVIS_SEQUENCES[0]
  frames_dir = tiny_davis2017_dir / "JPEGImages" / DAVIS2017_QUALITY / sequence
  outputs = segment.segment_video(
    config, str(workdir), str(frames_dir), str(tmp_path / "out"), chunk_frames=4
  )
  assert outputs.num_frames == DAVIS_NUM_FRAMES
  written = sorted(outputs.masks_dir.glob("*.png"))
  evaluated = sorted((workdir / "frame_results" / sequence).glob("*.png"))
  assert len(written) == len(evaluated) == DAVIS_NUM_FRAMES
  for mine, theirs in zip(written, evaluated):
    np.testing.assert_array_equal(np.asarray(Image.open(mine)), np.asarray(Image.open(theirs)))
  assert outputs.gif.stat().st_size > 0
  assert video_io.read_video(outputs.gif).shape[0] == DAVIS_NUM_FRAMES
  assert davis_protocol.PROTOCOLS["davis2017-unsupervised"].max_proposals == 20
