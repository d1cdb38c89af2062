"""JHMDB pose keypoints as the CRW (videowalk) test code reads them, and its keypoint label maps.

Layout (videowalk `code/data/jhmdb.py` `JhmdbSet`, `code/eval/eval_pck.py`): a file list whose
lines are `<frame folder> <joint_positions.mat>`, e.g.

  JHMDB/Rename_Images/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0 \\
  JHMDB/joint_positions/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0/joint_positions.mat

(relative paths are taken from the list's folder). Frames are the folder's `.png` files sorted by
their integer stem (`00001.png` ...). `pos_img` in the .mat file is [2, J, T] (x, y) in MATLAB's
1-based pixels; the code subtracts 1. JHMDB has J = 15 joints.

Label maps (`JhmdbSet.__getitem__`): frames are resized to `crop_size` x `crop_size` (cv2
bilinear of the float image, `ratio = 1.0`: square), the label grid is ceil(crop / stride) per
side, joint (x, y) -> (x * crop / W / stride, y * crop / H / stride), and each joint gets its own
channel with a Gaussian of sigma 0.5 drawn as `draw_labelmap_np` draws it (a (6 sigma + 1)-wide
patch whose corner is int()-truncated, assigned, not maxed); channel 0 (background) is 1 where
every joint channel is 0. Predicted grid coordinates go back to pixels as `eval_pck.py` does:
x / (crop / stride) * W.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

JHMDB_JOINTS = 15
# videowalk's JHMDB skeleton (`utils/test_utils.vis_pose`): joint j is drawn to its parent.
JHMDB_PARENTS = (1, 1, 0, 0, 0, 1, 1, 3, 4, 5, 6, 7, 8, 9, 10)


@dataclasses.dataclass(frozen=True)
class JhmdbVideo:
  """One line of the file list: name (the frame folder's name), frames, joint_positions.mat."""

  name: str
  frames: list[Path]
  joints_file: Path


def read_file_list(list_path) -> list[tuple[Path, Path]]:
  """The two path columns of a videowalk/UVC file list (relative paths from the list's folder)."""
  list_path = Path(list_path)
  if not list_path.is_file():
    raise FileNotFoundError(f"missing file list {list_path}")
  rows = []
  for number, line in enumerate(list_path.read_text().splitlines(), 1):
    columns = line.split()
    if not columns:
      continue
    if len(columns) < 2:
      raise ValueError(f"{list_path}:{number}: expected '<frame folder> <labels>', got {line!r}")
    first, second = (
      Path(c) if Path(c).is_absolute() else list_path.parent / c for c in columns[:2]
    )
    rows.append((first, second))
  if not rows:
    raise ValueError(f"{list_path}: no video listed")
  return rows


def numbered_frames(folder, suffix: str = ".png") -> list[Path]:
  """The folder's `suffix` files sorted by their integer stem (as `make_paths` sorts them)."""
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"missing frame folder {folder}")
  paths = [p for p in folder.iterdir() if p.suffix.lower() == suffix]
  bad = [p.name for p in paths if not p.stem.isdigit()]
  if bad:
    raise ValueError(f"{folder}: frame names must be numbers (as 00001{suffix}), got {bad[0]}")
  if not paths:
    raise FileNotFoundError(f"{folder}: no {suffix} frames")
  return sorted(paths, key=lambda p: int(p.stem))


def jhmdb_videos(list_path) -> list[JhmdbVideo]:
  """The videos of a JHMDB file list; every frame folder and .mat file must exist."""
  videos = []
  for folder, joints_file in read_file_list(list_path):
    if not joints_file.is_file():
      raise FileNotFoundError(f"missing joint positions {joints_file} (listed in {list_path})")
    videos.append(JhmdbVideo(folder.name, numbered_frames(folder), joints_file))
  return videos


def read_joint_positions(mat_path) -> np.ndarray:
  """float64 [T, J, 2] (x, y) 0-based pixels: `pos_img - 1` of a joint_positions.mat file."""
  from scipy import io as scipy_io  # pylint: disable=g-import-not-at-top

  mat_path = Path(mat_path)
  if not mat_path.is_file():
    raise FileNotFoundError(f"missing joint positions {mat_path}")
  contents = scipy_io.loadmat(str(mat_path))
  if "pos_img" not in contents:
    keys = sorted(k for k in contents if not k.startswith("__"))
    raise KeyError(f"{mat_path}: no 'pos_img' (keys: {', '.join(keys) or 'none'})")
  positions = np.asarray(contents["pos_img"], np.float64)
  if positions.ndim != 3 or positions.shape[0] != 2:
    raise ValueError(f"{mat_path}: pos_img must be [2, joints, frames], got {positions.shape}")
  return (positions - 1).transpose(2, 1, 0)


def crop_hw(frame_hw: tuple[int, int], crop_size: int) -> tuple[int, int]:
  """The frame size after the test code's resize: (crop, crop), or the frame's own if <= 0."""
  return (crop_size, crop_size) if crop_size > 0 else tuple(frame_hw)


def keypoint_grid_hw(frame_hw, crop_size: int, stride: int) -> tuple[int, int]:
  """JhmdbSet's label grid: ceil of the resized frame over the stride."""
  height, width = crop_hw(frame_hw, crop_size)
  return math.ceil(height / stride), math.ceil(width / stride)


def _gaussian_patch(heat: np.ndarray, x: float, y: float, sigma: float) -> None:
  """Writes a Gaussian peak around (x, y) into heat [h, w] in place (`draw_labelmap_np`)."""
  left, top = int(x - 3 * sigma), int(y - 3 * sigma)  # int() truncates toward zero
  right, bottom = int(x + 3 * sigma + 1), int(y + 3 * sigma + 1)
  height, width = heat.shape
  if left >= width or top >= height or right < 0 or bottom < 0:
    return
  size = 6 * sigma + 1
  offsets = np.arange(0, size, 1, float)  # the patch, peak at index size // 2
  centre = size // 2
  x0, x1 = max(0, left), min(right, width)
  y0, y1 = max(0, top), min(bottom, height)
  dx = offsets[x0 - left : x1 - left] - centre
  dy = offsets[y0 - top : y1 - top] - centre
  heat[y0 : y0 + len(dy), x0 : x0 + len(dx)] = np.exp(
    -(dx[None, :] ** 2 + dy[:, None] ** 2) / (2 * sigma**2)
  )


def keypoint_label_maps(
  joints: np.ndarray, frame_hw, crop_size: int, stride: int, sigma: float = 0.5
) -> np.ndarray:
  """float32 [h, w, 1 + J] first-frame labels: background, then one map per joint.

  Args:
    joints: float [J, 2] (x, y) 0-based pixels of the original frame.
    frame_hw: the original frame's (H, W). crop_size: the test resize (<= 0: none).
    stride: the label grid's stride in resized pixels (CRW's mapScale).
    sigma: Gaussian width in grid cells; 0 puts a 1 at the cell (int(x), int(y)) instead.
  """
  height, width = frame_hw
  new_h, new_w = crop_hw(frame_hw, crop_size)
  grid = keypoint_grid_hw(frame_hw, crop_size, stride)
  joints = np.asarray(joints, np.float64)
  xs = joints[:, 0] * float(new_w) / float(width) / stride
  ys = joints[:, 1] * float(new_h) / float(height) / stride
  maps = np.zeros(grid + (len(joints),))
  for j, (x, y) in enumerate(zip(xs, ys)):
    if sigma > 0:
      _gaussian_patch(maps[..., j], x, y, sigma)
    elif 0 <= int(x) < grid[1] and 0 <= int(y) < grid[0]:
      maps[int(y), int(x), j] = 1.0
  maps = maps.astype(np.float32)
  background = (maps.sum(-1) == 0).astype(np.float32)
  return np.concatenate([background[..., None], maps], axis=-1)


def grid_to_pixels(coords: np.ndarray, frame_hw, crop_size: int, stride: int) -> np.ndarray:
  """float [J, 2] grid (x, y) (-1: invisible) -> float64 [J, 2] pixels as `eval_pck.py` scales
  them (x / (crop / stride) * W); invisible joints stay negative."""
  height, width = frame_hw
  new_h, new_w = crop_hw(frame_hw, crop_size)
  coords = np.asarray(coords, np.float64)
  pixels = np.stack(
    [coords[:, 0] / (new_w / stride) * width, coords[:, 1] / (new_h / stride) * height], -1
  )
  return np.where(coords < 0, -1.0, pixels)
