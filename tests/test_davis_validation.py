"""Motion Grouping on DAVIS folders end to end: train, masks for every frame, davis2016 scores."""
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_train import TINY_OVERRIDES

SEQUENCES = ("blackswan", "camel")
NUM_FRAMES = 6


@pytest.fixture(scope="module")
def tiny_davis(tmp_path_factory) -> Path:
  """The first frames and annotations of two real DAVIS-2016 sequences, in DAVIS layout."""
  shared = Path(os.environ.get("VOSJAX_SHARED", Path(__file__).resolve().parents[2] / "shared"))
  source = shared / "data" / "davis2016"
  if not source.is_dir():
    pytest.fail(f"shared DAVIS-2016 data {source} is missing (see ../shared/data/SOURCES.md)")
  root = tmp_path_factory.mktemp("davis")
  for sequence in SEQUENCES:
    for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
      folder = root / kind / "480p" / sequence
      folder.mkdir(parents=True)
      for t in range(NUM_FRAMES):
        shutil.copy(source / kind / "480p" / sequence / f"{t:05d}.{ext}", folder)
  return root


def davis_config(root, cache):
  from configs import davis2016  # pylint: disable=g-import-not-at-top
  config = davis2016.get_config()
  config.data.root = str(root)
  config.data.resolution = (32, 56)
  config.data.flow_cache_dir = str(cache)
  model_keys = {k: v for k, v in TINY_OVERRIDES.items() if k.startswith(("model.", "optimizer."))}
  for key, value in {**model_keys, "batch_size": 4, "num_train_steps": 2, "log_every_steps": 1,
                     "checkpoint_every_steps": 2, "num_eval_videos_to_write": 1}.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def test_training_writes_and_scores_masks_of_every_frame(tiny_davis, tmp_path):
  from vosjax import evaluate  # pylint: disable=g-import-not-at-top
  from vosjax import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "work"
  result = train.train_and_evaluate(davis_config(tiny_davis, tmp_path / "flows"), str(workdir))
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
  assert evaluate.main(["--protocol", "davis2016", "--gt", str(tiny_davis), "--results",
                        str(workdir / "davis_results"), "--output", str(out), "--workers",
                        "1"]) == 0
  with open(out / "per-sequence_results.csv") as f:
    rows = {row["Sequence"]: row for row in csv.DictReader(f)}
  for sequence, scores in metrics["per_sequence"].items():
    sequence_row = rows[f"{sequence}_1"]
    assert float(sequence_row["J-Mean"]) == pytest.approx(scores["J"], abs=5e-4)
    assert float(sequence_row["F-Mean"]) == pytest.approx(scores["F"], abs=5e-4)
  assert (workdir / "davis_eval" / "model" / "global_results.csv").read_text() == (
      out / "global_results.csv").read_text()

  # --mode eval restores the checkpoint and reproduces the scores.
  again = train.evaluate_checkpoint(davis_config(tiny_davis, tmp_path / "flows"), str(workdir))
  assert again["J-Mean"] == pytest.approx(metrics["J-Mean"])
  assert again["baseline_J-Mean"] == pytest.approx(metrics["baseline_J-Mean"])


def test_evaluation_sequences_are_the_val_list_with_frames(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vosjax.evaluation import davis_flows as davis_validation  # pylint: disable=g-import-not-at-top
  # A train + val root: "bear" is a training sequence, "cows" a val one without frames.
  for sequence, has_frames in (("bear", True), ("blackswan", True), ("camel", True),
                               ("cows", False)):
    (tmp_path / "Annotations" / "480p" / sequence).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(
        tmp_path / "Annotations" / "480p" / sequence / "00000.png")
    if has_frames:
      (tmp_path / "JPEGImages" / "480p" / sequence).mkdir(parents=True)
      Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(
          tmp_path / "JPEGImages" / "480p" / sequence / "00000.jpg")
  data = ml_collections.ConfigDict({"root": str(tmp_path), "sequences": None})
  with pytest.warns(UserWarning, match="cows"):
    assert davis_validation.evaluation_sequences(data) == ["bear", "blackswan", "camel"]

  (tmp_path / "ImageSets" / "480p").mkdir(parents=True)
  (tmp_path / "ImageSets" / "480p" / "val.txt").write_text("".join(
      f"/JPEGImages/480p/{s}/00000.jpg /Annotations/480p/{s}/00000.png\n"
      for s in ("camel", "blackswan", "cows")))
  with pytest.warns(UserWarning, match="cows"):
    assert davis_validation.evaluation_sequences(data) == ["blackswan", "camel"]
  data.sequences = ("bear",)  # an explicit list wins
  assert davis_validation.evaluation_sequences(data) == ["bear"]

  (tmp_path / "ImageSets" / "480p" / "val.txt").write_text(
      "/JPEGImages/480p/cows/00000.jpg /Annotations/480p/cows/00000.png\n")
  data.sequences = None
  with pytest.warns(UserWarning, match="cows"), pytest.raises(ValueError, match="val.txt"):
    davis_validation.evaluation_sequences(data)
