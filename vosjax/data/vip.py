"""VIP (Video Instance-level Parsing) part annotations as the CRW (videowalk) test code reads them.

VIP_Fine layout (as distributed; UVC and CRW evaluate on it):

  VIP_Fine/Images/<video>/<frame>.jpg
  VIP_Fine/Annotations/Category_ids/<video>/<frame>.png   (part ids 0..19, 0 background)
  VIP_Fine/lists/<split>_videos.txt                       (one video name per line)

Only every 25th frame is annotated. CRW's `VOSDataset.make_paths` pairs the i-th image of a folder
with the i-th label file, so its VIP folders hold the annotated frames; `vip_videos` therefore
takes the frames that have a Category_ids PNG. `eval_vip.py` scores `<pred>/<video>/<frame>.png`
against `Category_ids/<video>/<frame>.png` (`vosjax.evaluation.parts`).
A videowalk-style file list (`<frame folder> <label folder>` per line) works too:
`vip_videos_from_list` pairs the sorted files by position as `make_paths` does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from vosjax.data import jhmdb

IMAGES = "Images"
CATEGORY_IDS = Path("Annotations") / "Category_ids"


@dataclasses.dataclass(frozen=True)
class VipVideo:
  """name, frames [T] and their part annotations [T] (the first one is propagated)."""

  name: str
  frames: list[Path]
  annotations: list[Path]


def vip_videos(root, split: str = "val", videos=None) -> list[VipVideo]:
  """The videos of `root/lists/<split>_videos.txt` (or the names `videos`), annotated frames."""
  root = Path(root)
  if videos is None:
    listing = root / "lists" / f"{split}_videos.txt"
    if not listing.is_file():
      raise FileNotFoundError(f"missing VIP video list {listing} (or pass the video names)")
    videos = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
  out = []
  for name in videos:
    image_dir, label_dir = root / IMAGES / name, root / CATEGORY_IDS / name
    for folder in (image_dir, label_dir):
      if not folder.is_dir():
        raise FileNotFoundError(f"VIP video {name!r}: missing folder {folder}")
    labels = sorted(label_dir.glob("*.png"))
    frames = [image_dir / f"{p.stem}.jpg" for p in labels]
    missing = [f for f in frames if not f.is_file()]
    if not labels or missing:
      what = missing[0] if missing else f"a .png in {label_dir}"
      raise FileNotFoundError(f"VIP video {name!r}: missing {what}")
    out.append(VipVideo(name, frames, labels))
  return out


def vip_videos_from_list(list_path) -> list[VipVideo]:
  """Videos of a file list `<frame folder> <label folder>`, files paired by sorted position."""
  out = []
  for image_dir, label_dir in jhmdb.read_file_list(list_path):
    frames = jhmdb.numbered_frames(image_dir, ".jpg")
    labels = jhmdb.numbered_frames(label_dir, ".png")
    if len(labels) < len(frames):
      raise ValueError(
        f"{label_dir}: {len(labels)} label files for {len(frames)} frames in {image_dir} "
        "(the test code pairs them by position)"
      )
    out.append(VipVideo(image_dir.name, frames, labels[: len(frames)]))
  return out


def read_part_ids(path) -> np.ndarray:
  """uint8 [H, W] part ids of a Category_ids PNG (grayscale; a colour PNG with equal channels, as
  the test code's cv2.imread sees it, is read as one channel)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"missing part annotation {path}")
  with Image.open(path) as image:
    values = np.asarray(image)
  if values.ndim == 3:
    if not (values[..., :3] == values[..., :1]).all():
      raise ValueError(f"{path}: a colour part map; expected grayscale part ids")
    values = values[..., 0]
  if values.ndim != 2 or values.max(initial=0) > 255:
    raise ValueError(f"{path}: expected [H, W] part ids in 0..255, got {values.shape}")
  return values.astype(np.uint8)
