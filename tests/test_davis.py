"""DAVIS folders: real DAVIS-2016 data, synthetic roots, flow-pair iterator, evaluation flows."""

from pathlib import Path

import cv2
import numpy as np
from PIL import Image
import pytest

from configs import davis2016
from helpers import real_data
from vosjax.data import davis
from vosjax.data import optical_flow
from vosjax.data import pipeline
from vosjax.data import video as video_io

VELOCITY = np.array([1.0, -1.0])  # Pixels per frame (dy, dx) at the native 64x80 size.
RESOLUTION = (32, 40)  # Half size: flows are rescaled by 0.5.


@pytest.fixture(scope="module")
def davis2016_root() -> Path:
  return real_data.davis2016_root()  # skips without the real data


def test_shared_davis2016_sequences_and_loading(davis2016_root):
  with pytest.warns(UserWarning, match="without frames: cows, goat"):
    sequences = davis.list_sequences(davis2016_root)
  assert len(sequences) == 18 and "blackswan" in sequences and "cows" not in sequences
  assert davis.sequences_without_frames(davis2016_root) == ["cows", "goat"]
  assert len(davis.list_sequences(davis2016_root, require_frames=False)) == 20
  sample = davis.load_sequence(davis2016_root, "blackswan", resolution=(120, 214))
  assert sample["video"].shape == (50, 120, 214, 3) and sample["video"].dtype == np.float32
  assert sample["segmentations"].shape == (50, 120, 214)
  assert sample["segmentations"].dtype == np.int32
  assert set(np.unique(sample["segmentations"])) == {0, 1}
  assert sample["annotated"].all() and sample["names"][:2] == ["00000", "00001"]
  assert 0.0 <= sample["video"].min() and sample["video"].max() <= 1.0
  with pytest.raises(FileNotFoundError, match="'cows' has no frames.*annotations only"):
    davis.load_sequence(davis2016_root, "cows")


def texture(height, width, seed):
  noise = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)
  return (cv2.GaussianBlur(noise, (0, 0), 2.0) * 255).astype(np.uint8)


@pytest.fixture
def synthetic_root(tmp_path) -> Path:
  """Two translating-texture sequences (7 and 5 frames, 64x80), masks with void, one mask-only."""
  root = tmp_path / "DAVIS"
  for seq, num_frames, seed in (("alpha", 7, 0), ("beta", 5, 1)):
    base = texture(96, 112, seed)
    for t in range(num_frames):
      top, left = 16 - int(VELOCITY[0] * t), 16 - int(VELOCITY[1] * t)
      frame = base[top : top + 64, left : left + 80]  # Content moves by VELOCITY per frame.
      path = davis.frames_dir(root) / seq / f"{t:05d}.png"  # Lossless, so DIS is clean.
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(frame).save(path)
      ids = np.zeros((64, 80), np.uint8)
      ids[10:30, 10:30], ids[40:50, 50:70], ids[0, :] = 1, 2, davis.VOID_LABEL
      if t != 3:  # Frame 3 is not annotated.
        video_io.write_indexed_png(davis.annotations_dir(root) / seq / f"{t:05d}.png", ids)
  video_io.write_indexed_png(
    davis.annotations_dir(root) / "masks-only/00000.png", np.zeros((64, 80))
  )
  return root


def test_synthetic_sequence_loading(synthetic_root):
  with pytest.warns(UserWarning, match="masks-only"):
    assert davis.list_sequences(synthetic_root) == ["alpha", "beta"]
  sample = davis.load_sequence(synthetic_root, "alpha")
  assert sample["video"].shape == (7, 64, 80, 3)
  np.testing.assert_array_equal(sample["annotated"], [1, 1, 1, 0, 1, 1, 1])
  assert sample["segmentations"][0, 15, 15] == 1 and sample["segmentations"][0, 45, 60] == 2
  np.testing.assert_array_equal(sample["segmentations"][:, 0], 0)  # Void -> background.
  np.testing.assert_array_equal(sample["segmentations"][3], 0)
  small = davis.load_sequence(synthetic_root, "alpha", resolution=(32, 40))
  assert small["segmentations"][0, 7, 7] == 1 and set(np.unique(small["segmentations"])) == {
    0,
    1,
    2,
  }
  with pytest.raises(FileNotFoundError, match="not a DAVIS root"):
    davis.list_sequences(synthetic_root / "nope")


def test_flow_pair_iterator_is_deterministic_resumable_and_pairs_one_frame(
  synthetic_root, tmp_path
):
  cache = tmp_path / "cache"
  make = lambda start: davis.make_flow_pair_iterator(
    synthetic_root,
    ["alpha", "beta"],
    RESOLUTION,
    batch_size=6,
    seed=3,
    start_step=start,
    flow_cache_dir=cache,
  )
  run = make(0)
  batches = [next(run) for _ in range(4)]
  cached = sorted(p.name for p in cache.rglob("*.npy"))
  assert len(cached) == 8  # 2 sequences x 4 gaps, computed once.
  mtimes = [p.stat().st_mtime_ns for p in sorted(cache.rglob("*.npy"))]
  resumed = next(make(2))
  assert [p.stat().st_mtime_ns for p in sorted(cache.rglob("*.npy"))] == mtimes
  for key in batches[2]:
    np.testing.assert_array_equal(resumed[key], batches[2][key])
  assert not np.array_equal(batches[0]["flow_a"], batches[1]["flow_a"])
  first = batches[0]
  assert first["flow_a"].shape == first["flow_b"].shape == (6, 32, 40, 2)
  assert first["flow_a"].dtype == np.float32
  seen_pairs = set()
  for batch in batches:
    for i in range(6):
      gap_a, gap_b = batch["gaps"][i]
      seen_pairs.add((gap_a, gap_b))
      assert gap_a != gap_b
      num_frames = (7, 5)[batch["sequence_index"][i]]
      assert 0 <= batch["frame_index"][i] + gap_a < num_frames
      assert 0 <= batch["frame_index"][i] + gap_b < num_frames
      # Both flows describe the same frame: each is its gap times the velocity (half size).
      for flow, gap in ((batch["flow_a"][i], gap_a), (batch["flow_b"][i], gap_b)):
        np.testing.assert_allclose(
          np.median(flow[6:-6, 6:-6].reshape(-1, 2), 0), 0.5 * gap * VELOCITY, atol=0.25
        )
  assert len(seen_pairs) >= 4


def test_evaluation_flows_fall_back_to_the_opposite_gap(synthetic_root, tmp_path):
  out = davis.evaluation_flows(synthetic_root, "beta", RESOLUTION, tmp_path / "cache")
  assert out["flows"].shape == (5, 4, 32, 40, 2)
  np.testing.assert_array_equal(
    out["gaps_used"],
    [[1, 2, 1, 2], [1, 2, -1, 2], [1, 2, -1, -2], [1, -2, -1, -2], [-1, -2, -1, -2]],
  )
  medians = np.median(out["flows"][:, :, 6:-6, 6:-6].reshape(5, 4, -1, 2), 2)
  np.testing.assert_allclose(medians, 0.5 * out["gaps_used"][..., None] * VELOCITY, atol=0.25)
  assert out["segmentations"].shape == (5, 32, 40) and out["video"].shape == (5, 32, 40, 3)


def test_raft_flow_folders_feed_the_iterator(synthetic_root, tmp_path):
  flow_root = tmp_path / "raft"
  for seq, num_frames in (("alpha", 7), ("beta", 5)):
    for gap in (1, 2, -1, -2):
      for t in np.flatnonzero(optical_flow.valid_gap_frames(num_frames, gap)):
        constant = np.broadcast_to(np.array([gap, 10.0 * t], np.float32), (64, 80, 2))
        optical_flow.write_flo(
          optical_flow.raft_flow_dir(flow_root, seq, gap) / f"{t:05d}.flo", constant
        )

  def check(batch):
    for i in range(len(batch["frame_index"])):
      t = batch["frame_index"][i]
      for flow, gap in (
        (batch["flow_a"][i], batch["gaps"][i, 0]),
        (batch["flow_b"][i], batch["gaps"][i, 1]),
      ):
        np.testing.assert_allclose(
          flow, np.broadcast_to([0.5 * gap, 5.0 * t], flow.shape), rtol=1e-6
        )

  check(
    next(
      davis.make_flow_pair_iterator(
        synthetic_root,
        ["alpha", "beta"],
        RESOLUTION,
        batch_size=5,
        seed=0,
        flow_cache_dir=tmp_path / "cache",
        raft_flow_root=flow_root,
      )
    )
  )
  # The same folders through the DAVIS config and the training pipeline.
  config = davis2016.get_config()
  config.data.root = str(synthetic_root)
  config.data.sequences = ("alpha", "beta")
  config.data.resolution = RESOLUTION
  config.data.flow_cache_dir = str(tmp_path / "config_cache")
  config.data.raft_flow_root = str(flow_root)
  config.batch_size = 6
  check(next(pipeline.make_train_iterator(config)))
  evaluation = davis.evaluation_flows(
    synthetic_root,
    "beta",
    RESOLUTION,
    config.data.flow_cache_dir,
    raft_flow_root=config.data.raft_flow_root,
  )
  np.testing.assert_allclose(evaluation["flows"][0, 0, ..., 1], 0.0)  # gap 1 of frame 0: 10 * 0
  np.testing.assert_allclose(
    evaluation["flows"][4, 0], np.broadcast_to([-0.5, 20.0], RESOLUTION + (2,))
  )
  with pytest.raises(ValueError, match="flow_cache_dir"):
    next(davis.make_flow_pair_iterator(synthetic_root, ["alpha"], RESOLUTION, 2, 0))


def test_clip_iterator_reads_frame_folders_deterministically(davis2016_root):
  davis_lib = davis
  root = davis2016_root
  it = davis_lib.make_clip_iterator(
    root, ["blackswan", "camel"], (24, 48), batch_size=2, seed=3, clip_length=3, frame_gap=4
  )
  first, second = next(it), next(it)
  assert first["video"].shape == (2, 3, 24, 48, 3) and first["video"].dtype == np.float32
  assert 0.0 <= first["video"].min() and first["video"].max() <= 1.0
  assert not np.array_equal(first["video"], second["video"])
  resumed = next(
    davis_lib.make_clip_iterator(
      root,
      ["blackswan", "camel"],
      (24, 48),
      batch_size=2,
      seed=3,
      start_step=1,
      clip_length=3,
      frame_gap=4,
    )
  )
  np.testing.assert_array_equal(resumed["video"], second["video"])


def test_clip_frame_indices_shrink_the_gap_to_fit():
  davis_lib = davis
  rng = np.random.default_rng(0)
  for num_frames in (1, 2, 3, 5, 9, 50):
    for _ in range(20):
      idx = davis_lib.clip_frame_indices(num_frames, 3, 4, rng)
      assert idx.min() >= 0 and idx.max() < num_frames
      assert len(set(np.diff(idx))) == 1
  idx = davis_lib.clip_frame_indices(50, 3, 4, rng)
  assert list(np.diff(idx)) == [4, 4]


def official_clips(
  length: int, seq_length: int, gap: int, rule: str
) -> set[tuple[int, ...]] | None:
  """Every clip the official loaders can draw from a video of `length` frames, transcribed from
  `src/data.py::Dataloader.__getitem__`: SSL-UVOS (Betrayed, "until_fits") shrinks the gap in a
  `while`, SMTC ("once") in an `if`; then `ind = random.randint(lo, hi)` (inclusive) and frames
  `ind + gap * (i - seq_length // 2)`. None where the official raises (randint with hi < lo)."""
  if rule == "until_fits":  # SSL-UVOS writes gap*(self.seq_length//2)
    span = lambda gap: gap * (seq_length // 2)
    while span(gap) >= length - span(gap) - 1:
      gap = gap - 1
  else:  # SMTC writes gap*self.seq_length//2 (the same for even lengths)
    span = lambda gap: gap * seq_length // 2
    if span(gap) >= length - span(gap) - 1:
      gap = gap - 1
  lo, hi = span(gap), length - span(gap) - 1
  if hi < lo:
    return None
  return {
    tuple(ind + gap * (i - seq_length // 2) for i in range(seq_length)) for ind in range(lo, hi + 1)
  }


@pytest.mark.parametrize("clip_length,rule", [(4, "once"), (3, "until_fits"), (4, "until_fits")])
def test_clip_frame_indices_draw_the_official_clips(clip_length, rule):
  """The clips drawn (600 draws per length) are exactly the official set, for every video length
  where the official loader works; "once" where it raises (< 13 frames at L = 4, gap 4): valid
  clips at a smaller stride."""
  rng = np.random.default_rng(0)
  raised = []
  for num_frames in range(2, 45):
    drawn = {
      tuple(davis.clip_frame_indices(num_frames, clip_length, 4, rng, rule).tolist())
      for _ in range(600)
    }
    expected = official_clips(num_frames, clip_length, 4, rule)
    if expected is not None:
      assert drawn == expected, (num_frames, sorted(drawn), sorted(expected))
      continue
    raised.append(num_frames)
    assert all(0 <= min(c) and max(c) < num_frames for c in drawn), (num_frames, drawn)
    strides = {np.diff(c)[0] for c in drawn}
    assert len(strides) == 1 and strides.pop() < 3, (num_frames, drawn)
  assert raised == (list(range(2, 13)) if rule == "once" else []), raised
  with pytest.raises(ValueError, match="gap_shrink"):
    davis.clip_frame_indices(20, 4, 4, rng, "twice")


def test_smtc_clips_are_the_official_frames_at_256(davis2016_root, tmp_path):
  """YouTube-VOS layout (`<root>/JPEGImages/<video>/*.jpg`, quality ""), T = 4, gap 4, "once": each
  clip is frames c-8, c-4, c, c+4 with c in the official range [8, n-9], read as the official
  `readRGB` does (cv2 BGR->RGB, /255, INTER_LINEAR to 256x256; JPEG decoders may differ by a
  level)."""
  import cv2  # pylint: disable=g-import-not-at-top

  root = tmp_path / "ytvos"
  (root / "JPEGImages").mkdir(parents=True)
  for name in ("blackswan", "camel"):
    (root / "JPEGImages" / name).symlink_to(davis2016_root / "JPEGImages" / "480p" / name)

  def read_rgb(path):  # the official readRGB at (256, 256)
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) / 255
    return cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_LINEAR)

  official = {
    name: np.stack([read_rgb(p) for p in sorted((root / "JPEGImages" / name).glob("*.jpg"))])
    for name in ("blackswan", "camel")
  }
  batches = davis.make_clip_iterator(
    root,
    [],
    (256, 256),
    batch_size=3,
    seed=5,
    clip_length=4,
    frame_gap=4,
    quality="",
    gap_shrink="once",
  )
  centres = set()
  for _ in range(2):
    video = next(batches)["video"]
    assert video.shape == (3, 4, 256, 256, 3) and video.dtype == np.float32
    for clip in video:
      best = None
      for name, frames in official.items():
        for centre in range(len(frames)):
          indices = centre + 4 * np.arange(-2, 2)
          if indices.min() < 0 or indices.max() >= len(frames):
            continue
          error = np.abs(clip - frames[indices]).max()
          if best is None or error < best[0]:
            best = (error, name, centre, np.abs(clip - frames[indices]).mean())
      error, name, centre, mean_error = best
      assert error <= 3 / 255 and mean_error < 0.5 / 255, best
      assert 8 <= centre <= len(official[name]) - 9, best
      centres.add((name, centre))
  assert len(centres) > 1
