"""The loop settings every config has; each method's `default_config` adds its own sections.

One place for the loop's defaults: a method passes only the values it changes.
"""

from __future__ import annotations

import os

import ml_collections

LOOP_DEFAULTS = dict(
  seed=42,
  batch_size=32,  # global, over every device of every host
  eval_batch_size=8,
  num_train_steps=1000,
  log_every_steps=100,
  eval_every_steps=0,  # 0: evaluate only at the end
  # Evaluations during training score only the first videos of the split (0: all; MOVi-format
  # data): a cheap learning curve. The final evaluation always scores the whole split.
  periodic_eval_videos=0,
  checkpoint_every_steps=1000,
  max_to_keep=3,
  num_eval_videos_to_write=4,  # overlay GIFs/PNGs written by the evaluation
)


# `config.eval.mode`: "vosjax", the library's own inference and evaluation choices (documented as
# improvements where they differ), or "official", every detail of the authors' evaluation code (the
# methods' `OFFICIAL_EVALUATION`, README "Reproducing the papers").
EVAL_MODES = ("vosjax", "official")


def eval_mode(config: ml_collections.ConfigDict) -> str:
  """`config.eval.mode` ("vosjax" where the config has no eval section); an unknown one is an
  error naming the choices."""
  section = config.get("eval")
  mode = section.get("mode", "vosjax") if section is not None else "vosjax"
  if mode not in EVAL_MODES:
    raise ValueError(f"unknown config.eval.mode {mode!r}; choose one of {EVAL_MODES}")
  return mode


def is_official(config: ml_collections.ConfigDict) -> bool:
  """Whether `config.eval.mode` is "official"."""
  return eval_mode(config) == "official"


def base_config(method: str, **values) -> ml_collections.ConfigDict:
  """`LOOP_DEFAULTS` plus `method`, with `values` replacing defaults (unknown keys are an error)."""
  unknown = set(values) - set(LOOP_DEFAULTS)
  if unknown:
    raise KeyError(
      f"base_config: unknown keys {sorted(unknown)}; the loop's keys are {sorted(LOOP_DEFAULTS)}."
    )
  config = ml_collections.ConfigDict(dict(LOOP_DEFAULTS, method=method, **values))
  # Where the parameters of a fresh run come from (training, `--mode eval` and `vosjax.segment`
  # without a checkpoint in the workdir): None, the method's initialisation; else an official
  # PyTorch checkpoint (.pth/.pt), its tensors as .safetensors/.npz (`python -m vosjax.convert`), or
  # a vosjax workdir / checkpoints folder. See `vosjax.methods.checkpoints`.
  config.init = ml_collections.ConfigDict()
  config.init.checkpoint = ml_collections.config_dict.placeholder(str)
  config.eval = ml_collections.ConfigDict()
  config.eval.mode = "vosjax"  # or "official" (EVAL_MODES)
  return config


def read_config_file(path: str, overrides=(), program: str = "vosjax") -> ml_collections.ConfigDict:
  """`get_config()` of the config file `path` with `--config.key=value` overrides, parsed as
  `python -m vosjax.main` parses them (ml_collections config_flags); any error is a ValueError
  naming the file and the overrides."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  file = str(path).split(":")[0]  # config_flags: FILE:ARGUMENT passes ARGUMENT to get_config
  if not os.path.isfile(file):
    raise ValueError(f"--config {path}: no such file (relative paths start at {os.getcwd()})")
  argv = [program, f"--config={path}", *overrides]
  values = flags.FlagValues()
  # sys_argv: the override flags are defined from the arguments given here, not from sys.argv.
  config_flags.DEFINE_config_file(
    "config", None, flag_values=values, lock_config=True, sys_argv=argv
  )
  try:
    values(argv)
    config = values.config
    getattr(config, "method", None)  # a file that fails to load fails here, not at first use
    return config
  except (flags.Error, OSError, AttributeError, KeyError, TypeError, ValueError) as err:
    raise ValueError(f"--config {path} {' '.join(overrides)}: {err}") from None
