"""`python -m vosjax.segment`: a tiny trained Motion Grouping model segments a video it never
saw."""

import subprocess

import jax
import numpy as np
from PIL import Image
import pytest

from helpers.environment import PYTHON, REPO, subprocess_env
from helpers.tiny_configs import TINY_OVERRIDES, tiny_config
from vosjax import segment
from vosjax.evaluation import windows
from vosjax import methods
from vosjax.methods import motion_grouping
from vosjax import train
from vosjax.core import sharding
from vosjax.data import optical_flow
from helpers.videos import HEIGHT, NUM_FRAMES, WIDTH, moving_square_video
from vosjax.data import video as video_io

CHECKPOINT_STEP = 7


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
  """A workdir holding a tiny Motion Grouping train state (helpers.tiny_configs.tiny_config) saved
  the way training saves it; returns (workdir, config, params).

  The parameters are the initialisation (training is what tests/test_train.py checks, and the
  notebook test trains then segments with the command line); only their restoration matters here.
  """
  from vosjax.core import checkpoint  # pylint: disable=g-import-not-at-top
  from vosjax import train  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path_factory.mktemp("trained"))
  config = tiny_config("unused: no training data is read")
  method = methods.load_method(config)
  flows = np.zeros((config.batch_size, 32, 32, 2), np.float32)
  state, _ = train.create_train_state(
    method,
    method.make_model(config),
    config,
    method.make_optimizer(config),
    sharding.make_mesh(),
    {"flow_a": flows, "flow_b": flows},
  )
  state = state.replace(step=state.step + CHECKPOINT_STEP)
  manager = checkpoint.CheckpointManager(workdir)
  manager.save(CHECKPOINT_STEP, state, {"step": CHECKPOINT_STEP, "data_step": CHECKPOINT_STEP})
  manager.close()
  return workdir, config, state.params


def _segment_command(workdir, video, output, *extra):
  overrides = [f"--config.{k}={v}".replace(" ", "") for k, v in TINY_OVERRIDES.items()]
  cmd = [
    PYTHON,
    "-m",
    "vosjax.segment",
    "--config",
    "configs/demo.py",
    "--workdir",
    str(workdir),
    "--input",
    str(video),
    "--output",
    str(output),
    *overrides,
    *extra,
  ]
  return subprocess.run(
    cmd, env=subprocess_env(1), capture_output=True, text=True, timeout=300, cwd=REPO
  )


def test_command_line_writes_masks_and_overlays_of_the_whole_video_prediction(
  checkpointed, tmp_path
):
  workdir, config, params = checkpointed
  video = moving_square_video(tmp_path / "square.mp4")
  output = tmp_path / "out"
  # 4 kept frames per window of 6: windows of frames 0-5 and 4-9.
  proc = _segment_command(workdir, video, output, "--chunk_frames=4")
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
  assert f"checkpoint step {CHECKPOINT_STEP}" in proc.stdout
  assert f"Wrote {NUM_FRAMES} masks to {output / 'masks'}" in proc.stdout
  assert "optical flow" in proc.stderr and "segment" in proc.stderr  # the progress bars

  pngs = sorted((output / "masks").glob("*.png"))
  assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(NUM_FRAMES)]
  masks = []
  for path in pngs:
    with Image.open(path) as image:
      assert image.mode == "P" and image.size == (WIDTH, HEIGHT)
      np.testing.assert_array_equal(
        np.asarray(image.getpalette()[:6]).reshape(2, 3), video_io.DAVIS_PALETTE[:2]
      )
      masks.append(np.asarray(image))
  masks = np.stack(masks)
  with Image.open(output / "overlay.gif") as gif:
    assert gif.n_frames == NUM_FRAMES and gif.size == (WIDTH, HEIGHT)
  assert video_io.read_video(output / "overlay.mp4").shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)

  # The evaluation code path on the whole video at once, with DIS flow computed here at the frame
  # size and resized: the windowed command wrote exactly this, upsampled (nearest) to the frames.
  frames = np.round(video_io.read_video(video) * 255).astype(np.uint8)
  flows = {
    gap: optical_flow.resize_flow(optical_flow.video_flow(frames, gap), (32, 32)) for gap in (1, -1)
  }
  for gap in (1, -1):
    cached = np.load(next((output / "flow_cache").rglob(f"dis-medium_gap{gap}_32x32.npy")))
    np.testing.assert_allclose(cached, flows[gap], atol=1e-5)
  method = methods.load_method(config)
  model = method.make_model(config)
  batch = {"forward_flow": flows[1][None], "backward_flow": flows[-1][None]}
  ids = jax.jit(lambda p, b: method.predict(p, model, b, config)["ids"])(params, batch)[0]
  assert 0 < np.mean(ids) < 1, "a constant prediction would make this comparison weak"
  both = np.concatenate([flows[1], flows[-1]])
  probability = jax.jit(lambda p, f: method.foreground_probability(p, model, f, config))(
    params, both
  )
  foreground = motion_grouping.mean_over_directions(probability.reshape(2, 1, *ids.shape))[0]
  resize = lambda x: np.asarray(jax.image.resize(x, (NUM_FRAMES, HEIGHT, WIDTH), "nearest"))
  expected = resize(np.asarray(ids, np.float32)).astype(np.uint8)
  # Windows of 6 frames and the whole video are programs of other shapes, which need not round
  # alike: a differing pixel must be a float tie, a foreground probability at the 0.5 threshold.
  differ = masks != expected
  assert differ.mean() < 0.01, f"{differ.sum()} of {differ.size} pixels differ"
  margin = np.abs(resize(np.asarray(foreground)) - 0.5)[differ]
  assert np.all(margin < 1e-5), f"differing pixels lie {margin} from the threshold"


def test_corrupt_video_fails_with_a_message_naming_it(tmp_path):
  broken = tmp_path / "broken_clip.mp4"
  broken.write_bytes(np.random.default_rng(0).bytes(4096))
  proc = _segment_command(tmp_path / "no_training", broken, tmp_path / "out")
  assert proc.returncode != 0
  assert "broken_clip.mp4" in proc.stderr and "no frame could be decoded" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "no_training").exists()


def test_missing_checkpoint_and_unsupported_method_are_clear_errors(tmp_path):
  video = moving_square_video(tmp_path / "v.mp4", num_frames=3)
  with pytest.raises(segment.SegmentError, match="No checkpoint folder .*nothing_here"):
    segment.segment_video(
      tiny_config("unused"), str(tmp_path / "nothing_here"), str(video), str(tmp_path / "out")
    )
  assert not (tmp_path / "nothing_here").exists()
  config = tiny_config("unused", method="slot_attention")
  with pytest.raises(segment.SegmentError, match="betrayed.*motion_grouping.*slot_attention"):
    segment.segment_video(config, str(tmp_path), str(video), str(tmp_path / "out"))


@pytest.mark.parametrize(
  "num_frames,chunk_frames", [(1, 4), (6, 4), (7, 4), (10, 4), (11, 1), (100, 7)]
)
def test_windows_keep_every_frame_once_and_only_with_both_flows(num_frames, chunk_frames):
  window, starts = windows.windows(num_frames, chunk_frames)
  assert window == min(chunk_frames + 2, num_frames)
  assert starts[0] == 0 and starts[-1] + window == num_frames
  filled = 0
  for start in starts:
    assert start < max(filled, 1)  # overlaps what is labelled (linking needs a shared frame)
    end = windows.kept_end(start, window, num_frames)
    # A kept frame at a window border must be the video's own first / last frame.
    assert end <= start + window - 1 or end == num_frames
    filled = max(filled, end)
  assert filled == num_frames


def test_link_ids_follows_permuted_clusters_and_numbers_new_ones():
  rng = np.random.default_rng(0)
  previous = rng.integers(0, 3, (2, 8, 8))
  permutation = np.array([2, 0, 1])  # previous id -> window id
  current = permutation[previous]
  current[0, :4] = 3  # a new cluster covering half of a frame
  # Window id 4 is absent from the shared frames (it appears later in the window).
  mapping, next_id = windows.link_ids(previous, current, num_ids=5, next_id=5)
  np.testing.assert_array_equal(mapping[:3], np.argsort(permutation))
  np.testing.assert_array_equal(mapping[3:], [5, 6])
  assert next_id == 7


def test_rank_by_area_and_nearest_upsampling_match_references():
  ids = np.array([[7, 7, 7], [2, 2, 7], [0, 7, 2]])
  np.testing.assert_array_equal(windows.rank_by_area(ids), [[0, 0, 0], [1, 1, 0], [2, 0, 1]])
  small = np.random.default_rng(1).integers(0, 5, (3, 7, 5)).astype(np.uint8)
  for size in ((13, 11), (32, 20), (7, 5), (3, 2), (21, 15)):
    expected = jax.image.resize(small.astype(np.float32), (3,) + size, "nearest")
    np.testing.assert_array_equal(windows.upsample_nearest(small, size), expected)


@pytest.mark.slow  # ~40 s: a random backbone and clustering compile; run with -m slow
def test_betrayed_ids_of_static_segments_stay_the_same_across_windows(tmp_path):
  """Betrayed by Attention on a frame folder, 12 frames in 3 windows, with a tiny random backbone.

  At a tiny tau every token is its own cluster, and a token that the square never crosses sees the
  same pixels in every frame (lossless PNG frames): its id must be the same in all 12 frames, which
  holds only if the clusters of each window are linked to the previous window's.
  """
  from helpers.tiny_configs import tiny_betrayed_config  # pylint: disable=g-import-not-at-top
  from vosjax.core import checkpoint  # pylint: disable=g-import-not-at-top

  config = tiny_betrayed_config(str(tmp_path / "unused"))
  config.model.tau = 1e-5
  method = methods.load_method(config)
  state, _ = train.create_train_state(
    method,
    method.make_model(config),
    config,
    method.make_optimizer(config),
    sharding.make_mesh(),
    {"video": np.zeros((1, 3, 32, 32, 3), np.float32)},
  )
  manager = checkpoint.CheckpointManager(str(tmp_path / "work"))
  manager.save(0, state, {"step": 0, "data_step": 0})
  manager.close()
  frames_dir = tmp_path / "frames"
  frames = video_io.read_video(moving_square_video(tmp_path / "v.mp4", num_frames=12))
  for t, frame in enumerate(np.round(frames * 255).astype(np.uint8)):
    frames_dir.mkdir(exist_ok=True)
    Image.fromarray(frame).save(frames_dir / f"frame{t:03d}.png")

  outputs = segment.segment_video(
    config, str(tmp_path / "work"), str(frames_dir), str(tmp_path / "out"), chunk_frames=4
  )
  masks = np.stack([np.asarray(Image.open(p)) for p in sorted(outputs.masks_dir.glob("*.png"))])
  assert masks.shape == (12, HEIGHT, WIDTH)
  # The square covers rows < 32 and columns < 42 of every frame; tokens are 12 x 16 pixels here.
  static = np.concatenate([masks[:, 36:, :].reshape(12, -1), masks[:, :, 48:].reshape(12, -1)], 1)
  assert len(np.unique(static)) >= 4
  np.testing.assert_array_equal(static, np.broadcast_to(static[0], static.shape))
  assert len(np.unique(masks)) > len(np.unique(static))  # the moving square has other ids
