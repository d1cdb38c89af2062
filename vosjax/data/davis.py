"""DAVIS-layout folders as a dataset: sequences, frames and masks, Motion Grouping flow pairs.

Layout: `<root>/JPEGImages/<quality>/<seq>/<frame>.jpg` and
`<root>/Annotations/<quality>/<seq>/<frame>.png`, any frame size (quality "480p",
"Full-Resolution", ...). Grayscale annotations (DAVIS-2016, values {0, 255}) are read as one object
(`png > 0`); indexed ones (DAVIS-2017) keep their ids, with the void value 255 read as background.

Motion Grouping on DAVIS (docs/motion_grouping.md, "Flow input", "Evaluation"): a training
sample is two flows of the SAME frame with two different gaps, the gap pair drawn uniformly from
combinations(gaps, 2), then a sequence uniformly, then a frame where both flows exist.
Evaluation uses, for every frame, the flows of each gap, falling back to the opposite gap where the
frame + gap is outside the video. Flows come from OpenCV DIS (computed once, cached) or from
precomputed RAFT `.flo` folders.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Iterator, Sequence
import warnings

import cv2
import numpy as np
from PIL import Image

from vosjax.data import optical_flow
from vosjax.data import video as video_io

VOID_LABEL = 255


def frames_dir(root, quality: str = "480p") -> Path:
  return Path(root) / "JPEGImages" / quality


def annotations_dir(root, quality: str = "480p") -> Path:
  return Path(root) / "Annotations" / quality


def _subfolders(folder: Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def sequences_without_frames(root, quality: str = "480p") -> list[str]:
  """Sequences with an annotation folder but no frame images (e.g. cows, goat in shared data)."""
  images = frames_dir(root, quality)
  return [
    s
    for s in _subfolders(annotations_dir(root, quality))
    if not (images / s).is_dir() or not video_io.list_frame_files(images / s)
  ]


def list_sequences(root, quality: str = "480p", require_frames: bool = True) -> list[str]:
  """Sequence names of a DAVIS root, sorted.

  Args:
    root: DAVIS root folder.
    quality: resolution folder name.
    require_frames: list only sequences that have frames (warns naming those skipped); else
      every sequence with frames or annotations.
  """
  root = Path(root)
  images, masks = frames_dir(root, quality), annotations_dir(root, quality)
  if not images.is_dir() and not masks.is_dir():
    raise FileNotFoundError(f"{root} is not a DAVIS root: neither {images} nor {masks} exists")
  with_frames = [s for s in _subfolders(images) if video_io.list_frame_files(images / s)]
  if not require_frames:
    return sorted(set(with_frames) | set(_subfolders(masks)))
  skipped = sequences_without_frames(root, quality)
  if skipped:
    warnings.warn(
      f"DAVIS root {root}: skipping sequences without frames: {', '.join(skipped)}", stacklevel=2
    )
  return with_frames


# The split lists DAVIS ships: DAVIS-2016 `ImageSets/<quality>/<split>.txt` (one
# "/JPEGImages/480p/<seq>/<frame>.jpg /Annotations/480p/<seq>/<frame>.png" line per frame),
# DAVIS-2017 `ImageSets/2017/<split>.txt` (one sequence name per line; test-dev ships its own root
# with `ImageSets/2017/test-dev.txt`, DAVIS-2019 unsupervised test-dev `ImageSets/2019/`).
SPLIT_LIST_FOLDERS = ("2017", "2019")


def split_list_file(root, split: str = "val", quality: str = "480p") -> Path | None:
  """The `ImageSets/` list of `split` in a DAVIS root (2016 layout first, then 2017, 2019), or
  None where the root ships none."""
  sets = Path(root) / "ImageSets"
  for folder in (quality, *SPLIT_LIST_FOLDERS):
    path = sets / folder / f"{split}.txt"
    if path.is_file():
      return path
  return None


def read_split_list(path) -> list[str]:
  """Sequence names of a DAVIS `ImageSets/` list, in their first-appearance order (2016 lines
  name a frame: the sequence is its folder; 2017 lines are the names)."""
  names = []
  for line in Path(path).read_text().splitlines():
    if not line.strip():
      continue
    first = line.split()[0]
    name = Path(first).parent.name if "/" in first else first
    if name not in names:
      names.append(name)
  return names


def split_sequences(
  root, split: str = "val", quality: str = "480p", override: Sequence[str] = ()
) -> list[str]:
  """The sequences to evaluate in a DAVIS root, as DAVIS is shipped.

  Args:
    root: DAVIS root. split: the `ImageSets/` list ("val", "test-dev", "train", ...).
    quality: resolution folder name.
    override: explicit sequence names (`config.data.eval_sequences`); returned as given.

  Returns:
    `override`, else the sequences of `split_list_file(root, split, quality)` that have frames
    (sorted; those without frames are skipped with a warning), else, where the root ships no
    list, every sequence with frames.
  """
  if override:
    return list(override)
  path = split_list_file(root, split, quality)
  if path is None:
    return list_sequences(root, quality)
  listed = read_split_list(path)
  images = frames_dir(root, quality)
  with_frames = sorted(
    s for s in listed if (images / s).is_dir() and video_io.list_frame_files(images / s)
  )
  skipped = [s for s in listed if s not in with_frames]
  if not with_frames:
    raise ValueError(f"none of the {len(listed)} sequences listed in {path} has frames in {images}")
  if skipped:
    warnings.warn(
      f"DAVIS root {root}: skipping sequences of {path.name} without frames: {', '.join(skipped)}",
      stacklevel=2,
    )
  return with_frames


def _read_png(path) -> tuple[np.ndarray, str]:
  path = Path(path)
  try:
    with Image.open(path) as image:
      if image.mode not in ("P", "L", "1", "I;16", "I"):
        raise ValueError(f"{path}: expected an indexed or grayscale PNG, got mode {image.mode}")
      return np.array(image), image.mode
  except FileNotFoundError:
    raise FileNotFoundError(f"missing mask file {path}") from None
  except (OSError, SyntaxError) as err:
    raise ValueError(f"{path}: unreadable PNG ({err})") from None


def read_label_png(path) -> np.ndarray:
  """An indexed (P), grayscale (L, I;16, I) or binary (1) PNG -> its values, `[H, W]`, as stored.

  The one reader of annotation and result masks (training data and the DAVIS evaluation alike).
  """
  return _read_png(path)[0]


def _read_annotation(path: Path) -> np.ndarray:
  """Object ids int32 `[H, W]`: indexed PNGs as stored with void (255) as background; 8-bit
  grayscale and binary masks as one object (> 0)."""
  values, mode = _read_png(path)
  if mode in ("L", "1"):
    return (values > 0).astype(np.int32)
  return np.where(values == VOID_LABEL, 0, values).astype(np.int32)


def _frame_paths(root, sequence: str, quality: str) -> list[Path]:
  folder = frames_dir(root, quality) / sequence
  paths = video_io.list_frame_files(folder) if folder.is_dir() else []
  if not paths:
    has_masks = (annotations_dir(root, quality) / sequence).is_dir()
    raise FileNotFoundError(
      f"DAVIS sequence {sequence!r} has no frames in {folder}"
      + (" (it has annotations only)" if has_masks else "")
    )
  return paths


def load_sequence(
  root, sequence: str, resolution: Sequence[int] | None = None, quality: str = "480p"
) -> dict:
  """Frames and masks of one sequence.

  Args:
    root: DAVIS root. sequence: its name.
    resolution: optional (H, W); frames resized bilinearly, masks by nearest neighbour.
    quality: resolution folder name.

  Returns:
    dict(video float32 [T, H, W, 3] in [0, 1], segmentations int32 [T, H, W] (0 = background),
    annotated bool [T] (frames without an annotation PNG get zeros), names list[str] of frame
    file stems).
  """
  paths = _frame_paths(root, sequence, quality)
  video = video_io.read_frame_folder(paths[0].parent, resolution)
  height, width = video.shape[1:3]
  masks_folder = annotations_dir(root, quality) / sequence
  segmentations = np.zeros(video.shape[:3], np.int32)
  annotated = np.zeros(len(paths), bool)
  for t, path in enumerate(paths):
    mask_path = masks_folder / f"{path.stem}.png"
    if not mask_path.exists():
      continue
    mask = _read_annotation(mask_path)
    if resolution is None and mask.shape != (height, width):
      raise ValueError(
        f"{mask_path}: size {mask.shape[::-1]} differs from its frame {(width, height)}"
      )
    if mask.shape != (height, width):
      mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    segmentations[t] = mask
    annotated[t] = True
  return {
    "video": video,
    "segmentations": segmentations,
    "annotated": annotated,
    "names": [p.stem for p in paths],
  }


def _cache_key(root, sequence: str, quality: str) -> str:
  resolved = str(Path(root).resolve())
  digest = hashlib.sha1(resolved.encode()).hexdigest()[:10]
  return f"{Path(resolved).name}-{digest}/{quality}/{sequence}"


def _gray_frames(paths: list[Path]) -> np.ndarray:
  frames = [cv2.cvtColor(video_io.read_image(p), cv2.COLOR_RGB2GRAY) for p in paths]
  if any(f.shape != frames[0].shape for f in frames):
    raise ValueError(f"frames of {paths[0].parent} differ in size")
  return np.stack(frames)


def sequence_flows(
  root,
  sequence: str,
  gaps: Sequence[int],
  resolution: Sequence[int],
  flow_cache_dir,
  raft_flow_root=None,
  raft_res: str | None = None,
  quality: str = "480p",
  preset: str = "medium",
) -> dict[int, np.ndarray]:
  """Flows [T, h, w, 2] (dy, dx) per gap, cached on disk (zeros where t + gap is outside).

  DIS flow is computed at the frames' own resolution, then resized to `resolution` with the
  vectors rescaled (as Motion Grouping does with RAFT flow). With `raft_flow_root`, the
  `Flows_gap{g}[/raft_res]/<seq>/<frame>.flo` files are read instead (and cached converted).
  """
  paths = _frame_paths(root, sequence, quality)
  names = [p.stem for p in paths]
  key = _cache_key(root, sequence, quality)
  if raft_flow_root is not None:
    compute = lambda gap: optical_flow.read_raft_flows(
      raft_flow_root, sequence, gap, names, resolution, raft_res
    )
    method = "raft"
  else:
    gray = []  # Decoded once, and only if some gap is missing from the cache.

    def compute(gap):
      if not gray:
        gray.append(_gray_frames(paths))
      return optical_flow.resize_flow(optical_flow.video_flow(gray[0], gap, preset), resolution)

    method = f"dis-{preset}"
  return optical_flow.cached_flows(flow_cache_dir, key, gaps, resolution, compute, method)


def make_flow_pair_iterator(
  root,
  sequences: Sequence[str],
  resolution: Sequence[int],
  batch_size: int,
  seed: int,
  start_step: int = 0,
  flow_cache_dir=None,
  gaps: Sequence[int] = (1, 2, -1, -2),
  raft_flow_root=None,
  raft_res: str | None = None,
  quality: str = "480p",
  preset: str = "medium",
) -> Iterator[dict]:
  """Endless Motion Grouping training batches from DAVIS folders.

  Batch `step` depends only on (seed, step), so resuming at `start_step` reproduces the run.

  Args:
    root: DAVIS root. sequences: names to train on (each needs frames).
    resolution: (h, w) of the flows (Motion Grouping: (128, 224)).
    batch_size: samples per batch. seed: sampling seed. start_step: first step to yield.
    flow_cache_dir: where flows are cached (required).
    gaps: frame gaps; pairs are combinations(gaps, 2).
    raft_flow_root, raft_res: read precomputed RAFT .flo folders instead of computing DIS.

  Yields:
    dict(flow_a float32 [B, h, w, 2], flow_b float32 [B, h, w, 2] (dy, dx) of the same frame,
    gaps int32 [B, 2], sequence_index int32 [B], frame_index int32 [B]).
  """
  if flow_cache_dir is None:
    raise ValueError("make_flow_pair_iterator needs a flow_cache_dir")
  if not sequences:
    raise ValueError("no sequences to train on")
  if len(set(gaps)) < 2:
    raise ValueError(f"need at least two different gaps, got {gaps}")
  flows = [
    sequence_flows(
      root, s, gaps, resolution, flow_cache_dir, raft_flow_root, raft_res, quality, preset
    )
    for s in sequences
  ]
  gap_pairs = list(itertools.combinations(gaps, 2))
  # frames[p][s]: frames of sequence s that have both flows of gap pair p.
  frames = [
    [
      np.flatnonzero(
        optical_flow.valid_gap_frames(len(f[a]), a) & optical_flow.valid_gap_frames(len(f[b]), b)
      )
      for f in flows
    ]
    for a, b in gap_pairs
  ]
  for p, per_sequence in enumerate(frames):
    for s, available in enumerate(per_sequence):
      if not len(available):
        raise ValueError(f"sequence {sequences[s]!r} is too short for gaps {gap_pairs[p]}")
  for step in itertools.count(start_step):
    rng = np.random.default_rng([seed, step])
    pair_index = rng.integers(len(gap_pairs), size=batch_size)
    sequence_index = rng.integers(len(sequences), size=batch_size)
    batch = {"flow_a": [], "flow_b": [], "gaps": [], "frame_index": []}
    for p, s in zip(pair_index, sequence_index):
      gap_a, gap_b = gap_pairs[p]
      t = int(rng.choice(frames[p][s]))
      batch["flow_a"].append(flows[s][gap_a][t])
      batch["flow_b"].append(flows[s][gap_b][t])
      batch["gaps"].append((gap_a, gap_b))
      batch["frame_index"].append(t)
    yield {
      "flow_a": np.stack(batch["flow_a"]).astype(np.float32),
      "flow_b": np.stack(batch["flow_b"]).astype(np.float32),
      "gaps": np.asarray(batch["gaps"], np.int32),
      "sequence_index": sequence_index.astype(np.int32),
      "frame_index": np.asarray(batch["frame_index"], np.int32),
    }


def evaluation_flows(
  root,
  sequence: str,
  resolution: Sequence[int],
  flow_cache_dir,
  gaps: Sequence[int] = (1, 2, -1, -2),
  raft_flow_root=None,
  raft_res: str | None = None,
  quality: str = "480p",
  preset: str = "medium",
) -> dict:
  """Per frame, one flow per gap, with Motion Grouping's fallback to the opposite gap.

  Returns:
    dict(flows float32 [T, G, h, w, 2] (dy, dx), gaps_used int32 [T, G], video float32
    [T, h, w, 3], segmentations int32 [T, h, w], annotated bool [T], names list[str]).
  """
  all_gaps = sorted(set(gaps) | {-g for g in gaps})
  flows = sequence_flows(
    root, sequence, all_gaps, resolution, flow_cache_dir, raft_flow_root, raft_res, quality, preset
  )
  num_frames = len(next(iter(flows.values())))
  out = np.zeros((num_frames, len(gaps)) + tuple(resolution) + (2,), np.float32)
  used = np.zeros((num_frames, len(gaps)), np.int32)
  for i, gap in enumerate(gaps):
    for t in range(num_frames):
      for candidate in (gap, -gap):
        if optical_flow.valid_gap_frames(num_frames, candidate)[t]:
          out[t, i], used[t, i] = flows[candidate][t], candidate
          break
      else:
        raise ValueError(
          f"sequence {sequence!r} ({num_frames} frames) has no flow of gap "
          f"{gap} or {-gap} at frame {t}"
        )
  return {"flows": out, "gaps_used": used, **load_sequence(root, sequence, resolution, quality)}


# How the frame stride of a training clip shrinks when the clip does not fit the video (the official
# loaders, `src/data.py::Dataloader.__getitem__`): "until_fits" (SSL-UVOS, Betrayed by Attention:
# `while gap*(L//2) >= n - gap*(L//2) - 1: gap -= 1`) or "once" (SMTC: the same test as an `if`,
# one decrement).
GAP_SHRINK_RULES = ("until_fits", "once")


def _no_room(num_frames: int, half: int, gap: int) -> bool:
  """The official test `gap * half >= num_frames - gap * half - 1` that makes the stride shrink."""
  return gap * half >= num_frames - gap * half - 1


def clip_stride(num_frames: int, clip_length: int, gap: int, rule: str = "until_fits") -> int:
  """The stride of a video's training clips (see `GAP_SHRINK_RULES`).

  "once" shrinks by one where the official SMTC does; where even that stride leaves no centre
  (official: `random.randint` raises, < 13 frames at L = 4, gap 4) it shrinks further until one
  exists, down to 0 (a one-frame video repeats its frame).
  """
  if rule not in GAP_SHRINK_RULES:
    raise ValueError(
      f"unknown frame-gap shrink rule {rule!r} (config.data.gap_shrink); use one of "
      f"{GAP_SHRINK_RULES}"
    )
  half = clip_length // 2
  if rule == "once":
    if _no_room(num_frames, half, gap):
      gap -= 1
    while gap > 0 and gap * half > num_frames - gap * half - 1:  # no centre at all
      gap -= 1
    return max(gap, 0)
  while gap > 0 and _no_room(num_frames, half, gap):
    gap -= 1
  return gap


def clip_frame_indices(
  num_frames: int, clip_length: int, gap: int, rng: np.random.Generator, rule: str = "until_fits"
) -> np.ndarray:
  """Frames of one training clip as the official loaders pick them.

  `clip_length` frames at stride s = `clip_stride(num_frames, clip_length, gap, rule)` around a
  centre c drawn uniformly from [s * (L // 2), num_frames - s * (L // 2) - 1]: frames c + s * (i - L
  // 2), i = 0 .. L - 1 (L = 4, gap 4: c - 8, c - 4, c, c + 4).
  """
  half = clip_length // 2
  stride = clip_stride(num_frames, clip_length, gap, rule)
  centre = int(rng.integers(stride * half, num_frames - stride * half))
  return centre + stride * (np.arange(clip_length) - half)


def make_clip_iterator(
  root,
  sequences: Sequence[str],
  resolution: Sequence[int],
  batch_size: int,
  seed: int,
  start_step: int = 0,
  clip_length: int = 3,
  frame_gap: int = 4,
  quality: str = "480p",
  gap_shrink: str = "until_fits",
) -> Iterator[dict]:
  """Endless RGB training clips from frame folders (YouTube-VIS / YouTube-VOS / DAVIS layout).

  Each sample: a video uniformly, then `clip_frame_indices`; each frame read as RGB in [0, 1] and
  resized bilinearly (cv2 INTER_LINEAR on the float image, as the official `readRGB`). Batch `step`
  depends only on (seed, step), so resuming at `start_step` reproduces the run.

  Args:
    root: folder holding `JPEGImages/<quality>/<video>/`. sequences: videos to use (empty: all).
    resolution: (H, W) the frames are resized to (bilinear).
    batch_size: clips per batch. seed: sampling seed. start_step: first step to yield.
    clip_length, frame_gap: frames per clip and their stride (Betrayed 3 and 4, SMTC 4 and 4).
    quality: the resolution folder ("" for YouTube-VIS / YouTube-VOS).
    gap_shrink: `GAP_SHRINK_RULES` ("until_fits" Betrayed, "once" SMTC).

  Yields:
    dict(video float32 [B, clip_length, H, W, 3] in [0, 1]).
  """
  sequences = list(sequences) or list_sequences(root, quality)
  if not sequences:
    raise ValueError(f"no videos with frames under {frames_dir(root, quality)}")
  paths = [_frame_paths(root, s, quality) for s in sequences]
  if gap_shrink == "once":
    short = [
      f"{s} ({len(p)} frames)"
      for s, p in zip(sequences, paths)
      if clip_stride(len(p), clip_length, frame_gap, "once") < frame_gap - 1
    ]
    if short:
      warnings.warn(
        f"{len(short)} video(s) too short for {clip_length} frames at stride "
        f"{frame_gap} or {frame_gap - 1} (the official SMTC loader fails on them); "
        f"their clips use a smaller stride: {', '.join(short[:10])}",
        stacklevel=2,
      )
  height, width = resolution
  for step in itertools.count(start_step):
    rng = np.random.default_rng([seed, step])
    clips = []
    for s in rng.integers(len(sequences), size=batch_size):
      frames = [
        video_io.read_image(paths[s][t]).astype(np.float32) / 255.0
        for t in clip_frame_indices(len(paths[s]), clip_length, frame_gap, rng, gap_shrink)
      ]
      clips.append([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in frames])
    yield {"video": np.asarray(clips, np.float32)}
