"""Procedural MOVi-style videos with exact ground truth (pure numpy).

A scene is a camera looking down the world +z axis at fronto-parallel textured
cards ("layers"): 2..23 objects of varied shapes in front of an infinite
background plane. Every layer maps its own 2-D coordinates `u` to image
pixels by an affine map per frame (perspective of a plane parallel to the
image plane is affine), so a pixel's visible layer, object coordinates, depth
and its position in any other frame are computed exactly by inverse mapping:

  image (x=col, y=row) = g_t * (world_xy - camera_xy_t) + image_centre,
  g_t = focal_px / (layer_z_t - camera_z_t),
  object world_xy = position_t + scale_t * R(angle_t) @ diag(1, aspect) @ u.

Frames are point samples of analytic textures at pixel centres
(x, y) = (col + 0.5, row + 0.5): no anti-aliasing, so the colour of a pixel is
texture(u) and `sample_frame` can evaluate the same scene at arbitrary
sub-pixel positions. Forward flow of frame t at pixel p is
A_{t+1} u + b_{t+1} - p for the layer visible at p (background included, it
moves with the camera); backward flow uses t-1. Flow of the last frame
(forward) and first frame (backward) is zero. Flow channels follow MOVi:
(delta_row, delta_col). Depth follows MOVi: Euclidean distance from the camera
centre. Scenes are defined in world units, so the same scene renders at any
resolution; the camera intrinsics are MOVi's (focal length 35 mm, sensor
width 32 mm).

The TFDS builder (`synthetic.py`) uses `sample_scene`, `render_scene` and
`quantize_to_uint16`; everything is deterministic given the numpy Generator
passed to `sample_scene` (`scene_rng`).
"""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np

FOCAL_LENGTH_MM = 35.0
SENSOR_WIDTH_MM = 32.0
FRAMES_PER_SECOND = 12
MAX_OBJECTS = 23

SHAPES = ("ellipse", "rectangle", "triangle", "pentagon", "hexagon", "star", "ring", "cross")
TEXTURES = ("solid", "stripes", "rings", "checker", "gradient")

_STAR_INNER_RADIUS = 0.45
_RING_INNER_RADIUS = 0.55
_CROSS_HALF_WIDTH = 0.33


@dataclasses.dataclass(frozen=True)
class Texture:
  """Analytic texture: colour = colors[0] + v(u) * (colors[1] - colors[0]).

  `frequency` is in radians per layer unit, `direction` the grating angle.
  Background textures add a second grating (`frequency2`, `direction2`).
  """

  kind: str
  colors: np.ndarray  # [2, 3] float in [0, 1]
  frequency: float
  direction: float
  phase: float
  frequency2: float = 0.0
  direction2: float = 0.0
  phase2: float = 0.0


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """A textured card; per-frame arrays have leading dimension T."""

  shape: str
  num_points: int  # polygon sides / star points (0 for other shapes)
  aspect: float  # layer y half-extent / x half-extent
  texture: Texture
  position: np.ndarray  # [T, 3] world (x, y, z) of the card centre
  angle: np.ndarray  # [T] rotation about the viewing axis (radians)
  scale: np.ndarray  # [T] half-extent along the layer x axis (world units)
  is_dynamic: bool

  @property
  def asset_id(self) -> str:
    return f"{self.shape}{self.num_points}" if self.num_points else self.shape


@dataclasses.dataclass(frozen=True)
class Scene:
  """Objects in front of a background plane seen by a moving camera."""

  camera_position: np.ndarray  # [T, 3] world (x, y, z); looks along +z
  background: Texture  # evaluated in world (x, y) on the plane
  background_depth: float  # world z of the background plane
  objects: tuple[SceneObject, ...]

  @property
  def num_frames(self) -> int:
    return self.camera_position.shape[0]


def focal_length_px(width: int) -> float:
  """Focal length in pixels for MOVi's 35 mm lens on a 32 mm sensor."""
  return FOCAL_LENGTH_MM / SENSOR_WIDTH_MM * width


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
  return np.array(colorsys.hsv_to_rgb(h, s, v), np.float64)


def _sample_object_texture(rng: np.random.Generator) -> Texture:
  hue = rng.uniform()
  sat, val = rng.uniform(0.5, 1.0), rng.uniform(0.55, 1.0)
  first = _hsv_to_rgb(hue, sat, val)
  second = _hsv_to_rgb(
    (hue + rng.uniform(-0.2, 0.2)) % 1.0, rng.uniform(0.3, 1.0), val * rng.uniform(0.35, 0.75)
  )
  return Texture(
    kind=str(rng.choice(TEXTURES)),
    colors=np.stack([first, second]),
    frequency=rng.uniform(2.0, 5.0),
    direction=rng.uniform(0, 2 * np.pi),
    phase=rng.uniform(0, 2 * np.pi),
  )


def _sample_background_texture(rng: np.random.Generator) -> Texture:
  hue = rng.uniform()
  first = _hsv_to_rgb(hue, rng.uniform(0.05, 0.5), rng.uniform(0.25, 0.75))
  second = _hsv_to_rgb(
    (hue + rng.uniform(-0.3, 0.3)) % 1.0, rng.uniform(0.05, 0.5), rng.uniform(0.25, 0.75)
  )
  return Texture(
    kind="gratings",
    colors=np.stack([first, second]),
    frequency=rng.uniform(0.6, 1.6),
    direction=rng.uniform(0, 2 * np.pi),
    phase=rng.uniform(0, 2 * np.pi),
    frequency2=rng.uniform(0.6, 1.6),
    direction2=rng.uniform(0, 2 * np.pi),
    phase2=rng.uniform(0, 2 * np.pi),
  )


def sample_scene(
  rng: np.random.Generator, num_frames: int, min_objects: int, max_objects: int
) -> Scene:
  """Samples a MOVi-E-like scene: static and dynamic objects, moving camera.

  Args:
    rng: source of all randomness (seed it per video for determinism).
    num_frames: T.
    min_objects, max_objects: inclusive range of the object count K
      (1 <= min_objects <= max_objects <= 23).

  Returns:
    The scene; render it with `render_scene`.
  """
  if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
    raise ValueError(
      f"need 1 <= min_objects ({min_objects}) <= max_objects ({max_objects}) <= {MAX_OBJECTS}"
    )
  if num_frames < 2:
    raise ValueError(f"num_frames must be >= 2, got {num_frames}")
  frames = np.arange(num_frames, dtype=np.float64)
  rel = (frames - (num_frames - 1) / 2.0)[:, None]  # time from mid-video
  # Camera: linear motion (MOVi-E), pan plus a dolly along the viewing axis.
  pan_dir = rng.uniform(0, 2 * np.pi)
  pan_speed = rng.uniform(0.0, 0.06)
  camera_velocity = np.array(
    [pan_speed * np.cos(pan_dir), pan_speed * np.sin(pan_dir), rng.uniform(-0.04, 0.04)]
  )
  camera_position = rel * camera_velocity
  background_depth = rng.uniform(20.0, 30.0)
  # Half-width of the view in world units per unit depth (square images).
  view = (SENSOR_WIDTH_MM / 2) / FOCAL_LENGTH_MM

  num_objects = int(rng.integers(min_objects, max_objects + 1))
  num_dynamic = int(rng.integers(1, max(1, num_objects // 2) + 1))
  dynamic = np.zeros(num_objects, bool)
  dynamic[rng.choice(num_objects, num_dynamic, replace=False)] = True
  camera_z = camera_position[:, 2]
  objects = []
  for k in range(num_objects):
    shape = str(rng.choice(SHAPES))
    star_points = int(rng.integers(4, 7))  # drawn for every shape, used by stars
    num_points = {"triangle": 3, "pentagon": 5, "hexagon": 6, "star": star_points}.get(shape, 0)
    depth = rng.uniform(6.0, 14.0)
    size = rng.uniform(0.7, 1.8)
    centre = rng.uniform(-0.85, 0.85, size=2) * view * depth
    angle0 = rng.uniform(0, 2 * np.pi)
    if dynamic[k]:
      direction = rng.uniform(0, 2 * np.pi)
      speed = rng.uniform(0.05, 0.25)
      velocity = np.array(
        [speed * np.cos(direction), speed * np.sin(direction), rng.uniform(-0.1, 0.1)]
      )
      depth_t = depth + rel[:, 0] * velocity[2]
      # Keep the card in front of the camera and of the background.
      if np.min(depth_t - camera_z) < 3.0 or np.max(depth_t) > background_depth - 3.0:
        velocity[2] = 0.0
      spin = rng.uniform(-0.12, 0.12)
      growth = rng.uniform(-0.015, 0.015) if rng.uniform() < 0.5 else 0.0
    else:
      velocity, spin, growth = np.zeros(3), 0.0, 0.0
    position = np.array([centre[0], centre[1], depth]) + rel * velocity
    objects.append(
      SceneObject(
        shape=shape,
        num_points=num_points,
        aspect=float(rng.uniform(0.6, 1.0)),
        texture=_sample_object_texture(rng),
        position=position,
        angle=angle0 + spin * rel[:, 0],
        scale=size * np.exp(growth * rel[:, 0]),
        is_dynamic=bool(dynamic[k]),
      )
    )
  return Scene(
    camera_position=camera_position,
    background=_sample_background_texture(rng),
    background_depth=float(background_depth),
    objects=tuple(objects),
  )


def layer_affines(
  scene: Scene, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-frame affine maps from layer coordinates to image (x=col, y=row).

  Layers are the K objects followed by the background (index K), whose layer
  coordinates are world (x, y) on its plane.

  Returns:
    matrix: [K+1, T, 2, 2], offset: [K+1, T, 2] with image = matrix @ u + offset,
    plane_depth: [K+1, T] distance of each layer's plane from the camera plane.
  """
  focal = focal_length_px(width)
  centre = np.array([width / 2.0, height / 2.0])
  camera = scene.camera_position
  matrices, offsets, depths = [], [], []
  for obj in scene.objects:
    depth = obj.position[:, 2] - camera[:, 2]
    gain = focal / depth
    cos, sin = np.cos(obj.angle), np.sin(obj.angle)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    stretch = np.diag([1.0, obj.aspect])
    matrices.append((gain * obj.scale)[:, None, None] * (rotation @ stretch))
    offsets.append(gain[:, None] * (obj.position[:, :2] - camera[:, :2]) + centre)
    depths.append(depth)
  depth = scene.background_depth - camera[:, 2]
  gain = focal / depth
  matrices.append(gain[:, None, None] * np.eye(2))
  offsets.append(-gain[:, None] * camera[:, :2] + centre)
  depths.append(depth)
  return np.stack(matrices), np.stack(offsets), np.stack(depths)


def shape_mask(obj: SceneObject, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Inside test at layer coordinates (a, b) (any equal shapes) -> bool."""
  if obj.shape == "ellipse":
    return a * a + b * b <= 1.0
  if obj.shape == "rectangle":
    return (np.abs(a) <= 1.0) & (np.abs(b) <= 1.0)
  if obj.shape == "ring":
    r2 = a * a + b * b
    return (r2 <= 1.0) & (r2 >= _RING_INNER_RADIUS**2)
  if obj.shape == "cross":
    aa, bb, w = np.abs(a), np.abs(b), _CROSS_HALF_WIDTH
    return ((aa <= w) & (bb <= 1.0)) | ((aa <= 1.0) & (bb <= w))
  n = obj.num_points
  sector = 2 * np.pi / n
  radius = np.hypot(a, b)
  theta = np.mod(np.arctan2(b, a), sector)
  if obj.shape in ("triangle", "pentagon", "hexagon"):
    # Regular n-gon with circumradius 1 and a vertex on the +x axis.
    return radius * np.cos(theta - sector / 2) <= np.cos(np.pi / n)
  # Star: fold the angle into [0, pi/n] (tip at 0, valley at pi/n) and test
  # against the straight edge from the tip (1, 0) to the valley vertex.
  folded = np.minimum(theta, sector - theta)
  px, py = radius * np.cos(folded), radius * np.sin(folded)
  vx = _STAR_INNER_RADIUS * np.cos(np.pi / n)
  vy = _STAR_INNER_RADIUS * np.sin(np.pi / n)
  return (vx - 1.0) * py - vy * (px - 1.0) >= 0.0


def texture_colour(texture: Texture, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Analytic texture at layer coordinates a, b: [N] -> rgb [N, 3] in [0, 1]."""
  along = a * np.cos(texture.direction) + b * np.sin(texture.direction)
  if texture.kind == "solid":
    value = np.zeros_like(a)
  elif texture.kind == "stripes":
    value = 0.5 + 0.5 * np.sin(texture.frequency * along + texture.phase)
  elif texture.kind == "rings":
    value = 0.5 + 0.5 * np.sin(texture.frequency * np.hypot(a, b) + texture.phase)
  elif texture.kind == "checker":
    value = 0.5 + 0.5 * (
      np.sin(texture.frequency * a + texture.phase)
      * np.sin(texture.frequency * b + texture.direction)
    )
  elif texture.kind == "gradient":
    value = np.clip(0.5 + 0.5 * along, 0.0, 1.0)
  elif texture.kind == "gratings":
    across = a * np.cos(texture.direction2) + b * np.sin(texture.direction2)
    value = (
      0.5
      + 0.25 * np.sin(texture.frequency * along + texture.phase)
      + 0.25 * np.sin(texture.frequency2 * across + texture.phase2)
    )
  else:
    raise ValueError(f"unknown texture kind {texture.kind!r}")
  first, second = texture.colors
  return first + value[:, None] * (second - first)


def _trace(
  scene: Scene, matrix: np.ndarray, offset: np.ndarray, plane_depth: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Visible layer and its layer coordinates at image points.

  Args:
    matrix, offset, plane_depth: `layer_affines` restricted to the frames of
      `points` ([K+1, T', ...]).
    points: [T', N, 2] or [1, N, 2] image positions (x=col, y=row).

  Returns:
    layer: int [T', N] (K = background), u: float [T', N, 2].
  """
  num_layers, num_frames = plane_depth.shape
  background = num_layers - 1
  shape = (num_frames, points.shape[1])
  nearest = np.full(shape, np.inf)
  layer = np.full(shape, background, np.int64)
  inverse = np.linalg.inv(matrix)  # [L, T', 2, 2]
  u = (points - offset[background][:, None]) @ np.swapaxes(inverse[background], -1, -2)
  for k, obj in enumerate(scene.objects):
    u_k = (points - offset[k][:, None]) @ np.swapaxes(inverse[k], -1, -2)
    closer = shape_mask(obj, u_k[..., 0], u_k[..., 1]) & (plane_depth[k][:, None] < nearest)
    nearest = np.where(closer, plane_depth[k][:, None], nearest)
    layer[closer] = k
    u[closer] = u_k[closer]
  return layer, u


def _shade(scene: Scene, layer: np.ndarray, u: np.ndarray) -> np.ndarray:
  """Colours of traced points. layer [...], u [..., 2] -> rgb [..., 3]."""
  rgb = np.empty(layer.shape + (3,))
  textures = [obj.texture for obj in scene.objects] + [scene.background]
  for k, texture in enumerate(textures):
    mask = layer == k
    if mask.any():
      rgb[mask] = texture_colour(texture, u[mask][:, 0], u[mask][:, 1])
  return rgb


def sample_frame(
  scene: Scene, frame: int, points: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
  """Evaluates frame `frame` at arbitrary image points.

  Args:
    points: [N, 2] positions (row, col) in pixel units, pixel centres at
      integer + 0.5 (pixel (i, j) is at (i + 0.5, j + 0.5)).

  Returns:
    rgb: [N, 3] float in [0, 1] (before uint8 quantization), layer: int [N]
    (object index in `scene.objects`, K for the background).
  """
  matrix, offset, plane_depth = layer_affines(scene, height, width)
  sl = slice(frame, frame + 1)
  xy = np.asarray(points, np.float64)[None, :, ::-1]
  layer, u = _trace(scene, matrix[:, sl], offset[:, sl], plane_depth[:, sl], xy)
  return _shade(scene, layer, u)[0], layer[0]


def _window(
  matrix: np.ndarray, offset: np.ndarray, height: int, width: int
) -> tuple[slice, slice] | None:
  """Pixel rows/cols that a layer's unit square [-1, 1]^2 covers in any frame."""
  reach = np.abs(matrix).sum(-1)  # [T, 2] half-extent along x, y
  low = np.floor(np.min(offset - reach, 0) - 0.5).astype(int)
  high = np.ceil(np.max(offset + reach, 0) + 0.5).astype(int)
  low, high = np.maximum(low, 0), np.minimum(high, [width, height])
  if np.any(high <= low):
    return None
  return slice(low[1], high[1]), slice(low[0], high[0])


def _apply_affine(
  matrix: np.ndarray, offset: np.ndarray, px: np.ndarray, py: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Per-frame affine maps matrix [T, 2, 2], offset [T, 2] applied to pixel
  positions px [1, 1, w], py [1, h, 1] -> (x, y), each [T, h, w]."""
  m = matrix[:, :, :, None, None]
  o = offset[:, :, None, None]
  return (m[:, 0, 0] * px + m[:, 0, 1] * py + o[:, 0], m[:, 1, 0] * px + m[:, 1, 1] * py + o[:, 1])


def render_scene(scene: Scene, height: int, width: int) -> dict[str, np.ndarray]:
  """Renders all frames with exact ground truth.

  Returns a dict of numpy arrays (T frames, K objects, in scene order; the TFDS
  builder re-orders instances by visibility):
    rgb: float64 [T, H, W, 3] in [0, 1] (unquantized colours),
    layer: int64 [T, H, W] visible layer (0..K-1 objects, K background),
    object_uv: float64 [T, H, W, 2] layer coordinates of the visible layer,
    forward_flow, backward_flow: float64 [T, H, W, 2] (delta_row, delta_col),
    depth: float64 [T, H, W, 1] distance from the camera centre,
    matrix, offset, plane_depth: `layer_affines`.
  """
  matrix, offset, plane_depth = layer_affines(scene, height, width)
  num_frames, num_objects = scene.num_frames, len(scene.objects)
  # Image -> layer coordinates: u = inverse @ p + inverse_offset.
  inverse = np.linalg.inv(matrix)
  inverse_offset = -np.einsum("ltij,ltj->lti", inverse, offset)
  # Image at t -> image at t+1 (forward) and t-1 (backward) of the same point.
  forward_matrix = matrix[:, 1:] @ inverse[:, :-1]
  forward_offset = matrix[:, 1:] @ inverse_offset[:, :-1, :, None]
  forward_offset = forward_offset[..., 0] + offset[:, 1:]
  backward_matrix = matrix[:, :-1] @ inverse[:, 1:]
  backward_offset = matrix[:, :-1] @ inverse_offset[:, 1:, :, None]
  backward_offset = backward_offset[..., 0] + offset[:, :-1]

  px = (np.arange(width) + 0.5)[None, None, :]
  py = (np.arange(height) + 0.5)[None, :, None]
  full = (slice(None), slice(None))
  windows = [_window(matrix[k], offset[k], height, width) for k in range(num_objects)] + [full]

  # Visibility by z-buffer over each object's pixel window.
  layer = np.full((num_frames, height, width), num_objects, np.int64)
  nearest = np.full((num_frames, height, width), np.inf)
  local = {}
  for k, obj in enumerate(scene.objects):
    if windows[k] is None:
      continue
    rows, cols = windows[k]
    local[k] = _apply_affine(inverse[k], inverse_offset[k], px[..., cols], py[:, rows])
    closer = shape_mask(obj, *local[k]) & (plane_depth[k][:, None, None] < nearest[:, rows, cols])
    nearest[:, rows, cols][closer] = np.broadcast_to(plane_depth[k][:, None, None], closer.shape)[
      closer
    ]
    layer[:, rows, cols][closer] = k

  # Per-pixel quantities of the visible layer: the background on all pixels
  # first, then each object overwrites its visible pixels.
  shape = (num_frames, height, width)
  background = num_objects
  ua, ub = _apply_affine(inverse[background], inverse_offset[background], px, py)
  u = np.stack([ua, ub], -1)
  rgb = texture_colour(scene.background, ua.ravel(), ub.ravel()).reshape(shape + (3,))
  depth = np.broadcast_to(plane_depth[background][:, None, None], shape).copy()
  forward = np.zeros(shape + (2,))
  backward = np.zeros(shape + (2,))
  flows = (
    (forward, slice(0, -1), forward_matrix, forward_offset),
    (backward, slice(1, None), backward_matrix, backward_offset),
  )
  for flow, frames, to_matrix, to_offset in flows:
    qx, qy = _apply_affine(to_matrix[background], to_offset[background], px, py)
    flow[frames] = np.stack([qy - py, qx - px], -1)  # (delta_row, delta_col)
  for k, (ua, ub) in local.items():
    rows, cols = windows[k]
    wx, wy = px[..., cols], py[:, rows]
    mask = layer[:, rows, cols] == k
    u[:, rows, cols][mask] = np.stack([ua[mask], ub[mask]], -1)
    rgb[:, rows, cols][mask] = texture_colour(scene.objects[k].texture, ua[mask], ub[mask])
    depth[:, rows, cols][mask] = np.broadcast_to(plane_depth[k][:, None, None], mask.shape)[mask]
    for flow, frames, to_matrix, to_offset in flows:
      qx, qy = _apply_affine(to_matrix[k], to_offset[k], wx, wy)
      moved = mask[frames]
      flow[frames, rows, cols][moved] = np.stack([(qy - wy)[moved], (qx - wx)[moved]], -1)

  radial = np.sqrt(
    1.0 + ((px - width / 2.0) ** 2 + (py - height / 2.0) ** 2) / focal_length_px(width) ** 2
  )
  return {
    "rgb": rgb,
    "layer": layer,
    "object_uv": u,
    "forward_flow": forward,
    "backward_flow": backward,
    "depth": (depth * radial)[..., None],
    "matrix": matrix,
    "offset": offset,
    "plane_depth": plane_depth,
  }


def quantize_to_uint16(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """MOVi encoding: round((v - min) / (max - min) * 65535), range [min, max].

  A constant array is stored as zeros with range [v, v], which decodes exactly.

  Returns:
    uint16 array of the same shape, float32 [2] range.
  """
  # Quantize against the float32 range that is stored, so decoding matches.
  low = float(np.float32(np.min(values)))
  high = float(np.float32(np.max(values)))
  if high > low:
    scaled = np.clip(np.round((values - low) / (high - low) * 65535.0), 0, 65535)
  else:
    scaled = np.zeros(values.shape)
  return scaled.astype(np.uint16), np.array([low, high], np.float32)


def scene_rng(seed: int, split_index: int, index: int) -> np.random.Generator:
  """The generator of video `index` of split `split_index` (0 train, 1 val)."""
  return np.random.default_rng([seed, split_index, index])
