"""Tiny settings: the tiny datasets' names and layout, the overrides that turn each method and each
config of configs/ into a seconds-long run, and the tiny configs several test modules train."""

import importlib.util
from pathlib import Path

from helpers.environment import REPO

TINY_SYNTHETIC = "vosjax_synthetic/32x32_f8_o2-4_n8-4_s1"
DAVIS_SEQUENCES = ("blackswan", "camel")
DAVIS_NUM_FRAMES = 6
DAVIS2017_QUALITY, DAVIS2017_SIZE = "240p", (427, 240)  # (W, H): the 480p frames halved


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
# Placeholders in CONFIG_OVERRIDES, replaced by the session's tiny data (tests/conftest.py's
# `config_run`, `tests/test_configs.py`).
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


def load_config(name: str):
  """`get_config()` of configs/<name> (a file name, e.g. "demo.py")."""
  spec = importlib.util.spec_from_file_location(f"configs.{Path(name).stem}", CONFIGS / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_config(data_dir, **overrides):
  """configs/demo.py (Motion Grouping) with TINY_OVERRIDES and `overrides`, reading `data_dir`."""
  from configs import demo  # pylint: disable=g-import-not-at-top

  config = demo.get_config()
  config.data.data_dir = data_dir
  return set_overrides(config, {**TINY_OVERRIDES, **overrides})


# The device-layout comparisons train with Adam's epsilon at 1e-3 instead of 1e-8. With 1e-8, Adam
# divides a gradient by its own magnitude, so parameters whose true gradient is ~0 (a conv bias that
# the InstanceNorm after it subtracts again, the alpha bias that the softmax over slots cancels)
# move by +-lr depending on the sign of float noise, which differs between reduction orders. A
# larger epsilon keeps such noise at noise size; every parameter is then compared, none excluded.
# The absolute tolerance is 2e-6: convolution kernel gradients are sums over the per-device batch in
# blocks (vosjax.models.convolution), so 1 and 8 devices sum in different orders; after the toy
# run's steps one decoder kernel entry of 3200 differed by 1.5e-6 (value 2.4e-3).
LAYOUT_OVERRIDES = {"optimizer.eps": 1e-3}


def tiny_betrayed_config(data_dir: str):
  """configs/movi_e.py (Betrayed by Attention) with TINY_BETRAYED on a 32x32 synthetic set."""
  import jax  # pylint: disable=g-import-not-at-top

  config = load_config("movi_e.py")
  config.data.tfds_name = "vosjax_synthetic/32x32_f6_o2-3_n4-2"
  config.data.data_dir = data_dir
  config.data.resolution = (32, 32)
  config.data.shuffle_buffer = 4
  config.model.train_resolution = (32, 32)  # 4 x 4 tokens of 8 px
  config.model.inference_resolution = (32, 32)
  set_overrides(config, TINY_BETRAYED)  # a tiny random backbone, loss counts for 16 tokens
  config.batch_size = config.eval_batch_size = jax.device_count()
  config.num_train_steps = 3
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  config.num_eval_videos_to_write = 1
  return config


# The clip length and resolution of `tiny_smtc_config`.
SMTC_T, SMTC_RES = 3, 32


def tiny_smtc_config():
  """SMTC's default config with a 1-block 32-wide random ViT, 4 x 3 slots, 3-frame 32x32 clips."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from vosjax.methods import smtc  # pylint: disable=g-import-not-at-top

  T, RES = SMTC_T, SMTC_RES
  config = smtc.default_config()
  config.data = ml_collections.ConfigDict({"resolution": (RES, RES), "clip_length": T})
  config.backbone.random_init = True
  config.backbone.arch_overrides.embed_dim = 32
  config.backbone.arch_overrides.depth = 1
  config.backbone.arch_overrides.num_heads = 2
  config.model.num_semantic_slots, config.model.num_instances = 4, 3
  config.model.train_iterations, config.model.inference_iterations = 2, 3
  config.model.correlation_size = (RES // 16, RES // 16)
  config.model.inference_resolution = (RES, RES)
  config.optimizer.encoder_switch_step = 1
  config.optimizer.learning_rate, config.optimizer.final_learning_rate = 1e-2, 1e-3
  return config
