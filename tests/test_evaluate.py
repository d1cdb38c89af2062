"""DAVIS evaluation: official evaluator outputs (fixtures/ of the real data, VOSJAX_TEST_DATA),
protocols, CLI and errors."""

import csv
import itertools
import json
from pathlib import Path
import time

import numpy as np
from PIL import Image
import pytest

from helpers import real_data
from vosjax import evaluate as evaluate_command
from vosjax.evaluation import davis_protocol as evaluate
from vosjax.data.davis import VOID_LABEL
from vosjax.evaluation import metrics

STAT_COLUMNS = {
  "J-Mean": "J_mean",
  "J-Recall": "J_recall",
  "J-Decay": "J_decay",
  "F-Mean": "F_mean",
  "F-Recall": "F_recall",
  "F-Decay": "F_decay",
}


@pytest.fixture(scope="module")
def shared_data() -> Path:
  """The real data root (skips without it, `helpers.real_data`)."""
  return real_data.require_data(
    "fixtures", "davis2016/Annotations/480p", "davis2017_eval_results/semi-supervised/osvos"
  )


@pytest.fixture(scope="module")
def reference_rows(shared_data):
  """Per-sequence rows, plus the official mean row under the key '__MEAN_OVER_20_SEQUENCES__'."""
  with open(shared_data / "fixtures/davis2016_val_reference_metrics.csv") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def osvos_all_frames(shared_data):
  """The whole-folder davis2016 evaluation of the OSVOS masks, every frame, 2 processes."""
  start = time.perf_counter()
  results = evaluate.evaluate_folders(
    shared_data / "davis2016",
    shared_data / "davis2017_eval_results/semi-supervised/osvos",
    "davis2016",
    frames="all",
    workers=2,
  )
  print(f"\nwhole-folder davis2016 evaluation (20 sequences): {time.perf_counter() - start:.1f} s")
  return results


def test_per_frame_j_and_f_equal_official(osvos_all_frames, shared_data):
  with open(shared_data / "fixtures/davis2016_val_reference_perframe.json") as f:
    reference = json.load(f)["osvos_davis2017semi_binarized"]
  assert sorted(s.name for s in osvos_all_frames.sequences) == sorted(reference)
  for seq in osvos_all_frames.sequences:
    np.testing.assert_allclose(seq.j[0], reference[seq.name]["J"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(seq.f[0], reference[seq.name]["F"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("frames", ["all", "1:-1"])
def test_per_sequence_statistics_equal_official(osvos_all_frames, reference_rows, frames):
  reference = {
    r["sequence"]: r
    for r in reference_rows
    if r["frames"] == frames and not r["sequence"].startswith("__")
  }
  assert len(reference) == 20
  for seq in osvos_all_frames.sequences:
    row = reference[seq.name]
    frame_slice = slice(None) if frames == "all" else slice(1, -1)
    assert int(row["n_frames"]) == len(seq.frame_names)
    j_stats = metrics.davis_statistics(seq.j[0, frame_slice])
    f_stats = metrics.davis_statistics(seq.f[0, frame_slice])
    ours = dict(
      zip(["J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay"], j_stats + f_stats)
    )
    for key, value in ours.items():
      # The fixture CSV has 6 decimals.
      assert value == pytest.approx(float(row[key]), abs=1e-6), (seq.name, key)
    assert (j_stats[0] + f_stats[0]) / 2 == pytest.approx(float(row["JF_mean"]), abs=1e-6)


def test_global_means_equal_official(osvos_all_frames, reference_rows):
  (official,) = [
    r
    for r in reference_rows
    if r["frames"] == "all" and r["sequence"] == "__MEAN_OVER_20_SEQUENCES__"
  ]
  got = osvos_all_frames.global_results()
  for ours, theirs in STAT_COLUMNS.items():
    assert got[ours] == pytest.approx(float(official[theirs]), abs=1e-6)
  assert got["J&F-Mean"] == pytest.approx(float(official["JF_mean"]), abs=1e-6)


def test_cli_writes_official_csv_layout(shared_data, reference_rows, tmp_path, capsys):
  out = tmp_path / "out"
  code = evaluate_command.main(
    [
      "--protocol",
      "davis2016",
      "--gt",
      str(shared_data / "davis2016"),
      "--results",
      str(shared_data / "davis2017_eval_results/semi-supervised/osvos"),
      "--sequences",
      "blackswan,dog",
      "--output",
      str(out),
      "--workers",
      "1",
    ]
  )
  assert code == 0
  assert "frames 1:-1" in capsys.readouterr().out  # DAVIS-2016 toolkit default.
  reference = {r["sequence"]: r for r in reference_rows if r["frames"] == "1:-1"}
  lines = (out / "per-sequence_results.csv").read_text().splitlines()
  assert lines[0] == "Sequence,J-Mean,F-Mean"
  expected = [
    f"{s}_1,{float(reference[s]['J_mean']):.3f},{float(reference[s]['F_mean']):.3f}"
    for s in ("blackswan", "dog")
  ]
  assert lines[1:] == expected
  header, values = (out / "global_results.csv").read_text().splitlines()
  assert header == ",".join(evaluate.GLOBAL_COLUMNS)
  j_mean = np.mean([float(reference[s]["J_mean"]) for s in ("blackswan", "dog")])
  assert float(values.split(",")[1]) == pytest.approx(j_mean, abs=1.5e-3)


# ---------------------------------------------------------------- synthetic folders


def write_png(path: Path, ids: np.ndarray, mode: str = "P") -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(ids.astype(np.uint8))
  if mode == "P":  # putpalette keeps the pixel values (an indexed PNG).
    image.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
  image.save(path)


def blob_video(rng, num_frames=5, height=40, width=56, num_objects=3) -> np.ndarray:
  ids = np.zeros((num_frames, height, width), np.uint8)
  for k in range(1, num_objects + 1):
    y, x = rng.integers(4, height - 15), rng.integers(4, width - 14)
    for t in range(num_frames):
      ids[t, y + t : y + t + 10, x : x + 12] = k
  return ids


def write_sequence(root: Path, seq: str, ids: np.ndarray, mode: str = "P") -> None:
  for t, frame in enumerate(ids):
    write_png(root / seq / f"{t:05d}.png", frame, mode)


def test_unsupervised_permuted_gt_is_perfect_and_void_is_ignored(tmp_path):
  rng = np.random.default_rng(0)
  gt, res = tmp_path / "gt", tmp_path / "res"
  for seq in ("a", "b"):
    ids = blob_video(rng)
    write_sequence(gt, seq, ids, mode="L")
    permutation = np.array([0, 3, 1, 2, 4, 5, 6, 7])  # Plus unused proposal ids -> padding.
    pred = permutation[ids]
    pred[-1, 0, 0] = 7  # Extra one-pixel proposals take part in the matching, and lose.
    write_sequence(res, seq, pred)
  for protocol in ("davis2017-unsupervised", "davis2017-unsupervised-perframe"):
    results = evaluate.evaluate_folders(gt, res, protocol)
    assert results.frames == "all"
    values = results.global_results()
    assert (values["J-Mean"], values["J-Recall"], values["J-Decay"]) == (1.0, 1.0, 0.0)
    assert (values["F-Mean"], values["F-Recall"], values["F-Decay"]) == (1.0, 1.0, 0.0)
  # The toolkit's void unit case: a prediction wrong only under void scores 1.
  truth = np.zeros((2, 200, 200), np.int64)
  truth[:, 100:150, 100:150] = 1
  truth[:, 50:100, 100:150] = VOID_LABEL
  pred = np.zeros_like(truth)
  pred[:, 50:150, 100:150] = 1
  seq = evaluate.evaluate_sequence(truth, pred, "davis2017-unsupervised")
  assert seq.j.mean() == 1.0 and seq.f.mean() == 1.0


def brute_force_sequence_matching(j, f):
  """Best injective proposal->object assignment on mean (J+F)/2, by enumeration."""
  score = (j.mean(2) + f.mean(2)) / 2
  best = max(
    itertools.permutations(range(j.shape[0]), j.shape[1]),
    key=lambda p: sum(score[r, g] for g, r in enumerate(p)),
  )
  return np.stack([j[r, g] for g, r in enumerate(best)]), np.stack(
    [f[r, g] for g, r in enumerate(best)]
  )


def test_matching_protocols_against_enumeration():
  rng = np.random.default_rng(1)
  truth = blob_video(rng, num_frames=6, num_objects=3)
  # A prediction that swaps two objects' ids halfway: per-frame matching recovers, sequence-level
  # matching cannot.
  pred = truth.copy()
  pred[4:] = np.array([0, 2, 1, 3], np.uint8)[truth[4:]]
  pred[:, :3, :3] = 4
  j, f = metrics.pairwise_region_and_boundary(truth, pred, 3, 4)
  sequence = evaluate.evaluate_sequence(truth, pred, "davis2017-unsupervised")
  want_j, want_f = brute_force_sequence_matching(j, f)
  np.testing.assert_array_equal(sequence.j, want_j)
  np.testing.assert_array_equal(sequence.f, want_f)
  per_frame = evaluate.evaluate_sequence(truth, pred, "davis2017-unsupervised-perframe")
  np.testing.assert_array_equal(per_frame.j, 1.0)
  assert sequence.j.mean() < 0.9
  # Fewer proposals than objects: padded with empty proposals (J = 0 where the object is).
  single = evaluate.evaluate_sequence(
    truth, (truth == 2).astype(np.uint8), "davis2017-unsupervised"
  )
  assert single.j.shape == (3, 6)
  np.testing.assert_array_equal(single.j[1], 1.0)
  np.testing.assert_array_equal(single.j[[0, 2]], 0.0)
  with pytest.raises(ValueError, match="21.*20 proposals"):
    evaluate.evaluate_sequence(truth, np.full_like(truth, 21), "davis2017-unsupervised")


def test_folder_errors_name_the_file(tmp_path):
  rng = np.random.default_rng(2)
  gt, res = tmp_path / "gt", tmp_path / "res"
  ids = blob_video(rng, num_frames=3)
  write_sequence(gt, "seq", ids)
  write_sequence(res, "seq", ids)
  assert evaluate.evaluate_folders(gt, res, "davis2016").global_results()["J-Mean"] == 1.0

  (res / "seq/00001.png").unlink()
  with pytest.raises(FileNotFoundError, match="00001.png"):
    evaluate.evaluate_folders(gt, res, "davis2016")
  write_png(res / "seq/00001.png", np.zeros((40, 50)))
  with pytest.raises(ValueError, match=r"00001.png: size \(50, 40\)"):
    evaluate.evaluate_folders(gt, res, "davis2016")
  (res / "seq/00001.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match="00001.png: unreadable"):
    evaluate.evaluate_folders(gt, res, "davis2016")
  Image.new("RGB", (56, 40)).save(res / "seq/00001.png")
  with pytest.raises(ValueError, match="00001.png: expected an indexed or grayscale"):
    evaluate.evaluate_folders(gt, res, "davis2016")
  with pytest.raises(FileNotFoundError, match="lacks sequence"):
    evaluate.evaluate_folders(gt, tmp_path / "gt/seq", "davis2016")
  with pytest.raises(FileNotFoundError, match="GT sequence"):
    evaluate.evaluate_folders(gt, res, "davis2016", sequences=["nope"])
  with pytest.raises(ValueError, match="frames"):
    evaluate.evaluate_folders(gt, res, "davis2016", frames="2:")
  write_sequence(tmp_path / "gt2016", "seq", np.where(ids > 0, 255, 0), mode="L")
  with pytest.raises(ValueError, match="00000.png.*--protocol davis2016"):
    evaluate.evaluate_folders(tmp_path / "gt2016", res, "davis2017-unsupervised")
  # The CLI refuses to write its CSVs into an input folder.
  with pytest.raises(SystemExit):
    evaluate_command.main(
      [
        "--protocol",
        "davis2016",
        "--gt",
        str(gt),
        "--results",
        str(res),
        "--output",
        str(res / "scores"),
      ]
    )
  assert not (res / "scores").exists()
  assert (
    evaluate_command.main(
      [
        "--protocol",
        "davis2016",
        "--gt",
        str(gt),
        "--results",
        str(gt),
        "--output",
        str(tmp_path / "out"),
        "--frames",
        "all",
      ]
    )
    == 0
  )
