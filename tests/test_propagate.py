"""`python -m vosjax.propagate`: DAVIS PNGs and overlays for a synthetic multi-object video; the
keypoint (JHMDB layout) and part (VIP layout) modes and their scores."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
import pytest

from helpers import dataset_layouts
from references import propagation_reference as reference
from vosjax import evaluate
from vosjax import propagate
from vosjax.correspondence import settings
from vosjax.data import synthetic_render
from vosjax.data import vip
from vosjax.data.davis import read_label_png
from vosjax.data.video import write_indexed_png
from vosjax.evaluation import keypoints
from vosjax.evaluation import parts


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


@pytest.fixture(scope="module")
def clips():
  return {
    "clip_a": dataset_layouts.synthetic_clip(num_frames=5, height=96, width=128, seed=3),
    "clip_b": dataset_layouts.synthetic_clip(num_frames=5, height=80, width=120, seed=4),
  }


def test_keypoint_mode_writes_json_overlays_and_pck(clips, tmp_path, capsys):
  """JHMDB layout of two synthetic videos (joints = exact object centres), crw_stride8 at crop
  128: one JSON per video with every frame and joint, overlays, PCK printed by the command and
  equal to `python -m vosjax.evaluate --protocol jhmdb-pck` on the JSONs."""
  listing = dataset_layouts.write_jhmdb(tmp_path / "jhmdb", clips)
  out = tmp_path / "out"
  argv = ["--mode", "keypoints", "--preset", "crw_stride8", "--jhmdb", str(listing)]
  argv += ["--random_init", "--depth", "1", "--set", "crop_size=128", "--output", str(out)]
  assert propagate.main(argv) == 0
  printed = capsys.readouterr().out
  assert "crop_size=128" in printed and "PCK@0.1" in printed
  for name, (rgb, _, centres) in clips.items():
    record = json.loads((out / "keypoints" / f"{name}.json").read_text())
    assert record["frame_size"] == list(rgb.shape[1:3])
    assert [f["frame"] for f in record["frames"]] == [f"{t + 1:05d}" for t in range(len(rgb))]
    assert all(len(f["joints"]) == centres.shape[1] for f in record["frames"])
    overlays = sorted((out / "overlays" / name).glob("*.jpg"))
    assert len(overlays) == len(rgb)
    assert np.asarray(Image.open(overlays[0])).shape == rgb.shape[1:]
  scores, count = keypoints.score_jhmdb(listing, out / "keypoints")
  assert count == 2 and f"PCK@0.1 {scores[0.1]:.2f}, PCK@0.2 {scores[0.2]:.2f}" in printed
  assert (
    evaluate.main(
      [
        "--protocol",
        "jhmdb-pck",
        "--gt",
        str(listing),
        "--results",
        str(out / "keypoints"),
        "--output",
        str(tmp_path / "scores"),
      ]
    )
    == 0
  )
  assert f"PCK@0.2 {scores[0.2]:.2f}" in capsys.readouterr().out


def test_part_mode_writes_indexed_pngs_and_miou(clips, tmp_path, capsys):
  """VIP_Fine layout (object ids as part ids): indexed part PNGs at the frame size for every
  annotated frame, overlays, mIoU printed and equal to `--protocol vip-miou`."""
  root = dataset_layouts.write_vip(tmp_path, clips)
  out = tmp_path / "out"
  argv = ["--mode", "parts", "--preset", "crw", "--vip", str(root), "--random_init"]
  argv += ["--depth", "1", "--set", "crop_size=128", "--output", str(out)]
  assert propagate.main(argv) == 0
  printed = capsys.readouterr().out
  for name, (rgb, ids, _) in clips.items():
    pngs = sorted((out / name).glob("*.png"))
    assert [p.stem for p in pngs] == [f"{(t + 1) * 25:012d}" for t in range(len(rgb))]
    with Image.open(pngs[1]) as image:
      assert image.mode == "P"
    masks = np.stack([read_label_png(p) for p in pngs])
    assert masks.shape == ids.shape
    assert len(list((out / "overlays" / name).glob("*.jpg"))) == len(rgb)
  miou, _, frames = parts.score_vip(root, out)
  assert frames == 10 and 0 < miou <= 1 and f"mIoU {miou:.4f}" in printed
  assert (
    evaluate.main(
      [
        "--protocol",
        "vip-miou",
        "--gt",
        str(root),
        "--results",
        str(out),
        "--output",
        str(tmp_path / "scores"),
      ]
    )
    == 0
  )
  assert f"mIoU {miou:.4f}" in capsys.readouterr().out


def test_task_modes_need_their_data_and_the_crw_protocol(tmp_path, capsys):
  argv = ["--random_init", "--output", str(tmp_path)]
  assert propagate.main(argv + ["--mode", "keypoints", "--preset", "crw"]) == 1
  assert "--jhmdb" in capsys.readouterr().err
  assert propagate.main(argv + ["--mode", "parts", "--preset", "dino"]) == 1
  assert "crw" in capsys.readouterr().err
  missing = tmp_path / "list.txt"
  missing.write_text("frames/clip joints/clip/joint_positions.mat\n")
  assert (
    propagate.main(argv + ["--mode", "keypoints", "--preset", "crw", "--jhmdb", str(missing)]) == 1
  )
  assert "joint_positions.mat" in capsys.readouterr().err


def test_part_mode_matches_the_official_vos_dataset_path(clips, tmp_path):
  """One VIP video through `propagate_video` (crop 128, crw) and through our transcription of
  VOSDataset (frames, the bilinear label resize, label set) + eval_prop.py + dump_predictions +
  eval_vip.py's resize, fed the same features: soft maps to 1e-4, part maps equal except where
  the transcription's own maps tie (within 1e-4)."""
  root = dataset_layouts.write_vip(tmp_path, {"clip_a": clips["clip_a"]})
  (video,) = vip.vip_videos(root)
  config = settings.preset("crw")
  config.crop_size, stride = 128, config.label_stride
  module, params = propagate.load_backbone("dino_vits16", random_init=True, depth=1)
  first_ids = vip.read_part_ids(video.annotations[0])
  ours = propagate.propagate_video(module, params, config, video.frames, first_ids)
  first, lblset = reference.vos_reference_labels(video.annotations[0], 128, stride)
  np.testing.assert_array_equal(ours["soft"][0], first)
  np.testing.assert_array_equal(ours["label_ids"], lblset[:, 0])
  frames = reference.jhmdb_reference_frames(video.frames, 128, stride, config.mean, config.std)
  tokens = np.array(propagate.video_features(module, params, frames, config.feature))
  ref_soft, _ = reference.crw_reference(
    tokens, first, config.context_frames, config.radius, config.topk, config.temperature
  )
  np.testing.assert_allclose(ours["soft"], ref_soft, atol=1e-4)
  differing = 0
  for t, maps in enumerate(ref_soft):
    ids, dist = reference.vos_reference_readout(maps, lblset, 128, first_ids.shape)
    differ = ours["ids"][t] != ids
    if differ.any():  # ties of the transcription's own upsampled maps, at the crop size
      small = np.asarray(Image.fromarray(ours["ids"][t]).resize((128, 128), Image.NEAREST))
      channel = np.searchsorted(lblset[:, 0], small)
      gap = dist.max(-1) - np.take_along_axis(dist, channel[..., None], -1)[..., 0]
      assert gap.max() <= 1e-4
    differing += int(differ.sum())
  print(f"VIP part maps: {differing} of {ours['ids'].size} pixels differ (ties)")


# ---------------------------------------------------------------- --features block --


@pytest.fixture(scope="module")
def betrayed_workdir(tmp_path_factory):
  """A workdir holding a tiny Betrayed train state (freshly initialised block, random 1-block
  32-wide backbone) saved as training saves it; returns (workdir, config, params, overrides)."""
  from helpers.tiny_configs import TINY_BETRAYED, tiny_betrayed_config
  from vosjax import methods
  from vosjax import train
  from vosjax.core import checkpoint
  from vosjax.core import sharding

  config = tiny_betrayed_config("unused: no training data is read")
  method = methods.load_method(config)
  state, _ = train.create_train_state(
    method,
    method.make_model(config),
    config,
    method.make_optimizer(config),
    sharding.make_mesh(),
    {"video": np.zeros((1, 3, 32, 32, 3), np.float32)},
  )
  workdir = tmp_path_factory.mktemp("betrayed")
  manager = checkpoint.CheckpointManager(str(workdir))
  manager.save(0, state, {"step": 0, "data_step": 0})
  manager.close()
  overrides = [f"--config.{k}={v}" for k, v in TINY_BETRAYED.items()]
  return workdir, config, state.params, overrides


def test_block_features_are_the_betrayed_block_keys(video, betrayed_workdir, tmp_path, capsys):
  """`--features block --workdir`: labels for every frame with the first frame's ids; the features
  are Betrayed's `query_key` keys k (heads concatenated) of the frames in [0, 1], computed directly
  with the saved params, and the soft maps are their propagation."""
  from helpers.environment import REPO
  from vosjax.core import config as config_lib
  from vosjax.correspondence import propagation
  from vosjax.data import label_propagation as inputs
  from vosjax.methods import betrayed
  from vosjax.methods import dense_features

  folder, ids = video
  workdir, config, params, overrides = betrayed_workdir
  movi_e = f"{REPO}/configs/movi_e.py"
  argv = ["--features", "block", "--workdir", str(workdir), "--config", movi_e, *overrides]
  argv += ["--set", "short_side=96", "--set", "size_multiple=16"]
  argv += ["--frames", str(folder / "frames"), "--first_labels", str(folder / "first.png")]
  assert propagate.main(argv + ["--output", str(tmp_path)]) == 0
  assert "block keys of checkpoint step 0" in capsys.readouterr().out
  masks = np.stack([read_label_png(p) for p in sorted((tmp_path / "frames").glob("*.png"))])
  assert masks.shape == ids.shape
  assert set(np.unique(masks)) <= set(np.unique(ids[0])) and len(np.unique(masks[-1])) > 1
  np.testing.assert_array_equal(masks[0], ids[0])

  # The same loading path as the command, against query_key computed directly.
  module, restored = dense_features.load_trained_features(
    config_lib.read_config_file(movi_e, overrides), str(workdir)
  )
  paths = inputs.list_frames(folder / "frames")
  frames = inputs.read_dino_frames(paths, 96, 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
  assert frames.min() >= 0 and frames.max() <= 1
  ours = propagate.video_features(module, restored, frames, "block")
  direct = config.copy_and_resolve_references()
  direct.model.inference_resolution = frames.shape[1:3]  # no resize
  method_model = betrayed.make_model(direct)
  _, k, grid = betrayed.query_key(params, method_model, frames[None], direct)
  assert grid == (12, 20) and k.shape == (1, 6, 240, 4, 8)
  expected = np.asarray(k[0]).reshape(6, 12, 20, 32)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
  preset = settings.preset("dino")
  preset.short_side, preset.size_multiple = 96, 16
  first_ids = ids[0].astype(np.uint8)
  result = propagate.propagate_video(module, restored, preset, paths, first_ids)
  first = inputs.dino_first_labels(first_ids, 8, 96, 16)
  soft = propagation.propagate(
    propagation.l2_normalize(expected), first, settings.spec_from(preset)
  )
  np.testing.assert_allclose(result["soft"], np.asarray(soft), atol=1e-5)


def test_block_features_need_a_checkpoint_of_a_method_with_them(
  video, betrayed_workdir, tmp_path, capsys
):
  from helpers.environment import REPO

  folder, _ = video
  workdir, _, _, overrides = betrayed_workdir
  argv = ["--features", "block", "--frames", str(folder / "frames")]
  argv += ["--first_labels", str(folder / "first.png"), "--output", str(tmp_path / "out")]
  movi_e = ["--config", f"{REPO}/configs/movi_e.py", *overrides]
  cases = {
    "No checkpoint folder": ["--workdir", str(tmp_path), *movi_e],
    "config.method='motion_grouping' has no trained dense features": [
      "--workdir",
      str(workdir),
      "--config",
      f"{REPO}/configs/demo.py",
    ],
    "can be restored": [
      "--workdir",
      str(workdir),
      *movi_e,
      "--config.backbone.arch_overrides.embed_dim=64",
    ],
  }
  for message, extra in cases.items():
    assert propagate.main(argv + extra) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_block_features_of_the_authors_checkpoint(video, betrayed_workdir, tmp_path, capsys):
  """`--config.init.checkpoint=FILE` with a workdir without checkpoints: the block AND the backbone
  come from the official-layout file (`encoder.*`, `temporal_transformer.0.*`; here the tiny run's
  block and another random backbone, renamed; 8 heads as the official block), and the features are
  `query_key`'s keys with those."""
  import flax

  from helpers.environment import REPO
  from vosjax.core import config as config_lib
  from vosjax.data import label_propagation as inputs
  from vosjax.methods import betrayed
  from vosjax.methods import dense_features
  from vosjax.methods.betrayed import official_checkpoint
  from vosjax.models import pretrained
  from vosjax.models import state_dicts

  folder, ids = video
  _, config, params, overrides = betrayed_workdir
  config = config.copy_and_resolve_references()
  config.model.num_heads = official_checkpoint.OFFICIAL_NUM_HEADS
  model = betrayed.make_model(config)
  # Another backbone than config.backbone's (random_init seed 0): the file's must be the one used.
  model = model.replace(backbone_params=pretrained.random_params(model.backbone.arch, seed=1))
  backbone = flax.traverse_util.flatten_dict(model.backbone_params)
  state = {}
  for name, (path, _) in pretrained._expected_tensors(model.backbone.arch).items():
    value = np.asarray(backbone[path])
    value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
    state[official_checkpoint.BACKBONE_PREFIX + name] = value.T if value.ndim == 2 else value
  block = flax.traverse_util.flatten_dict(params)
  for name, (path, layout) in official_checkpoint.block_names().items():
    value = np.asarray(block[path])
    state[name] = value.T if layout == state_dicts.LINEAR else value
  checkpoint = state_dicts.write_state_dict(tmp_path / "official.npz", state)
  overrides = overrides + ["--config.model.num_heads=8", f"--config.init.checkpoint={checkpoint}"]
  movi_e = f"{REPO}/configs/movi_e.py"
  argv = ["--features", "block", "--workdir", str(tmp_path / "new"), "--config", movi_e]
  argv += [*overrides, "--set", "short_side=96", "--set", "size_multiple=16"]
  argv += ["--frames", str(folder / "frames"), "--first_labels", str(folder / "first.png")]
  assert propagate.main(argv + ["--output", str(tmp_path / "out")]) == 0
  assert f"block keys of imported {checkpoint}" in capsys.readouterr().out
  masks = np.stack([read_label_png(p) for p in sorted((tmp_path / "out" / "frames").glob("*.png"))])
  assert masks.shape == ids.shape

  module, restored = dense_features.load_trained_features(
    config_lib.read_config_file(movi_e, overrides), str(tmp_path / "new")
  )
  frames = inputs.read_dino_frames(
    inputs.list_frames(folder / "frames"), 96, 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
  )
  config.model.inference_resolution = frames.shape[1:3]
  _, k, _ = betrayed.query_key(params, model, frames[None], config)
  np.testing.assert_allclose(
    propagate.video_features(module, restored, frames, "block"),
    np.asarray(k[0]).reshape(6, 12, 20, 32),
    rtol=1e-5,
    atol=1e-5,
  )
