"""The synthetic MOVi-format dataset: renderer exactness and the TFDS builder."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from vosjax.data import optical_flow
from vosjax.data import synthetic
from vosjax.data import synthetic_render as sr

TINY = "32x32_f8_o3-5_n8-3_s7"  # 8 train videos: rendered by 2 threads


def dequantize_uint16(values: np.ndarray, value_range) -> np.ndarray:
  """Inverse of `synthetic_render.quantize_to_uint16`: v / 65535 * (max - min) + min (as the
  MOVi reader decodes)."""
  low, high = float(value_range[0]), float(value_range[1])
  return values.astype(np.float64) / 65535.0 * (high - low) + low


# MOVi-E's feature spec, written down from Kubric's TFDS definition
# (google-research/kubric, challenges/movi/movi_e.py, `MoviE._info` and
# `get_instance_features` / `get_camera_features` / `get_events_features`,
# and challenges/movi/README.md "Full format and shapes"). s = frames,
# h/w = resolution. Kinds: Video = per-frame PNG video, Seq[n] = Sequence of
# length n (None = ragged).
def movi_e_spec(s: int, h: int, w: int) -> dict:
  instance = "Seq[None]>"
  collision = "Seq[None]>"
  return {
    "metadata/video_name": ("Text", (), "string"),
    "metadata/width": ("Tensor", (), "int32"),
    "metadata/height": ("Tensor", (), "int32"),
    "metadata/num_frames": ("Tensor", (), "int32"),
    "metadata/num_instances": ("Tensor", (), "uint16"),
    "metadata/depth_range": ("Tensor", (2,), "float32"),
    "metadata/forward_flow_range": ("Tensor", (2,), "float32"),
    "metadata/backward_flow_range": ("Tensor", (2,), "float32"),
    "background": ("Text", (), "string"),
    "instances/mass": (instance + "Tensor", (), "float32"),
    "instances/friction": (instance + "Tensor", (), "float32"),
    "instances/restitution": (instance + "Tensor", (), "float32"),
    "instances/positions": (instance + "Tensor", (s, 3), "float32"),
    "instances/quaternions": (instance + "Tensor", (s, 4), "float32"),
    "instances/velocities": (instance + "Tensor", (s, 3), "float32"),
    "instances/angular_velocities": (instance + "Tensor", (s, 3), "float32"),
    "instances/bboxes_3d": (instance + "Tensor", (s, 8, 3), "float32"),
    "instances/image_positions": (instance + "Tensor", (s, 2), "float32"),
    "instances/bboxes": (instance + "Seq[None]>BBoxFeature", (4,), "float32"),
    "instances/bbox_frames": (instance + "Seq[None]>Tensor", (), "int32"),
    "instances/visibility": (instance + "Tensor", (s,), "uint16"),
    "instances/asset_id": (instance + "Text", (), "string"),
    "instances/category": (instance + "ClassLabel", (), "int64"),
    "instances/scale": (instance + "Tensor", (), "float32"),
    "instances/is_dynamic": (instance + "Tensor", (), "bool"),
    "camera/focal_length": ("Tensor", (), "float32"),
    "camera/sensor_width": ("Tensor", (), "float32"),
    "camera/field_of_view": ("Tensor", (), "float32"),
    "camera/positions": ("Tensor", (s, 3), "float32"),
    "camera/quaternions": ("Tensor", (s, 4), "float32"),
    "events/collisions/instances": (collision + "Tensor", (2,), "uint16"),
    "events/collisions/frame": (collision + "Tensor", (), "int32"),
    "events/collisions/force": (collision + "Tensor", (), "float32"),
    "events/collisions/position": (collision + "Tensor", (3,), "float32"),
    "events/collisions/image_position": (collision + "Tensor", (2,), "float32"),
    "events/collisions/contact_normal": (collision + "Tensor", (3,), "float32"),
    "video": ("Video", (s, h, w, 3), "uint8"),
    "segmentations": (f"Seq[{s}]>Image", (h, w, 1), "uint8"),
    "forward_flow": (f"Seq[{s}]>Tensor", (h, w, 2), "uint16"),
    "backward_flow": (f"Seq[{s}]>Tensor", (h, w, 2), "uint16"),
    "depth": (f"Seq[{s}]>Image", (h, w, 1), "uint16"),
    "normal": ("Video", (s, h, w, 3), "uint16"),
    "object_coordinates": ("Video", (s, h, w, 3), "uint16"),
  }


def describe(feature, prefix="", kind="") -> dict:
  """Flattens TFDS features into {path: (kind, shape, dtype name)}."""
  if isinstance(feature, tfds.features.FeaturesDict):
    out = {}
    for name, child in feature.items():
      out.update(describe(child, f"{prefix}{name}/", kind))
    return out
  if isinstance(feature, tfds.features.Video):
    return {prefix[:-1]: (kind + "Video", feature.shape, tf.as_dtype(feature.dtype).name)}
  if isinstance(feature, tfds.features.Sequence):
    return describe(feature.feature, prefix, f"{kind}Seq[{feature._length}]>")
  return {
    prefix[:-1]: (
      kind + type(feature).__name__,
      tuple(feature.shape),
      tf.as_dtype(feature.dtype).name,
    )
  }


@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
  builder = tfds.builder(f"vosjax_synthetic/{TINY}", data_dir=str(tmp_path_factory.mktemp("tfds")))
  builder.download_and_prepare()
  return builder


def pixel_centres(h, w):
  rows, cols = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
  return np.stack([rows, cols], -1).reshape(-1, 2)


# ------------------------------------------------------------------ renderer --
@pytest.mark.parametrize("index", [0, 1, 2])
def test_render_matches_pointwise_sampling_and_flow_is_exact(index):
  h, w = 40, 48
  scene = sr.sample_scene(sr.scene_rng(3, 0, index), 6, 4, 8)
  out = sr.render_scene(scene, h, w)
  points = pixel_centres(h, w)
  for t in range(scene.num_frames):
    rgb, layer = sr.sample_frame(scene, t, points, h, w)
    np.testing.assert_array_equal(layer, out["layer"][t].ravel())
    np.testing.assert_allclose(rgb, out["rgb"][t].reshape(-1, 3), atol=1e-12)
  for t in range(scene.num_frames - 1):
    # The surface point at pixel p of frame t is at p + forward_flow in frame
    # t+1 (and the point at q in t+1 at q + backward_flow in t): same layer
    # and same colour wherever it is visible in both frames.
    for source, target, flow in (
      (t, t + 1, out["forward_flow"][t]),
      (t + 1, t, out["backward_flow"][t + 1]),
    ):
      rgb, layer = sr.sample_frame(scene, target, points + flow.reshape(-1, 2), h, w)
      both = layer == out["layer"][source].ravel()
      assert both.mean() > 0.8  # occlusions only remove a few pixels
      np.testing.assert_allclose(rgb[both], out["rgb"][source].reshape(-1, 3)[both], atol=1e-9)
  assert not out["forward_flow"][-1].any() and not out["backward_flow"][0].any()
  # Pixels not on the background are not all moving the same way.
  assert np.ptp(out["forward_flow"][0].reshape(-1, 2), 0).max() > 0.1


def test_depth_is_distance_from_camera_centre():
  h = w = 32
  scene = sr.sample_scene(sr.scene_rng(0, 0, 5), 3, 2, 4)
  out = sr.render_scene(scene, h, w)
  focal = sr.focal_length_px(w)
  points = pixel_centres(h, w)
  for t in range(3):
    plane = out["plane_depth"][out["layer"][t].ravel(), t]
    ray = np.concatenate([(points[:, ::-1] - [w / 2, h / 2]) / focal, np.ones((h * w, 1))], -1)
    np.testing.assert_allclose(
      out["depth"][t].ravel(), plane * np.linalg.norm(ray, axis=-1), rtol=1e-12
    )


def _inside_polygon(points, vertices):
  """Even-odd ray casting, a straightforward point-in-polygon reference."""
  x, y = points[:, 0], points[:, 1]
  inside = np.zeros(len(points), bool)
  for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
    crosses = (y0 > y) != (y1 > y)
    x_cross = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1, y1 - y0)
    inside ^= crosses & (x < x_cross)
  return inside


@pytest.mark.parametrize(
  "shape,points",
  [("triangle", 3), ("pentagon", 5), ("hexagon", 6), ("star", 4), ("star", 5), ("star", 6)],
)
def test_shape_masks_match_polygon_reference(shape, points):
  obj = sr.SceneObject(
    shape=shape,
    num_points=points,
    aspect=1.0,
    texture=None,
    position=None,
    angle=None,
    scale=None,
    is_dynamic=False,
  )
  if shape == "star":
    angles = np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, sr._STAR_INNER_RADIUS)
  else:
    angles = np.arange(points) * 2 * np.pi / points
    radii = np.ones(points)
  vertices = np.stack([radii * np.cos(angles), radii * np.sin(angles)], -1)
  uv = np.random.default_rng(0).uniform(-1.1, 1.1, (20000, 2))
  np.testing.assert_array_equal(
    sr.shape_mask(obj, uv[:, 0], uv[:, 1]), _inside_polygon(uv, vertices)
  )


def test_scenes_are_deterministic_and_varied():
  first = synthetic.render_movi_arrays(sr.sample_scene(sr.scene_rng(1, 0, 4), 5, 2, 23), 24, 24)
  again = synthetic.render_movi_arrays(sr.sample_scene(sr.scene_rng(1, 0, 4), 5, 2, 23), 24, 24)
  other = synthetic.render_movi_arrays(sr.sample_scene(sr.scene_rng(1, 1, 4), 5, 2, 23), 24, 24)
  for key in ("video", "segmentations", "forward_flow", "depth"):
    np.testing.assert_array_equal(first[key], again[key])
  assert not np.array_equal(first["video"], other["video"])
  scenes = [sr.sample_scene(sr.scene_rng(0, 0, i), 4, 2, 23) for i in range(40)]
  assert len({len(s.objects) for s in scenes}) > 10
  assert {o.shape for s in scenes for o in s.objects} == set(sr.SHAPES)
  assert {o.texture.kind for s in scenes for o in s.objects} == set(sr.TEXTURES)
  assert all(any(o.is_dynamic for o in s.objects) for s in scenes)
  assert any(not o.is_dynamic for s in scenes for o in s.objects)


def test_quantization_round_trip():
  values = np.random.default_rng(0).normal(size=(4, 8, 8, 2)) * 7
  encoded, value_range = sr.quantize_to_uint16(values)
  step = (value_range[1] - value_range[0]) / 65535
  decoded = dequantize_uint16(encoded, value_range)
  assert np.abs(decoded - values).max() <= step / 2 + 1e-6
  assert encoded.min() == 0 and encoded.max() == 65535
  constant, constant_range = sr.quantize_to_uint16(np.full((3,), 2.5))
  np.testing.assert_array_equal(dequantize_uint16(constant, constant_range), 2.5)


# ------------------------------------------------------------------- builder --
def test_features_match_movi_e_spec():
  for name, size in (("64x64", 64), ("128x128", 128), (TINY, 32)):
    builder = tfds.builder(f"vosjax_synthetic/{name}", data_dir="/nonexistent")
    frames = builder.builder_config.num_frames
    assert describe(builder.info.features) == movi_e_spec(frames, size, size)
  assert list(builder.info.features["instances"]["category"].names) == list(
    synthetic.MOVI_E_CATEGORIES
  )


def test_config_names_encode_parameters():
  assert synthetic.VosjaxSyntheticConfig().name == "64x64"
  config = synthetic.VosjaxSyntheticConfig(
    height=32,
    width=48,
    num_frames=8,
    min_objects=3,
    max_objects=5,
    train_videos=8,
    validation_videos=3,
    seed=7,
  )
  assert config.name == "32x48_f8_o3-5_n8-3_s7"
  assert synthetic.VosjaxSyntheticConfig.from_name(config.name).seed == 7
  assert synthetic.VosjaxSyntheticConfig(seed=1).name == "64x64_s1"
  with pytest.raises(ValueError, match="does not match"):
    synthetic.VosjaxSyntheticConfig(name="64x64", seed=3)
  with pytest.raises(ValueError, match="not canonical"):
    synthetic.VosjaxSyntheticConfig.from_name("64x64_f24")
  with pytest.raises(ValueError, match="max_objects"):
    synthetic.VosjaxSyntheticConfig(max_objects=24)
  with pytest.raises(ValueError, match="config name"):
    tfds.builder("vosjax_synthetic/64by64", data_dir="/nonexistent")
  dis = synthetic.VosjaxSyntheticConfig.from_name("64x64_o1-1_dis")
  assert (dis.flow, dis.min_objects, dis.max_objects) == ("dis", 1, 1)
  assert synthetic.VosjaxSyntheticConfig(flow="dis").name == "64x64_dis"
  with pytest.raises(ValueError, match="flow must be"):
    synthetic.VosjaxSyntheticConfig(flow="raft")


def test_estimated_flow_is_dis_of_the_rendered_frames():
  """`flow="dis"`: the frames and masks are the exact set's; the flows are OpenCV DIS of the
  rendered uint8 frames (as users' videos get), close to but not equal to the exact motion."""
  scene = sr.sample_scene(sr.scene_rng(0, 0, 5), 8, 1, 1)
  exact = synthetic.render_movi_arrays(scene, 64, 64)
  estimated = synthetic.render_movi_arrays(scene, 64, 64, flow="dis")
  for key in ("video", "segmentations", "depth"):
    np.testing.assert_array_equal(estimated[key], exact[key])
  decode = lambda arrays, key: dequantize_uint16(arrays[key], arrays[f"{key}_range"])
  for key, gap in (("forward_flow", 1), ("backward_flow", -1)):
    dis = optical_flow.video_flow(exact["video"], gap)
    step = np.ptp(estimated[f"{key}_range"]) / 65535  # one quantization level
    np.testing.assert_allclose(decode(estimated, key), dis, atol=step)
    true = decode(exact, key)
    moving = slice(0, -1) if gap == 1 else slice(1, None)
    error = np.linalg.norm(dis[moving] - true[moving], axis=-1).mean()
    assert 0 < error < 1.0, error  # estimated: not exact, but within a pixel on average


def test_built_examples_are_the_rendered_scenes(tiny_builder):
  config = tiny_builder.builder_config
  examples = {
    split: list(tfds.as_numpy(tiny_builder.as_dataset(split))) for split in ("train", "validation")
  }
  for split, count in (("train", 8), ("validation", 3)):
    assert tiny_builder.info.splits[split].num_examples == count
    names = sorted(e["metadata"]["video_name"].decode() for e in examples[split])
    assert names == [synthetic.video_name(split, i) for i in range(count)]
  for example in examples["train"] + examples["validation"]:
    name = example["metadata"]["video_name"].decode()
    split, index = name.split("_")
    scene = sr.sample_scene(
      sr.scene_rng(config.seed, {"train": 0, "validation": 1}[split], int(index)),
      config.num_frames,
      config.min_objects,
      config.max_objects,
    )
    arrays = synthetic.render_movi_arrays(scene, 32, 32)
    for key in (
      "video",
      "segmentations",
      "forward_flow",
      "backward_flow",
      "depth",
      "object_coordinates",
    ):
      np.testing.assert_array_equal(example[key], arrays[key], err_msg=key)
    for key in ("forward_flow_range", "backward_flow_range", "depth_range"):
      np.testing.assert_array_equal(example["metadata"][key], arrays[key])
    k = len(scene.objects)
    assert example["metadata"]["num_instances"] == k
    assert config.min_objects <= k <= config.max_objects
    instances = example["instances"]
    segmentation = example["segmentations"][..., 0]
    visibility = instances["visibility"]
    assert visibility.shape == (k, config.num_frames)
    assert np.all(np.diff(visibility.sum(1).astype(int)) <= 0)  # sorted
    assert segmentation.max() <= k
    for i in range(k):
      np.testing.assert_array_equal(visibility[i], (segmentation == i + 1).sum((1, 2)))
      frames = np.flatnonzero(visibility[i])
      np.testing.assert_array_equal(instances["bbox_frames"][i], frames)
      for box, t in zip(instances["bboxes"][i], frames):
        rows, cols = np.where(segmentation[t] == i + 1)  # Kubric's compute_bboxes
        np.testing.assert_allclose(
          box,
          [rows.min() / 32, cols.min() / 32, (rows.max() + 1) / 32, (cols.max() + 1) / 32],
          atol=1e-6,
        )
    assert example["camera"]["field_of_view"] == pytest.approx(0.85755605)
