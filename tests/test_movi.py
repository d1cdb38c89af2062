"""The MOVi input pipeline, run on a real (tiny) vosjax_synthetic TFDS build."""

import itertools
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vosjax.data import movi
from vosjax.data import synthetic
from vosjax.data import synthetic_render as sr

NAME = "vosjax_synthetic/32x32_f10_o2-4_n6-5_s3"
SEED, FRAMES, SIZE = 3, 10, 32


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  data_config = movi.default_data_config()
  data_config.tfds_name = NAME
  data_config.data_dir = str(tmp_path_factory.mktemp("tfds"))
  data_config.resolution = (SIZE, SIZE)
  data_config.clip_length = 4
  data_config.clip_margin = 1
  data_config.shuffle_buffer = 4
  movi.get_builder(data_config)  # builds it
  return data_config


@pytest.fixture(scope="module")
def raw(config):
  """{video_name: decoded example} of both splits, straight from TFDS."""
  builder = movi.get_builder(config)
  return {
    ex["metadata"]["video_name"].decode(): ex
    for split in ("train", "validation")
    for ex in tfds.as_numpy(builder.as_dataset(split))
  }


@pytest.fixture(scope="module")
def eval_batches(config):
  return list(movi.make_eval_iterator(config, 4, process_index=0, process_count=1))


def find_clip(raw, video):
  """(video_name, start frame) of a decoded clip [L, H, W, 3] in `raw`."""
  frames = np.round(video * 255).astype(np.uint8)
  for name, ex in raw.items():
    for start in range(ex["video"].shape[0] - len(frames) + 1):
      if np.array_equal(ex["video"][start : start + len(frames)], frames):
        return name, start
  raise AssertionError("clip not found in the dataset")


def render(name):
  split, index = name.split("_")
  scene = sr.sample_scene(
    sr.scene_rng(SEED, {"train": 0, "validation": 1}[split], int(index)), FRAMES, 2, 4
  )
  return scene, synthetic.render_movi_arrays(scene, SIZE, SIZE)


def valid_videos(batches):
  return [v for b in batches for v, ok in zip(b["video"], b["valid"]) if ok]


def np_bilinear_resize(x, height, width):
  """Half-pixel-centre bilinear resize [T, h, w, C] with edge clamping."""

  def axis_weights(n_in, n_out):
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    low = np.floor(pos).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, pos - low

  r0, r1, fr = axis_weights(x.shape[1], height)
  c0, c1, fc = axis_weights(x.shape[2], width)
  rows = x[:, r0] * (1 - fr)[:, None, None] + x[:, r1] * fr[:, None, None]
  return rows[:, :, c0] * (1 - fc)[:, None] + rows[:, :, c1] * fc[:, None]


# --------------------------------------------------------------- basic shape --
def test_batch_shapes_dtypes_and_values(config, eval_batches):
  batch = next(movi.make_train_iterator(config, 4, seed=0, process_index=0, process_count=1))
  for b, frames in ((batch, 4), (eval_batches[0], FRAMES)):
    assert b["video"].shape == (4, frames, SIZE, SIZE, 3)
    assert b["video"].dtype == np.float32
    assert b["segmentations"].shape == (4, frames, SIZE, SIZE)
    assert b["segmentations"].dtype == np.int32
    for key in ("forward_flow", "backward_flow"):
      assert b[key].shape == (4, frames, SIZE, SIZE, 2) and b[key].dtype == np.float32
    assert b["depth"].shape == (4, frames, SIZE, SIZE, 1)
    assert b["valid"].dtype == bool and b["valid"].shape == (4,)
    assert 0 <= b["video"].min() and b["video"].max() <= 1
    assert b["segmentations"].max() >= 2  # several objects
  assert sorted(movi.default_data_config().keys()) == sorted(
    [
      "source",
      "tfds_name",
      "data_dir",
      "train_split",
      "eval_split",
      "resolution",
      "clip_length",
      "clip_margin",
      "eval_frames",
      "shuffle_buffer",
      "max_instances",
      "num_shards",
    ]
  )


# ------------------------------------------------------------------ decoding --
def test_decoded_flow_depth_and_masks_match_the_renderer(raw, eval_batches):
  videos = 0
  for batch in eval_batches:
    for i in np.flatnonzero(batch["valid"]):
      name, start = find_clip(raw, batch["video"][i])
      assert start == 0
      _, arrays = render(name)
      rendered = arrays["render"]
      for key, range_key in (
        ("forward_flow", "forward_flow_range"),
        ("backward_flow", "backward_flow_range"),
        ("depth", "depth_range"),
      ):
        low, high = arrays[range_key]
        step = (high - low) / 65535
        error = np.abs(batch[key][i] - rendered[key])
        assert error.max() <= step / 2 + 1e-4 * max(1.0, abs(high)), key
      np.testing.assert_array_equal(batch["segmentations"][i], arrays["segmentations"][..., 0])
      videos += 1
  assert videos == 5


def test_warping_with_decoded_flow_reproduces_next_frame(raw, eval_batches):
  batch = eval_batches[0]
  centres = (
    np.stack(np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij"), -1) + 0.5
  ).reshape(-1, 2)
  checked = 0
  for i in range(2):
    name, _ = find_clip(raw, batch["video"][i])
    scene, arrays = render(name)
    seg_of_layer = np.zeros(len(scene.objects) + 1, int)
    seg_of_layer[arrays["order"]] = np.arange(1, len(scene.objects) + 1)
    seg = batch["segmentations"][i]
    for t in range(FRAMES - 1):
      flow = batch["forward_flow"][i, t].reshape(-1, 2)
      target = centres + flow
      # Frame t+1 evaluated exactly at p + flow (decoded from uint16).
      rgb, layer = sr.sample_frame(scene, t + 1, target, SIZE, SIZE)
      same = seg_of_layer[layer] == seg[t].ravel()
      assert same.mean() > 0.8
      warped = np.round(np.clip(rgb, 0, 1) * 255)
      frame = np.round(batch["video"][i, t].reshape(-1, 3) * 255)
      assert np.abs(warped - frame)[same].max() <= 1  # uint8 rounding
      # Backward flow of t+1, bilinearly interpolated at p + flow (exact for
      # the affine flow of one layer), returns to p.
      low = np.floor(target - 0.5).astype(int)
      frac = target - 0.5 - low
      inside = np.all((low >= 0) & (low < SIZE - 1), -1)
      lr, lc = np.clip(low[:, 0], 0, SIZE - 2), np.clip(low[:, 1], 0, SIZE - 2)
      corners = [(lr, lc), (lr + 1, lc), (lr, lc + 1), (lr + 1, lc + 1)]
      weights = [
        (1 - frac[:, 0]) * (1 - frac[:, 1]),
        frac[:, 0] * (1 - frac[:, 1]),
        (1 - frac[:, 0]) * frac[:, 1],
        frac[:, 0] * frac[:, 1],
      ]
      one_layer = inside & np.all([seg[t + 1][r, c] == seg[t].ravel() for r, c in corners], 0)
      back = sum(
        w[:, None] * batch["backward_flow"][i, t + 1][r, c] for w, (r, c) in zip(weights, corners)
      )
      assert one_layer.mean() > 0.5
      np.testing.assert_allclose((flow + back)[one_layer], 0, atol=2e-3)
      checked += 1
  assert checked == 2 * (FRAMES - 1)


# ------------------------------------------------------------------ training --
def take(iterator, n):
  return list(itertools.islice(iterator, n))


def test_train_stream_is_deterministic_by_seed(config):
  first = take(movi.make_train_iterator(config, 4, seed=0, process_index=0, process_count=1), 3)
  again = take(movi.make_train_iterator(config, 4, seed=0, process_index=0, process_count=1), 3)
  other = take(movi.make_train_iterator(config, 4, seed=1, process_index=0, process_count=1), 3)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not all(np.array_equal(a["video"], b["video"]) for a, b in zip(first, other))


def test_resume_yields_the_uninterrupted_batches(config):
  # 6 train videos, batches of 4, shuffle blocks of 4: resumes land inside
  # blocks and epochs.
  full = take(movi.make_train_iterator(config, 4, seed=5, process_index=0, process_count=1), 7)
  for start in (2, 4):
    resumed = take(
      movi.make_train_iterator(
        config, 4, seed=5, start_step=start, process_index=0, process_count=1
      ),
      7 - start,
    )
    for step, batch in enumerate(resumed, start):
      for key in batch:
        np.testing.assert_array_equal(
          batch[key], full[step][key], err_msg=f"start {start} step {step} {key}"
        )


def test_resume_far_ahead_is_cheap(config):
  started = time.perf_counter()
  batch = next(
    movi.make_train_iterator(config, 4, seed=0, start_step=10**12, process_index=0, process_count=1)
  )
  assert batch["video"].shape == (4, 4, SIZE, SIZE, 3)
  assert time.perf_counter() - started < 60  # would never end skipping 4e12 records


def test_epochs_cover_all_videos_and_windows_respect_margin(config, raw):
  batches = take(movi.make_train_iterator(config, 4, seed=2, process_index=0, process_count=1), 6)
  clips = [find_clip(raw, v) for v in valid_videos(batches)]  # 24 = 4 epochs
  train = {n for n in raw if n.startswith("train")}
  epochs = [[name for name, _ in clips[e * 6 : (e + 1) * 6]] for e in range(4)]
  for epoch in epochs:
    assert sorted(epoch) == sorted(train)
  assert len({tuple(e) for e in epochs}) > 1  # reshuffled between epochs
  starts = [start for _, start in clips]
  assert min(starts) >= 1 and max(starts) <= FRAMES - 4 - 1
  assert len(set(starts)) >= 3


# ---------------------------------------------------------------- evaluation --
def test_eval_pads_last_batch_and_covers_split(raw, eval_batches):
  assert len(eval_batches) == 2  # 5 videos, batches of 4
  assert eval_batches[0]["valid"].all()
  np.testing.assert_array_equal(eval_batches[1]["valid"], [True, False, False, False])
  for key, value in eval_batches[1].items():
    if key != "valid":
      assert not value[1:].any(), key
  names = [find_clip(raw, v)[0] for v in valid_videos(eval_batches)]
  assert sorted(names) == sorted(n for n in raw if n.startswith("validation"))


def test_hosts_read_disjoint_parts_that_cover_the_split(config, raw):
  eval_names, train_names = [], []
  for host in range(2):
    batches = list(movi.make_eval_iterator(config, 4, process_index=host, process_count=2))
    assert len(batches) == 2  # ceil(ceil(5 / 2) / 2), the same on every host
    assert all(b["video"].shape[0] == 2 for b in batches)
    eval_names.append({find_clip(raw, v)[0] for v in valid_videos(batches)})
    train = take(
      movi.make_train_iterator(config, 4, seed=0, process_index=host, process_count=2), 3
    )
    train_names.append({find_clip(raw, v)[0] for v in valid_videos(train)})
  assert not eval_names[0] & eval_names[1]
  assert eval_names[0] | eval_names[1] == {n for n in raw if n.startswith("validation")}
  assert not train_names[0] & train_names[1]
  assert train_names[0] | train_names[1] == {n for n in raw if n.startswith("train")}


def test_resize_interpolates_and_scales_flow(config, eval_batches):
  resized_config = config.copy_and_resolve_references()
  resized_config.resolution = (16, 64)
  resized = next(movi.make_eval_iterator(resized_config, 4, process_index=0, process_count=1))
  native = eval_batches[0]
  for i in range(4):
    for key in ("video", "depth"):
      np.testing.assert_allclose(
        resized[key][i],
        np_bilinear_resize(native[key][i], 16, 64),
        atol=1e-4,
        rtol=1e-5,
        err_msg=key,
      )
    for key in ("forward_flow", "backward_flow"):
      expected = np_bilinear_resize(native[key][i], 16, 64) * [16 / SIZE, 64 / SIZE]
      np.testing.assert_allclose(resized[key][i], expected, atol=1e-4, err_msg=key)
    # Nearest neighbour: every id comes from the 2 rows it covers.
    seg = resized["segmentations"][i]
    source = native["segmentations"][i][:, :, np.arange(64) // 2]
    assert np.all((seg == source[:, 0::2]) | (seg == source[:, 1::2]))


def test_max_instances_maps_higher_ids_to_background(config, eval_batches):
  capped_config = config.copy_and_resolve_references()
  capped_config.max_instances = 1
  capped = next(movi.make_eval_iterator(capped_config, 4, process_index=0, process_count=1))
  native = eval_batches[0]["segmentations"]
  np.testing.assert_array_equal(capped["segmentations"], np.where(native > 1, 0, native))


# -------------------------------------------------------------------- errors --
def test_clear_errors(config, monkeypatch):
  def with_changes(**changes):
    changed = config.copy_and_resolve_references()
    for key, value in changes.items():
      setattr(changed, key, value)
    return changed

  with pytest.raises(FileNotFoundError) as error:
    movi.get_builder(with_changes(tfds_name="movi_zz/128x128:1.0.0"))
  for part in (
    "movi_zz/128x128",
    config.data_dir,
    "--config.data.data_dir",
    "--config.data.tfds_name",
  ):
    assert part in str(error.value)
  with pytest.raises(ValueError, match="not a TFDS name"):
    movi.get_builder(with_changes(tfds_name="MOVi E"))
  with pytest.raises(ValueError, match="config name"):
    movi.get_builder(with_changes(tfds_name="vosjax_synthetic/64by64"))
  with pytest.raises(ValueError) as error:
    next(
      movi.make_train_iterator(
        with_changes(train_split="test"), 4, seed=0, process_index=0, process_count=1
      )
    )
  for part in ("'test'", NAME.split(":")[0], config.data_dir, "--config.data.train_split"):
    assert part in str(error.value)
  with pytest.raises(ValueError, match="multiple of the process count"):
    next(movi.make_train_iterator(config, 3, seed=0, process_index=0, process_count=2))
  with pytest.raises(ValueError, match="clip_length"):
    next(
      movi.make_train_iterator(
        with_changes(clip_length=9), 4, seed=0, process_index=0, process_count=1
      )
    )
  with pytest.raises(ValueError, match="eval_frames"):
    next(movi.make_eval_iterator(with_changes(eval_frames=11), 4, process_index=0, process_count=1))
  # An unreachable gs:// bucket fails within seconds instead of retrying.
  monkeypatch.setattr(movi, "_GCS_HOST", "gcs-probe.invalid")
  started = time.perf_counter()
  with pytest.raises(ConnectionError) as error:
    movi.get_builder(
      with_changes(tfds_name="movi_e/128x128:1.0.0", data_dir="gs://kubric-public/tfds")
    )
  assert time.perf_counter() - started < 15
  for part in ("movi_e/128x128", "gs://kubric-public/tfds", "--config.data.data_dir"):
    assert part in str(error.value)
