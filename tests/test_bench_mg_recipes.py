"""`python -m vosjax.bench mg_recipes`: export the flows, train from them, score against the
baseline."""

import json
import os

import numpy as np
import pytest

from helpers.environment import REPO
from helpers.tiny_configs import TINY_SYNTHETIC, tiny_config
from vosjax import train
from vosjax.benchmarks import _config_file as config_file
from vosjax.evaluation import baselines
from vosjax.evaluation import videos as validation
from vosjax.benchmarks import mg_recipes
from vosjax.data import pipeline


def test_export_then_train_from_arrays(tiny_synthetic_dir, tmp_path):
  overrides = [
    f"data.tfds_name={TINY_SYNTHETIC}",
    f"data.data_dir={tiny_synthetic_dir}",
    "data.resolution=(32, 32)",
    "batch_size=2",
    "eval_batch_size=2",
  ]
  flags = ["--config", os.path.join(REPO, "configs/demo.py")]
  for item in overrides:
    flags += ["--set", item]
  arrays = str(tmp_path / "arrays")
  assert mg_recipes.main(flags + ["--export", arrays]) == 0
  with np.load(os.path.join(arrays, "validation.npz")) as data:
    exported = {k: data[k] for k in data.files}
  # The exported validation videos are the pipeline's, all of them, in order.
  config = config_file.load_config(flags[1], overrides)
  videos = {"segmentations": [], "forward_flow": [], "backward_flow": []}
  for batch in pipeline.make_eval_iterator(config):
    for key, values in videos.items():
      values.append(np.asarray(batch[key])[np.asarray(batch["valid"], bool)])
  ids, forward, backward = (np.concatenate(v) for v in videos.values())
  ids = ids[..., 0] if ids.ndim == 5 else ids
  assert exported["ids"].shape == ids.shape == (4, 8, 32, 32)
  np.testing.assert_array_equal(exported["ids"], ids)
  np.testing.assert_allclose(exported["forward"], forward, rtol=1e-3, atol=1e-4)

  out = str(tmp_path / "records.json")
  assert (
    mg_recipes.main(
      flags + ["--arrays", arrays, "--steps", "4", "--eval_every", "2", "--json", out]
    )
    == 0
  )
  with open(out) as f:
    records = json.load(f)["records"]
  assert [r["step"] for r in records] == [2, 4]
  baseline = validation.foreground_j(
    ids, baselines.median_flow_foreground(forward, backward)
  ).mean()
  for record in records:
    assert abs(record["baseline_fg_j"] - baseline) < 1e-3
    assert 0.0 <= record["fg_j"] <= 1.0 and 0.0 <= record["oracle_fg_j"] <= 1.0
    assert np.isfinite(record["reconstruction"])
  assert records[1]["train_seconds"] > records[0]["train_seconds"] > 0


def test_override_of_an_unknown_key_names_it():
  with pytest.raises(ValueError, match="model.no_such_key"):
    config_file.load_config(os.path.join(REPO, "configs/demo.py"), ["model.no_such_key=1"])


def test_non_finite_steps_stop_the_benchmark_with_the_loops_error():
  """NaN training flows reach the loss with the raw flow encoding (rgb would turn NaN into
  black)."""
  config = tiny_config("unused: the arrays are given", **{"model.flow_encoding": "raw"})
  rng = np.random.default_rng(0)
  videos = {
    "forward": rng.normal(size=(2, 4, 32, 32, 2)).astype(np.float16),
    "backward": rng.normal(size=(2, 4, 32, 32, 2)).astype(np.float16),
    "ids": rng.integers(0, 3, size=(2, 4, 32, 32)).astype(np.uint8),
  }
  nan_videos = dict(videos, forward=np.full_like(videos["forward"], np.nan))
  logged = []
  with pytest.raises(
    train.NonFiniteLossError,
    match=r"at step 1 and 2 later step\(s\) up to 3 \(loss at step 3: nan\)",
  ):
    mg_recipes.run(config, nan_videos, videos, steps=4, eval_every=3, log=logged.append)
  assert not logged  # stopped at the first evaluation, before scoring
