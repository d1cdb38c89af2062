"""Shared fixtures and settings: tiny datasets built for real once per test session, the tiny
overrides that turn each config of configs/ into a seconds-long run, and the child-process
environment.

Compiled programs are shared: this process and every child python read and fill one persistent,
content-addressed JAX compilation cache (`COMPILATION_CACHE`). Most test time is XLA compilation
of the same small programs (the tiny train step, its evaluation) in many runs; from the cache a
run loads them in a fraction of the time, within a session and between sessions.
"""

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/ is not an installed package; tests import it from the checkout.
if REPO not in sys.path:
  sys.path.insert(0, REPO)
TINY_SYNTHETIC = "vosjax_synthetic/32x32_f8_o2-4_n8-4_s1"
# The persistent compilation cache: kept between sessions in the system temporary folder, bounded
# (least recently used entries evicted; the eviction's file lock also keeps concurrent test
# sessions from reading half-written entries). Every writer must bound it: JAX's eviction needs
# the access-time file that only a bounded cache writes beside each entry. Programs that compile
# faster than the threshold (eager single operations) are not worth a file.
COMPILATION_CACHE = os.path.join(tempfile.gettempdir(), "vosjax-test-jax-cache")
COMPILATION_CACHE_SETTINGS = {
  "JAX_COMPILATION_CACHE_DIR": COMPILATION_CACHE,
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2",
  "JAX_COMPILATION_CACHE_MAX_SIZE": str(1 << 30),  # bytes
}
# libtpu is installed (test extra) for compiling to TPU topologies; this host runs on its CPU: JAX
# must not look for a TPU to run on (metadata queries, the TPU lock file), here or in a child.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
for _name, _value in COMPILATION_CACHE_SETTINGS.items():
  os.environ.setdefault(_name, _value)  # for the children; a value set by the caller wins
import jax  # noqa: E402  (after the cache settings, which JAX reads at import)

for _name in COMPILATION_CACHE_SETTINGS:  # and for this process, before its first compilation
  _option = _name.lower()
  jax.config.update(_option, type(getattr(jax.config, _option))(os.environ[_name]))
# Real DAVIS-2016 frames and masks (../shared/data/SOURCES.md), beside the checkout unless
# VOSJAX_SHARED says otherwise.
SHARED = Path(os.environ.get("VOSJAX_SHARED", Path(REPO).parent / "shared"))
DAVIS_SEQUENCES = ("blackswan", "camel")
DAVIS_NUM_FRAMES = 6
PYTHON = sys.executable


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


def _davis2016_source() -> Path:
  source = SHARED / "data" / "davis2016"
  if not source.is_dir():
    pytest.fail(f"shared DAVIS-2016 data {source} is missing (see ../shared/data/SOURCES.md)")
  return source


@pytest.fixture(scope="session")
def tiny_davis_dir(tmp_path_factory) -> Path:
  """The first `DAVIS_NUM_FRAMES` frames and annotations of two real DAVIS-2016 sequences, in
  DAVIS layout (`JPEGImages/480p`, `Annotations/480p`; 854x480 frames, 0/255 grayscale masks)."""
  source = _davis2016_source()
  root = tmp_path_factory.mktemp("davis")
  for sequence in DAVIS_SEQUENCES:
    for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
      folder = root / kind / "480p" / sequence
      folder.mkdir(parents=True)
      for t in range(DAVIS_NUM_FRAMES):
        shutil.copy(source / kind / "480p" / sequence / f"{t:05d}.{ext}", folder)
  return root


DAVIS2017_QUALITY, DAVIS2017_SIZE = "240p", (427, 240)  # (W, H): the 480p frames halved


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
  """The tiny demo run (tests/test_train.py's `tiny_config` with LAYOUT_OVERRIDES, 4 steps) on
  1 process x 8 fake CPU devices: a `test_train.BackgroundTraining` started at first use, the
  reference of the device-layout tests (test_train.py, test_multihost.py). Its workdir holds
  checkpoints 2 and 4; a test that trains on copies it first."""
  from test_train import LAYOUT_OVERRIDES, BackgroundTraining  # pylint: disable=g-import-not-at-top

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


def subprocess_env(num_devices: int = 1) -> dict:
  """Environment for a child python that fakes `num_devices` CPU devices and finds the repo (it
  inherits the persistent compilation cache settings, `COMPILATION_CACHE_SETTINGS`)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def set_overrides(config, overrides: dict):
  """Sets dotted keys (`"model.slot_dim"`) of an ml_collections config; returns the config."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


# ---------------------------------------------------------------- tiny settings per config --
# Overrides that turn configs/demo.py into a seconds-long run on the tiny dataset.
TINY_OVERRIDES = {
  "data.tfds_name": TINY_SYNTHETIC,
  "data.resolution": (32, 32),
  "data.shuffle_buffer": 4,
  "data.num_shards": 2,  # the same global batches on 1 or 2 processes
  "batch_size": 8,
  "eval_batch_size": 8,
  "num_train_steps": 4,
  "log_every_steps": 2,
  "checkpoint_every_steps": 2,
  "num_eval_videos_to_write": 1,
  "model.encoder_widths": (8, 8, 16),
  "model.slot_dim": 16,
  "model.slot_mlp_hidden_size": 16,
  "model.decoder_transpose_widths": (8, 8, 8),
  "model.decoder_conv_width": 8,
  "model.num_iterations": 2,
  "optimizer.warmup_steps": 2,
  "optimizer.decay_steps": 2,
  # The official rate, which the device-layout and resume tolerances were set at (the demo
  # trains at 2e-3, which amplifies reduction-order noise in near-zero-gradient biases 4x).
  "optimizer.learning_rate": 5e-4,
}
# The narrow Motion Grouping model and schedule of TINY_OVERRIDES, without its data settings.
TINY_MOTION_GROUPING = {
  k: v for k, v in TINY_OVERRIDES.items() if k.startswith(("model.", "optimizer."))
}
# Betrayed by Attention with a tiny RANDOM backbone (DINO ViT-S/8 shrunk to one 32-wide block):
# no pretrained weights needed, numbers meaningless, every code path of the method runs.
TINY_BETRAYED = {
  "model.num_heads": 4,
  "backbone.random_init": True,
  "backbone.arch_overrides.embed_dim": 32,
  "backbone.arch_overrides.depth": 1,
  "backbone.arch_overrides.num_heads": 2,
  "loss.num_queries": 4,
  "loss.semantic_positives": 3,
  "loss.semantic_negatives": 6,
  "loss.motion_positives": 2,
  "loss.motion_negatives": 5,
  "optimizer.grad_clip_norm": 1.0,
}
# SMTC with a tiny RANDOM backbone (ViT-S/16 shrunk to three 32-wide blocks: the keys of the last
# block, SMTC's features, see the stochastic depth of block 1) and 4 x 3 slots; correlation_size is
# the token grid of 32x32 frames.
TINY_SMTC = {
  "backbone.random_init": True,
  "backbone.arch_overrides.embed_dim": 32,
  "backbone.arch_overrides.depth": 3,
  "backbone.arch_overrides.num_heads": 2,
  "model.num_semantic_slots": 4,
  "model.num_instances": 3,
  "model.train_iterations": 2,
  "model.inference_iterations": 3,
  "model.correlation_size": (2, 2),
  "model.inference_resolution": (32, 32),
  "optimizer.encoder_switch_step": 1,
}
# Placeholders in CONFIG_OVERRIDES, replaced by the session's tiny data (`tests/test_configs.py`).
TFDS_DIR, DAVIS_DIR, DAVIS2017_DIR, FLOW_CACHE = ("{tfds}", "{davis}", "{davis2017}", "{flows}")
# Every config of configs/ as a 2-step run plus its final evaluation on tiny data: file name ->
# overrides. `tests/test_configs.py` runs each; a new config fails there until it has an entry.
_TWO_STEPS = {
  "num_train_steps": 2,
  "log_every_steps": 1,
  "checkpoint_every_steps": 2,
  "num_eval_videos_to_write": 1,
}
_TINY_TFDS = {
  "data.tfds_name": TINY_SYNTHETIC,
  "data.data_dir": TFDS_DIR,
  "data.resolution": (32, 32),
  "data.shuffle_buffer": 4,
}
CONFIG_OVERRIDES = {
  "demo.py": {**TINY_OVERRIDES, "data.data_dir": TFDS_DIR, **_TWO_STEPS},
  # The demo's tiny model and batch: the same programs, compiled once (persistent cache).
  "motion_grouping.py": {
    **_TINY_TFDS,
    **TINY_MOTION_GROUPING,
    **_TWO_STEPS,
    "batch_size": 8,
    "eval_batch_size": 8,
  },
  "slot_attention.py": {
    **_TINY_TFDS,
    **_TWO_STEPS,
    "batch_size": 4,
    "eval_batch_size": 4,
    "model.num_slots": 3,
    "model.num_iterations": 2,
    "model.encoder_widths": (8, 8, 8, 8),
    "model.slot_dim": 16,
    "model.slot_mlp_hidden_size": 16,
    "model.decoder_width": 8,
    "optimizer.warmup_steps": 1,
  },
  "movi_e.py": {
    **_TINY_TFDS,
    **TINY_BETRAYED,
    **_TWO_STEPS,
    "batch_size": 2,
    "eval_batch_size": 2,
    "model.train_resolution": (32, 32),
    "model.inference_resolution": (32, 32),
  },
  "davis2016.py": {
    **TINY_MOTION_GROUPING,
    **_TWO_STEPS,
    "data.root": DAVIS_DIR,
    "data.resolution": (32, 56),
    "data.flow_cache_dir": FLOW_CACHE,
    "batch_size": 4,
  },
  "ytvis.py": {
    **TINY_BETRAYED,
    **_TWO_STEPS,
    "batch_size": 2,
    "data.root": DAVIS_DIR,
    "data.quality": "480p",
    "data.resolution": (32, 56),
    "model.inference_resolution": (32, 56),
    "data.eval_root": DAVIS2017_DIR,
    "data.eval_quality": DAVIS2017_QUALITY,
    "data.eval_chunk_frames": 3,
  },
  # SMTC on the tiny DAVIS folders (6-frame videos: the clips' stride shrinks below the official),
  # scored on the tiny DAVIS-2017 root like ytvis.py.
  "smtc_ytvos.py": {
    **TINY_SMTC,
    **_TWO_STEPS,
    "batch_size": 2,
    "data.root": DAVIS_DIR,
    "data.quality": "480p",
    "data.resolution": (32, 32),
    "data.eval_root": DAVIS2017_DIR,
    "data.eval_quality": DAVIS2017_QUALITY,
    "data.eval_chunk_frames": 4,
  },
  "smtc_davis.py": {
    **TINY_SMTC,
    **_TWO_STEPS,
    "batch_size": 2,
    "data.root": DAVIS_DIR,
    "data.resolution": (32, 32),
    "data.eval_root": DAVIS2017_DIR,
    "data.eval_quality": DAVIS2017_QUALITY,
    "data.eval_chunk_frames": 4,
  },
}


# ---------------------------------------------------------------- configs/ as tiny runs --
CONFIGS = Path(REPO) / "configs"
# Placeholder in CONFIG_OVERRIDES -> the session fixture that replaces it.
_PLACEHOLDER_FIXTURES = {
  TFDS_DIR: "tiny_synthetic_dir",
  DAVIS_DIR: "tiny_davis_dir",
  DAVIS2017_DIR: "tiny_davis2017_dir",
  FLOW_CACHE: "tiny_flow_cache",
}


def load_config(name: str):
  """`get_config()` of configs/<name> (a file name, e.g. "demo.py")."""
  spec = importlib.util.spec_from_file_location(f"configs.{Path(name).stem}", CONFIGS / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_config_of(name: str, request):
  """configs/<name> with CONFIG_OVERRIDES[name], its placeholders replaced by the session's tiny
  data (only the fixtures it names are built)."""
  if name not in CONFIG_OVERRIDES:
    pytest.fail(
      f"configs/{name} has no tiny overrides: add an entry to CONFIG_OVERRIDES in "
      "tests/conftest.py so that it trains 2 steps and evaluates on tiny data"
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
