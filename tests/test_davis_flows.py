"""Motion Grouping on DAVIS folders end to end: train, masks for every frame, davis2016 scores."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers.tiny_configs import DAVIS_NUM_FRAMES as NUM_FRAMES
from helpers.tiny_configs import DAVIS_SEQUENCES as SEQUENCES


def test_training_writes_and_scores_masks_of_every_frame(config_run, tiny_davis_dir, tmp_path):
  """configs/davis2016.py with the tiny overrides of helpers.tiny_configs (2 sequences x 6 frames at
  32x56, the tiny Motion Grouping model, 2 steps), trained once per session (`config_run`; the
  general checks of that run are in tests/test_configs.py)."""
  from vosjax import evaluate  # pylint: disable=g-import-not-at-top
  from vosjax import train  # pylint: disable=g-import-not-at-top

  config, trained, result = config_run("davis2016.py")
  workdir = tmp_path / "work"
  shutil.copytree(trained, workdir)  # --mode eval below rewrites the outputs
  metrics = json.loads((workdir / "eval_metrics.json").read_text())
  assert metrics == json.loads(json.dumps(result.eval_metrics))
  assert metrics["step"] == 2 and metrics["num_videos"] == len(SEQUENCES)
  for prefix in ("", "baseline_"):
    for key in ("J-Mean", "F-Mean", "J&F-Mean"):
      assert 0.0 <= metrics[prefix + key] <= 1.0, (prefix + key, metrics)
    assert sorted(metrics[prefix + "per_sequence"]) == sorted(SEQUENCES)

  for kind in ("davis_results", "davis_baseline"):
    for sequence in SEQUENCES:
      pngs = sorted((workdir / kind / sequence).glob("*.png"))
      assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(NUM_FRAMES)]
      image = Image.open(pngs[0])
      assert image.mode == "P" and image.size == (854, 480)
      assert set(np.unique(np.asarray(image))) <= {0, 1}
  assert (workdir / "eval_outputs" / f"{SEQUENCES[0]}.gif").stat().st_size > 0

  # The scores equal what the evaluation command computes from the written folders.
  out = tmp_path / "cli"
  assert (
    evaluate.main(
      [
        "--protocol",
        "davis2016",
        "--gt",
        str(tiny_davis_dir),
        "--results",
        str(workdir / "davis_results"),
        "--output",
        str(out),
        "--workers",
        "1",
      ]
    )
    == 0
  )
  with open(out / "per-sequence_results.csv") as f:
    rows = {row["Sequence"]: row for row in csv.DictReader(f)}
  for sequence, scores in metrics["per_sequence"].items():
    sequence_row = rows[f"{sequence}_1"]
    assert float(sequence_row["J-Mean"]) == pytest.approx(scores["J"], abs=5e-4)
    assert float(sequence_row["F-Mean"]) == pytest.approx(scores["F"], abs=5e-4)
  assert (workdir / "davis_eval" / "model" / "global_results.csv").read_text() == (
    out / "global_results.csv"
  ).read_text()

  # --mode eval restores the checkpoint and reproduces the scores.
  again = train.evaluate_checkpoint(config, str(workdir))
  assert again["J-Mean"] == pytest.approx(metrics["J-Mean"])
  assert again["baseline_J-Mean"] == pytest.approx(metrics["baseline_J-Mean"])


def test_evaluation_sequences_are_the_val_list_with_frames(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vosjax.evaluation import davis_flows as davis_validation  # pylint: disable=g-import-not-at-top

  # A train + val root: "bear" is a training sequence, "cows" a val one without frames.
  for sequence, has_frames in (
    ("bear", True),
    ("blackswan", True),
    ("camel", True),
    ("cows", False),
  ):
    (tmp_path / "Annotations" / "480p" / sequence).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(
      tmp_path / "Annotations" / "480p" / sequence / "00000.png"
    )
    if has_frames:
      (tmp_path / "JPEGImages" / "480p" / sequence).mkdir(parents=True)
      Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(
        tmp_path / "JPEGImages" / "480p" / sequence / "00000.jpg"
      )
  data = ml_collections.ConfigDict({"root": str(tmp_path), "sequences": None})
  with pytest.warns(UserWarning, match="cows"):
    assert davis_validation.evaluation_sequences(data) == ["bear", "blackswan", "camel"]

  (tmp_path / "ImageSets" / "480p").mkdir(parents=True)
  (tmp_path / "ImageSets" / "480p" / "val.txt").write_text(
    "".join(
      f"/JPEGImages/480p/{s}/00000.jpg /Annotations/480p/{s}/00000.png\n"
      for s in ("camel", "blackswan", "cows")
    )
  )
  with pytest.warns(UserWarning, match="cows"):
    assert davis_validation.evaluation_sequences(data) == ["blackswan", "camel"]
  data.sequences = ("bear",)  # an explicit list wins
  assert davis_validation.evaluation_sequences(data) == ["bear"]

  (tmp_path / "ImageSets" / "480p" / "val.txt").write_text(
    "/JPEGImages/480p/cows/00000.jpg /Annotations/480p/cows/00000.png\n"
  )
  data.sequences = None
  with pytest.raises(ValueError, match="val.txt has frames"):
    davis_validation.evaluation_sequences(data)
