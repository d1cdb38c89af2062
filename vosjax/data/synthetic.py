"""`vosjax_synthetic`: a procedurally rendered dataset in Kubric MOVi-E's format.

Importing this module registers the TFDS builder, so that

  tfds.builder("vosjax_synthetic/64x64", data_dir=...).download_and_prepare()

builds it offline (no downloads). The features are MOVi-E's, with the same
names, shapes, dtypes and storage (PNG frames, uint16 tensors):

  video               uint8  [T, H, W, 3]  Video (PNG per frame)
  segmentations       uint8  [T, H, W, 1]  Sequence(Image): 0 background,
                                           id = instance index + 1
  forward_flow        uint16 [T, H, W, 2]  Sequence(Tensor): (delta_row,
  backward_flow                            delta_col), decode with
                                           v / 65535 * (max - min) + min and
                                           metadata/{forward,backward}_flow_range
  depth               uint16 [T, H, W, 1]  Sequence(Image), metadata/depth_range
  normal              uint16 [T, H, W, 3]  Video; constant stand-in (cards face
                                           the camera)
  object_coordinates  uint16 [T, H, W, 3]  Video; ((u + 1) / 2, (v + 1) / 2, 0.5)
                                           in the card's own frame, bg 0
  instances           Sequence of MOVi-E instance features (bboxes ragged
                      [k, None, 4] (ymin, xmin, ymax, xmax) normalized,
                      bbox_frames, visibility uint16 [k, T], positions, ...),
                      sorted by total visibility, descending
  camera, events, background, metadata (video_name, width, height,
                      num_frames, num_instances, *_range)

See `synthetic_render` for the scene model and the exactness of the ground
truth. Differences from real MOVi-E: 2-D textured cards instead of 3-D
scanned objects (shapes are in `asset_id`, `category` is always "None"),
no physics (`events.collisions` is empty), constant normals; the forward flow
of the last frame and the backward flow of the first frame are zero.

Configs: "64x64" and "128x128" (24 frames, 2..6 objects, 384 train and 48
validation videos, seed 0, exact flow) or any `VosjaxSyntheticConfig(...)`. A config's
name encodes every parameter that changes the data, e.g.
"32x32_f8_o2-4_n8-4_s1" (8 frames, 2..4 objects, 8 train / 4 validation
videos, seed 1; fields at their default are omitted; a "_dis" suffix: flow
estimated by OpenCV DIS from the rendered frames, as for real videos, instead
of the exact motion), and such names are
accepted by `tfds.builder("vosjax_synthetic/<name>")` too, so caches of
different data never collide.
"""

from __future__ import annotations

import collections
from concurrent import futures
import dataclasses
import math
import os
import re
from typing import Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds

from vosjax.core import images
from vosjax.data import optical_flow
from vosjax.data import synthetic_render

_SPLITS = {"train": 0, "validation": 1}
_NAME_PATTERN = re.compile(
  r"^(?P<height>\d+)x(?P<width>\d+)(?:_f(?P<num_frames>\d+))?"
  r"(?:_o(?P<min_objects>\d+)-(?P<max_objects>\d+))?"
  r"(?:_n(?P<train_videos>\d+)-(?P<validation_videos>\d+))?(?:_s(?P<seed>\d+))?"
  r"(?:_(?P<flow>dis))?$"
)
# Where the flow features come from: "exact" (the renderer's motion, exact by construction) or
# "dis" (OpenCV DIS estimated from the rendered frames, as `vosjax.segment` does for users' videos).
FLOW_SOURCES = ("exact", "dis")
# MOVi-E's instance categories (the synthetic set only uses "None").
MOVI_E_CATEGORIES = (
  "Action Figures",
  "Bag",
  "Board Games",
  "Bottles and Cans and Cups",
  "Camera",
  "Car Seat",
  "Consumer Goods",
  "Hat",
  "Headphones",
  "Keyboard",
  "Legos",
  "Media Cases",
  "Mouse",
  "None",
  "Shoe",
  "Stuffed Toys",
  "Toys",
)


@dataclasses.dataclass(eq=False)
class VosjaxSyntheticConfig(tfds.core.BuilderConfig):
  """Generation parameters. Leave `name` empty: it is derived from the fields."""

  name: str = ""
  height: int = 64
  width: int = 64
  num_frames: int = 24
  min_objects: int = 2
  max_objects: int = 6
  train_videos: int = 384
  validation_videos: int = 48
  seed: int = 0
  flow: str = "exact"

  def __post_init__(self):
    if self.height < 8 or self.width < 8:
      raise ValueError(f"height/width must be >= 8, got {self.height}x{self.width}")
    if self.num_frames < 2:
      raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
    if not 1 <= self.min_objects <= self.max_objects <= synthetic_render.MAX_OBJECTS:
      raise ValueError(
        f"need 1 <= min_objects ({self.min_objects}) <= max_objects "
        f"({self.max_objects}) <= {synthetic_render.MAX_OBJECTS}"
      )
    if self.flow not in FLOW_SOURCES:
      raise ValueError(f"flow must be one of {FLOW_SOURCES}, got {self.flow!r}")
    if self.train_videos < 1 or self.validation_videos < 1 or self.seed < 0:
      raise ValueError(f"train_videos and validation_videos must be >= 1 and seed >= 0, got {self}")
    canonical = self.canonical_name()
    if not self.name:
      self.name = canonical
    elif self.name != canonical:
      raise ValueError(
        f"config name {self.name!r} does not match its parameters "
        f"({canonical!r}); leave name empty to derive it"
      )
    if not self.description:
      self.description = (
        f"{self.height}x{self.width}, {self.num_frames} frames, "
        f"{self.min_objects}..{self.max_objects} objects, "
        f"{self.train_videos} train / {self.validation_videos} validation "
        f"videos, seed {self.seed}, {self.flow} flow"
      )

  def canonical_name(self) -> str:
    """`HxW` plus a tag for each field that differs from its default."""
    default = {f.name: f.default for f in dataclasses.fields(self)}
    differs = lambda *keys: any(getattr(self, k) != default[k] for k in keys)
    name = f"{self.height}x{self.width}"
    if differs("num_frames"):
      name += f"_f{self.num_frames}"
    if differs("min_objects", "max_objects"):
      name += f"_o{self.min_objects}-{self.max_objects}"
    if differs("train_videos", "validation_videos"):
      name += f"_n{self.train_videos}-{self.validation_videos}"
    if differs("seed"):
      name += f"_s{self.seed}"
    if differs("flow"):
      name += f"_{self.flow}"
    return name

  @classmethod
  def from_name(cls, name: str) -> "VosjaxSyntheticConfig":
    """Inverse of `canonical_name`; raises ValueError for other strings."""
    match = _NAME_PATTERN.match(name)
    if match is None:
      raise ValueError(
        f"{name!r} is not a vosjax_synthetic config name; expected "
        "'HxW[_fFRAMES][_oMIN-MAX][_nTRAIN-VALIDATION][_sSEED][_dis]', e.g. "
        "'64x64', '32x32_f8_o2-4_n8-4' or '64x64_o1-1_dis'"
      )
    fields = {
      k: v if k == "flow" else int(v) for k, v in match.groupdict().items() if v is not None
    }
    config = cls(**fields)
    if config.name != name:  # e.g. a default value spelled out explicitly
      raise ValueError(f"{name!r} is not canonical; use {config.name!r}")
    return config


def _bounding_boxes(segmentation: np.ndarray, instance_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Kubric's `compute_bboxes` for one id: boxes [n, 4] (ymin, xmin, ymax, xmax)
  normalized, with max + 1 pixel, and the n frames where the id is visible."""
  mask = segmentation == instance_id  # [T, H, W]
  rows, cols = mask.any(2), mask.any(1)  # [T, H], [T, W]
  frames = np.flatnonzero(rows.any(1))
  height, width = mask.shape[1:]
  rows, cols = rows[frames], cols[frames]
  ymin = rows.argmax(1)
  ymax = height - rows[:, ::-1].argmax(1)
  xmin = cols.argmax(1)
  xmax = width - cols[:, ::-1].argmax(1)
  boxes = np.stack([ymin / height, xmin / width, ymax / height, xmax / width], -1)
  return boxes.astype(np.float32), frames.astype(np.int32)


def _instance_features_of(
  obj: synthetic_render.SceneObject,
  boxes: np.ndarray,
  frames: np.ndarray,
  visibility: np.ndarray,
  image_position: np.ndarray,
) -> dict:
  """MOVi-E instance features of one card (stand-ins where 3-D is missing)."""
  fps = synthetic_render.FRAMES_PER_SECOND
  zeros = np.zeros_like(obj.angle)
  half = obj.angle / 2.0
  # The card's 3-D box has no thickness: its top and bottom corners coincide.
  corners = np.array(
    [(x, y * obj.aspect) for x in (-1, 1) for y in (-1, 1) for _ in (0, 1)]
  )  # [8, 2]
  cos, sin = np.cos(obj.angle)[:, None], np.sin(obj.angle)[:, None]
  rotated = np.stack(
    [
      cos * corners[:, 0] - sin * corners[:, 1],
      sin * corners[:, 0] + cos * corners[:, 1],
      np.zeros((len(cos), 8)),
    ],
    -1,
  )  # [T, 8, 3]
  return {
    "mass": np.float32(np.pi * obj.aspect * obj.scale[0] ** 2),
    "friction": np.float32(0.5),
    "restitution": np.float32(0.5),
    "positions": obj.position.astype(np.float32),
    "quaternions": np.stack([np.cos(half), zeros, zeros, np.sin(half)], -1).astype(np.float32),
    "velocities": (np.gradient(obj.position, axis=0) * fps).astype(np.float32),
    "angular_velocities": np.stack([zeros, zeros, np.gradient(obj.angle) * fps], -1).astype(
      np.float32
    ),
    "bboxes_3d": (obj.scale[:, None, None] * rotated + obj.position[:, None, :]).astype(np.float32),
    "image_positions": image_position.astype(np.float32),
    "bboxes": boxes,
    "bbox_frames": frames,
    "visibility": visibility.astype(np.uint16),
    "asset_id": obj.asset_id,
    "category": "None",
    "scale": np.float32(obj.scale[0]),
    "is_dynamic": obj.is_dynamic,
  }


def _camera_features_of(scene: synthetic_render.Scene) -> dict:
  """MOVi camera features: MOVi's lens, looking along +z without rotation."""
  focal, sensor = synthetic_render.FOCAL_LENGTH_MM, synthetic_render.SENSOR_WIDTH_MM
  return {
    "focal_length": np.float32(focal),
    "sensor_width": np.float32(sensor),
    "field_of_view": np.float32(2 * math.atan(sensor / (2 * focal))),
    "positions": scene.camera_position.astype(np.float32),
    "quaternions": np.tile(np.array([1, 0, 0, 0], np.float32), (scene.num_frames, 1)),
  }


def render_movi_arrays(
  scene: synthetic_render.Scene, height: int, width: int, flow: str = "exact"
) -> dict:
  """Renders a scene into MOVi-E's layout (numpy; no image encoding).

  Instances are sorted by total visibility, descending, and segmentation ids
  are index + 1 in that order (background 0), as in MOVi.

  Returns:
    dict with video uint8 [T, H, W, 3], segmentations uint8 [T, H, W, 1],
    forward_flow / backward_flow uint16 [T, H, W, 2] (delta_row, delta_col),
    depth uint16 [T, H, W, 1], object_coordinates uint16 [T, H, W, 3], the
    float32 [2] ranges forward_flow_range / backward_flow_range / depth_range,
    `instances` (list of per-instance dicts of MOVi-E instance features,
    sorted), `camera` (MOVi camera features), `order` (scene object index of
    each sorted instance) and `render` (the `render_scene` output).
    With `flow="dis"` the flows are OpenCV DIS (preset "medium") of the
    rendered uint8 frames instead of the exact motion (zero where t +/- 1 is
    outside the video, as the exact flow).
  """
  render = synthetic_render.render_scene(scene, height, width)
  layer = render["layer"]
  num_frames, num_objects = scene.num_frames, len(scene.objects)
  counts = np.stack(
    [np.bincount(layer[t].ravel(), minlength=num_objects + 1) for t in range(num_frames)], 1
  )[:num_objects]  # [K, T]
  order = np.argsort(-counts.sum(1), kind="stable")
  new_id = np.zeros(num_objects + 1, np.uint8)  # background -> 0
  new_id[order] = np.arange(1, num_objects + 1)
  segmentation = new_id[layer]

  quantize = synthetic_render.quantize_to_uint16
  if flow == "dis":
    video = images.to_uint8(render["rgb"])
    forward_flow = optical_flow.video_flow(video, 1)
    backward_flow = optical_flow.video_flow(video, -1)
  else:
    forward_flow, backward_flow = render["forward_flow"], render["backward_flow"]
  forward, forward_range = quantize(forward_flow)
  backward, backward_range = quantize(backward_flow)
  depth, depth_range = quantize(render["depth"])
  is_object = (layer < num_objects)[..., None]
  coords = np.concatenate([(render["object_uv"] + 1.0) / 2.0, np.full(layer.shape + (1,), 0.5)], -1)
  coords = np.where(is_object, np.clip(coords, 0.0, 1.0), 0.0)
  object_coordinates = np.round(coords * 65535.0).astype(np.uint16)

  instances = []
  for rank, k in enumerate(order):
    boxes, frames = _bounding_boxes(segmentation, rank + 1)
    instances.append(
      _instance_features_of(
        scene.objects[k], boxes, frames, counts[k], render["offset"][k] / [width, height]
      )
    )
  return {
    "video": images.to_uint8(render["rgb"]),
    "segmentations": segmentation[..., None],
    "forward_flow": forward,
    "forward_flow_range": forward_range,
    "backward_flow": backward,
    "backward_flow_range": backward_range,
    "depth": depth,
    "depth_range": depth_range,
    "object_coordinates": object_coordinates,
    "instances": instances,
    "camera": _camera_features_of(scene),
    "order": order,
    "render": render,
  }


def _png(frame: np.ndarray) -> bytes:
  """Lossless PNG bytes of one frame [H, W, C] (uint8 or uint16, RGB order)."""
  if frame.shape[-1] == 3:
    frame = frame[..., ::-1]  # OpenCV writes BGR
  ok, data = cv2.imencode(".png", np.ascontiguousarray(frame), [cv2.IMWRITE_PNG_COMPRESSION, 1])
  if not ok:
    raise RuntimeError(f"PNG encoding failed for a frame of shape {frame.shape}")
  return data.tobytes()


def video_name(split: str, index: int) -> str:
  """Example key and `metadata/video_name` of video `index` of `split`."""
  return f"{split}_{index:06d}"


def render_example(config: VosjaxSyntheticConfig, split: str, index: int) -> dict:
  """The TFDS example (features of `VosjaxSynthetic.info`) of one video."""
  rng = synthetic_render.scene_rng(config.seed, _SPLITS[split], index)
  scene = synthetic_render.sample_scene(
    rng, config.num_frames, config.min_objects, config.max_objects
  )
  arrays = render_movi_arrays(scene, config.height, config.width, config.flow)
  normal = np.zeros((config.height, config.width, 3), np.uint16)
  normal[..., :2] = 32768  # (0, 0, -1) encoded as (n + 1) / 2 * 65535
  normal_png = _png(normal)
  return {
    "metadata": {
      "video_name": video_name(split, index),
      "width": config.width,
      "height": config.height,
      "num_frames": config.num_frames,
      "num_instances": len(scene.objects),
      "depth_range": arrays["depth_range"],
      "forward_flow_range": arrays["forward_flow_range"],
      "backward_flow_range": arrays["backward_flow_range"],
    },
    "background": scene.background.kind,
    "instances": arrays["instances"],
    "camera": arrays["camera"],
    "events": {"collisions": []},
    "video": [_png(f) for f in arrays["video"]],
    "segmentations": [_png(f) for f in arrays["segmentations"]],
    "forward_flow": list(arrays["forward_flow"]),
    "backward_flow": list(arrays["backward_flow"]),
    "depth": [_png(f) for f in arrays["depth"]],
    "normal": [normal_png] * config.num_frames,
    "object_coordinates": [_png(f) for f in arrays["object_coordinates"]],
  }


def _instance_features(num_frames: int) -> dict:
  """MOVi-E's `instances` features (kubric challenges/movi/movi_e.py)."""
  return {
    "mass": np.float32,
    "friction": np.float32,
    "restitution": np.float32,
    "positions": tfds.features.Tensor(shape=(num_frames, 3), dtype=np.float32),
    "quaternions": tfds.features.Tensor(shape=(num_frames, 4), dtype=np.float32),
    "velocities": tfds.features.Tensor(shape=(num_frames, 3), dtype=np.float32),
    "angular_velocities": tfds.features.Tensor(shape=(num_frames, 3), dtype=np.float32),
    "bboxes_3d": tfds.features.Tensor(shape=(num_frames, 8, 3), dtype=np.float32),
    "image_positions": tfds.features.Tensor(shape=(num_frames, 2), dtype=np.float32),
    "bboxes": tfds.features.Sequence(tfds.features.BBoxFeature()),
    "bbox_frames": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.int32)),
    "visibility": tfds.features.Tensor(shape=(num_frames,), dtype=np.uint16),
    "asset_id": tfds.features.Text(),
    "category": tfds.features.ClassLabel(names=list(MOVI_E_CATEGORIES)),
    "scale": np.float32,
    "is_dynamic": np.bool_,
  }


class VosjaxSynthetic(tfds.core.GeneratorBasedBuilder):
  """Procedural MOVi-E-format videos with exact flow, depth and masks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    VosjaxSyntheticConfig(height=64, width=64),
    VosjaxSyntheticConfig(height=128, width=128),
  ]

  def _create_builder_config(self, builder_config, version):
    # Accept any canonical config name, not only the predefined ones.
    if isinstance(builder_config, str):
      name = builder_config.split(":")[0]
      if name not in {c.name for c in self.BUILDER_CONFIGS}:
        builder_config = VosjaxSyntheticConfig.from_name(name)
    return super()._create_builder_config(builder_config, version)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    s, h, w = config.num_frames, config.height, config.width
    frames = lambda feature: tfds.features.Sequence(feature, length=s)
    return self.dataset_info_from_configs(
      description=__doc__.split("\n\n")[0],
      features=tfds.features.FeaturesDict(
        {
          "metadata": {
            "video_name": tfds.features.Text(),
            "width": np.int32,
            "height": np.int32,
            "num_frames": np.int32,
            "num_instances": np.uint16,
            "depth_range": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "forward_flow_range": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "backward_flow_range": tfds.features.Tensor(shape=(2,), dtype=np.float32),
          },
          "background": tfds.features.Text(),
          "instances": tfds.features.Sequence(_instance_features(s)),
          "camera": {
            "focal_length": np.float32,
            "sensor_width": np.float32,
            "field_of_view": np.float32,
            "positions": tfds.features.Tensor(shape=(s, 3), dtype=np.float32),
            "quaternions": tfds.features.Tensor(shape=(s, 4), dtype=np.float32),
          },
          "events": {
            "collisions": tfds.features.Sequence(
              {
                "instances": tfds.features.Tensor(shape=(2,), dtype=np.uint16),
                "frame": np.int32,
                "force": np.float32,
                "position": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                "image_position": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                "contact_normal": tfds.features.Tensor(shape=(3,), dtype=np.float32),
              }
            ),
          },
          "video": tfds.features.Video(shape=(s, h, w, 3)),
          "segmentations": frames(tfds.features.Image(shape=(h, w, 1), dtype=np.uint8)),
          "forward_flow": frames(tfds.features.Tensor(shape=(h, w, 2), dtype=np.uint16)),
          "backward_flow": frames(tfds.features.Tensor(shape=(h, w, 2), dtype=np.uint16)),
          "depth": frames(tfds.features.Image(shape=(h, w, 1), dtype=np.uint16)),
          "normal": tfds.features.Video(shape=(s, h, w, 3), dtype=np.uint16),
          "object_coordinates": tfds.features.Video(shape=(s, h, w, 3), dtype=np.uint16),
        }
      ),
      homepage="https://github.com/google-research/kubric (format)",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    config = self.builder_config
    return {
      "train": self._generate_examples("train", config.train_videos),
      "validation": self._generate_examples("validation", config.validation_videos),
    }

  def _generate_examples(self, split: str, num_videos: int) -> Iterator[tuple[str, dict]]:
    # Each video depends only on (seed, split, index), so rendering in threads
    # (numpy and OpenCV release the GIL) cannot change the data.
    config = self.builder_config
    workers = max(1, min(os.cpu_count() or 1, num_videos // 4))
    with futures.ThreadPoolExecutor(workers) as pool:
      pending = collections.deque()  # in order, at most 2 per worker ahead
      for index in range(num_videos):
        pending.append((index, pool.submit(render_example, config, split, index)))
        while pending and (len(pending) > 2 * workers or index == num_videos - 1):
          done, future = pending.popleft()
          yield video_name(split, done), future.result()
