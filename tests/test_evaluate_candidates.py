"""`python -m vosjax.evaluate` on a run's `frame_candidates/` folder (SMTC's overlapping candidate
masks, `<seq>.npz`): both DAVIS-2017 unsupervised protocols, each candidate scored on its own."""

import csv

import numpy as np

from helpers.tiny_configs import (
  DAVIS2017_QUALITY,
  DAVIS2017_SIZE,
  DAVIS_NUM_FRAMES,
  DAVIS_SEQUENCES,
)
from vosjax import evaluate as evaluate_command
from vosjax.data import davis
from vosjax.data import video as video_io
from vosjax.evaluation import frame_folders
from vosjax.evaluation import windows

GRID = (30, 54)  # the candidates' prediction grid; the evaluator upsamples them


def _candidates(ground_truth: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
  """Disjoint candidates `[T, 3, h, w]` on GRID from a sequence's masks `[T, H, W]`: the object
  shifted, a block, and (absent in frame 1) the rest of the background; and their validity."""
  rows = np.arange(GRID[0]) * ground_truth.shape[1] // GRID[0]
  cols = np.arange(GRID[1]) * ground_truth.shape[2] // GRID[1]
  small = ground_truth[:, rows[:, None], cols[None, :]] > 0
  masks = np.zeros((len(small), 3) + GRID, bool)
  masks[:, 0] = np.roll(small, int(rng.integers(1, 4)), axis=2)
  block = np.zeros(GRID, bool)
  block[2:10, 30:50] = True
  masks[:, 1] = block & ~masks[:, 0]
  masks[:, 2] = ~(masks[:, 0] | masks[:, 1])
  valid = np.ones((len(small), 3), bool)
  valid[1, 2] = False
  masks[1, 2] = False
  return masks, valid


def _global(path) -> dict:
  with open(path) as stream:
    return {k: float(v) for k, v in next(csv.DictReader(stream)).items()}


def test_candidates_folder_scores_as_the_same_masks_written_as_pngs(
  tiny_davis2017_dir, tmp_path, capsys
):
  """Disjoint candidates score exactly as the PNG id maps holding the same masks; the command
  finds the run layout by itself and writes one CSV pair per protocol."""
  annotations = tiny_davis2017_dir / "Annotations_unsupervised" / DAVIS2017_QUALITY
  candidates_dir, pngs = tmp_path / "frame_candidates", tmp_path / "frame_results"
  rng = np.random.default_rng(0)
  size = DAVIS2017_SIZE[::-1]
  for sequence in DAVIS_SEQUENCES:
    truth = np.stack(
      [davis.read_label_png(p) for p in sorted((annotations / sequence).glob("*.png"))]
    )
    masks, valid = _candidates(truth, rng)
    names = [f"{t:05d}" for t in range(DAVIS_NUM_FRAMES)]
    candidates_dir.mkdir(exist_ok=True)
    np.savez_compressed(
      candidates_dir / f"{sequence}.npz", masks=masks, valid=valid, frame_names=np.array(names)
    )
    ids = (masks * np.arange(1, 4)[None, :, None, None]).sum(1).astype(np.uint8)
    for name, frame_ids in zip(names, windows.upsample_nearest_floor(ids, size)):
      video_io.write_indexed_png(pngs / sequence / f"{name}.png", frame_ids)

  assert (
    evaluate_command.main(
      ["--gt", str(annotations), "--results", str(candidates_dir), "--output", str(tmp_path / "c")]
    )
    == 0
  )
  printed = capsys.readouterr().out
  for protocol in frame_folders.PROTOCOLS:
    assert f"{protocol} (candidate masks of {candidates_dir})" in printed
    argv = ["--protocol", protocol, "--gt", str(annotations), "--results", str(pngs)]
    assert evaluate_command.main(argv + ["--output", str(tmp_path / "p" / protocol)]) == 0
    from_candidates = _global(tmp_path / "c" / protocol / "global_results.csv")
    from_pngs = _global(tmp_path / "p" / protocol / "global_results.csv")
    assert from_candidates == from_pngs
    assert 0.3 < from_candidates["J-Mean"] < 0.99, from_candidates  # shifted: neither 0 nor 1

  # One protocol by name; a missing sequence and a semi-supervised protocol are clear errors.
  argv = ["--gt", str(annotations), "--results", str(candidates_dir)]
  assert (
    evaluate_command.main(
      argv + ["--protocol", "davis2017-unsupervised", "--output", str(tmp_path / "one")]
    )
    == 0
  )
  assert [p.name for p in (tmp_path / "one").iterdir()] == ["davis2017-unsupervised"]
  assert evaluate_command.main(argv + ["--sequences", "dog", "--output", str(tmp_path / "x")]) == 1
  assert "no ground truth" in capsys.readouterr().err
  assert evaluate_command.main(argv + ["--protocol", "davis2016", "--output", str(tmp_path)]) == 1
  assert "candidate masks are scored with" in capsys.readouterr().err


def test_davis2016_root_is_scored_through_its_binarised_masks(tiny_davis_dir, tmp_path, capsys):
  """A DAVIS-2016 root (0/255 grayscale masks at 854x480) as the ground truth of candidates."""
  annotations = tiny_davis_dir / "Annotations" / "480p"
  rng = np.random.default_rng(1)
  for sequence in DAVIS_SEQUENCES:
    truth = np.stack(
      [davis.read_label_png(p) for p in sorted((annotations / sequence).glob("*.png"))]
    )
    masks, valid = _candidates(truth, rng)
    (tmp_path / "cand").mkdir(exist_ok=True)
    np.savez_compressed(
      tmp_path / "cand" / f"{sequence}.npz",
      masks=masks,
      valid=valid,
      frame_names=np.array([f"{t:05d}" for t in range(DAVIS_NUM_FRAMES)]),
    )
  argv = ["--gt", str(tiny_davis_dir), "--results", str(tmp_path / "cand")]
  assert evaluate_command.main(argv + ["--output", str(tmp_path / "out")]) == 0
  assert (tmp_path / "out" / "frame_eval" / "annotations" / "camel" / "00000.png").is_file()
  scores = _global(tmp_path / "out" / "davis2017-unsupervised" / "global_results.csv")
  assert 0.3 < scores["J-Mean"] < 0.99, scores
