"""Shared fixtures: tiny datasets built for real once per test session, the configs of configs/
trained as tiny runs, the 8-device reference run. Settings and helpers that test modules import
live in tests/helpers/ (tiny overrides, the child-process environment, training harnesses).

Compiled programs are shared: this process and every child python read and fill one persistent,
content-addressed JAX compilation cache (`COMPILATION_CACHE`). Most test time is XLA compilation
of the same small programs (the tiny train step, its evaluation) in many runs; from the cache a
run loads them in a fraction of the time, within a session and between sessions.
"""

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import real_data
from helpers.environment import COMPILATION_CACHE_SETTINGS, REPO
from helpers.tiny_configs import (
  CONFIG_OVERRIDES,
  DAVIS2017_DIR,
  DAVIS2017_QUALITY,
  DAVIS2017_SIZE,
  DAVIS_DIR,
  DAVIS_NUM_FRAMES,
  DAVIS_SEQUENCES,
  FLOW_CACHE,
  TFDS_DIR,
  TINY_SYNTHETIC,
  load_config,
  set_overrides,
)

# configs/ is not an installed package; tests import it from the checkout.
if REPO not in sys.path:
  sys.path.insert(0, REPO)
# libtpu is installed (test extra) for compiling to TPU topologies; this host runs on its CPU: JAX
# must not look for a TPU to run on (metadata queries, the TPU lock file), here or in a child.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
for _name, _value in COMPILATION_CACHE_SETTINGS.items():
  os.environ.setdefault(_name, _value)  # for the children; a value set by the caller wins
import jax  # noqa: E402  (after the cache settings, which JAX reads at import)

for _name in COMPILATION_CACHE_SETTINGS:  # and for this process, before its first compilation
  _option = _name.lower()
  jax.config.update(_option, type(getattr(jax.config, _option))(os.environ[_name]))


@pytest.fixture(scope="session")
def tiny_synthetic_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding `TINY_SYNTHETIC` (8 train / 4 validation videos, 8 frames, 32x32)."""
  from vosjax.data import movi  # pylint: disable=g-import-not-at-top

  data_dir = str(tmp_path_factory.mktemp("tfds_tiny"))
  data_config = movi.default_data_config()
  data_config.tfds_name = TINY_SYNTHETIC
  data_config.data_dir = data_dir
  movi.get_builder(data_config)  # builds it
  return data_dir


@pytest.fixture(scope="session")
def tiny_davis_dir(tmp_path_factory) -> Path:
  """The first `DAVIS_NUM_FRAMES` frames and annotations of two real DAVIS-2016 sequences, in
  DAVIS layout (`JPEGImages/480p`, `Annotations/480p`; 854x480 frames, 0/255 grayscale masks).
  Skipped without the real data (`helpers.real_data`)."""
  source = real_data.davis2016_root()
  root = tmp_path_factory.mktemp("davis")
  for sequence in DAVIS_SEQUENCES:
    for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
      folder = root / kind / "480p" / sequence
      folder.mkdir(parents=True)
      for t in range(DAVIS_NUM_FRAMES):
        shutil.copy(source / kind / "480p" / sequence / f"{t:05d}.{ext}", folder)
  return root


@pytest.fixture(scope="session")
def tiny_davis2017_dir(tmp_path_factory, tiny_davis_dir) -> Path:
  """`tiny_davis_dir` in the layout of DAVIS-2017's unsupervised release, at half size:
  `JPEGImages/240p` and `Annotations_unsupervised/240p`, the masks indexed PNGs with object id 1
  (the DAVIS-2017 protocols read 255 as void, so the 0/255 DAVIS-2016 masks are re-encoded)."""
  from vosjax.data import video as video_io  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("davis2017")
  for sequence in DAVIS_SEQUENCES:
    frames = root / "JPEGImages" / DAVIS2017_QUALITY / sequence
    frames.mkdir(parents=True)
    for path in sorted((tiny_davis_dir / "JPEGImages" / "480p" / sequence).glob("*.jpg")):
      with Image.open(path) as image:
        image.resize(DAVIS2017_SIZE, Image.BILINEAR).save(frames / path.name, quality=95)
    for path in sorted((tiny_davis_dir / "Annotations" / "480p" / sequence).glob("*.png")):
      with Image.open(path) as image:
        mask = np.asarray(image.resize(DAVIS2017_SIZE, Image.NEAREST)) > 0
      video_io.write_indexed_png(
        root / "Annotations_unsupervised" / DAVIS2017_QUALITY / sequence / path.name,
        mask.astype(np.uint8),
      )
  return root


@pytest.fixture(scope="session")
def eight_device_run(tiny_synthetic_dir, tmp_path_factory):
  """The tiny demo run (`helpers.tiny_configs.tiny_config` with LAYOUT_OVERRIDES, 4 steps) on
  1 process x 8 fake CPU devices: a `helpers.training_runs.BackgroundTraining` started at first
  use, the reference of the device-layout tests (test_train.py, test_train_multihost.py). Its
  workdir holds checkpoints 2 and 4; a test that trains on copies it first."""
  from helpers.tiny_configs import LAYOUT_OVERRIDES  # pylint: disable=g-import-not-at-top
  from helpers.training_runs import BackgroundTraining  # pylint: disable=g-import-not-at-top

  folder = tmp_path_factory.mktemp("eight_devices")
  run = BackgroundTraining(
    8, tiny_synthetic_dir, folder / "work", folder / "params.npz", **LAYOUT_OVERRIDES
  )
  yield run
  run.kill()


@pytest.fixture(scope="session")
def tiny_flow_cache(tmp_path_factory) -> Path:
  """One optical-flow cache for the session (keys name the frames' root, so tests share flows)."""
  return tmp_path_factory.mktemp("flows")


# ---------------------------------------------------------------- configs/ as tiny runs --
# Placeholder in CONFIG_OVERRIDES -> the session fixture that replaces it.
_PLACEHOLDER_FIXTURES = {
  TFDS_DIR: "tiny_synthetic_dir",
  DAVIS_DIR: "tiny_davis_dir",
  DAVIS2017_DIR: "tiny_davis2017_dir",
  FLOW_CACHE: "tiny_flow_cache",
}


def tiny_config_of(name: str, request):
  """configs/<name> with CONFIG_OVERRIDES[name], its placeholders replaced by the session's tiny
  data (only the fixtures it names are built)."""
  if name not in CONFIG_OVERRIDES:
    pytest.fail(
      f"configs/{name} has no tiny overrides: add an entry to CONFIG_OVERRIDES in "
      "tests/helpers/tiny_configs.py so that it trains 2 steps and evaluates on tiny data"
    )
  resolved = {}
  for key, value in CONFIG_OVERRIDES[name].items():
    if isinstance(value, str) and value in _PLACEHOLDER_FIXTURES:
      value = str(request.getfixturevalue(_PLACEHOLDER_FIXTURES[value]))
    resolved[key] = value
  return set_overrides(load_config(name), resolved)


@pytest.fixture(scope="session")
def config_run(request, tmp_path_factory):
  """`config_run(name)` -> (config, workdir Path, TrainResult): configs/<name> trained with its tiny
  overrides by `vosjax.train.train_and_evaluate`, once per session (tests that check more of the
  same run share it; a test that changes the workdir copies it first)."""
  runs = {}

  def run(name: str):
    if name not in runs:
      from vosjax import train  # pylint: disable=g-import-not-at-top

      config = tiny_config_of(name, request)
      workdir = tmp_path_factory.mktemp(f"run_{Path(name).stem}") / "work"
      runs[name] = (config, workdir, train.train_and_evaluate(config, str(workdir)))
    return runs[name]

  return run
