"""Tiny JHMDB and VIP folders in exactly the layouts the CRW test code reads, built from the
synthetic renderer's videos (exact masks and exact projected object centres)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import io as scipy_io

from vosjax.data import synthetic_render


def synthetic_clip(num_frames=8, height=96, width=128, seed=3, objects=(3, 5)):
  """(uint8 rgb [T, H, W, 3], uint8 ids [T, H, W] (0 background), float64 centres [T, K, 2]
  (x, y) 0-based pixels of each object's projected centre)."""
  scene = synthetic_render.sample_scene(np.random.default_rng(seed), num_frames, *objects)
  rendered = synthetic_render.render_scene(scene, height, width)
  num_objects = len(scene.objects)
  ids = np.where(rendered["layer"] == num_objects, 0, rendered["layer"] + 1).astype(np.uint8)
  rgb = np.round(rendered["rgb"] * 255).astype(np.uint8)
  # The renderer samples pixel (row, col) at (col + 0.5, row + 0.5): pixel index = image - 0.5.
  centres = rendered["offset"][:num_objects].transpose(1, 0, 2) - 0.5
  return rgb, ids, centres


def write_jhmdb(root, clips: dict[str, tuple]) -> Path:
  """JHMDB/Rename_Images/<action>/<video>/00001.png..., joint_positions/<action>/<video>/
  joint_positions.mat (pos_img [2, J, T], 1-based) and a file list with relative paths."""
  root = Path(root)
  lines = []
  for name, (rgb, _, centres) in clips.items():
    frames = root / "Rename_Images" / "synthetic" / name
    joints = root / "joint_positions" / "synthetic" / name / "joint_positions.mat"
    frames.mkdir(parents=True)
    joints.parent.mkdir(parents=True)
    for t, image in enumerate(rgb):
      Image.fromarray(image).save(frames / f"{t + 1:05d}.png")
    pos_img = (np.asarray(centres, np.float64) + 1).transpose(2, 1, 0)
    scipy_io.savemat(str(joints), {"pos_img": pos_img, "scale": np.ones(len(rgb))})
    lines.append(f"{frames.relative_to(root)} {joints.relative_to(root)}")
  listing = root / "test_list.txt"
  listing.write_text("\n".join(lines) + "\n")
  return listing


def write_vip(root, clips: dict[str, tuple], split: str = "val") -> Path:
  """VIP_Fine/Images/<video>/<frame>.jpg, Annotations/Category_ids/<video>/<frame>.png
  (grayscale part ids) and lists/<split>_videos.txt."""
  root = Path(root) / "VIP_Fine"
  for name, (rgb, ids, _) in clips.items():
    images = root / "Images" / name
    labels = root / "Annotations" / "Category_ids" / name
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for t, (image, parts) in enumerate(zip(rgb, ids)):
      stem = f"{(t + 1) * 25:012d}"
      Image.fromarray(image).save(images / f"{stem}.jpg", quality=95)
      Image.fromarray(parts).save(labels / f"{stem}.png")
  (root / "lists").mkdir()
  (root / "lists" / f"{split}_videos.txt").write_text("\n".join(clips) + "\n")
  return root
