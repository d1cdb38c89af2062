"""Command: convert an official PyTorch checkpoint once, so that later runs need no torch.

  python -m vosjax.convert IN.pth OUT.safetensors --config CONFIG [--config.key=value ...]

Reads IN (needs torch; the state dict is unwrapped from `model_state_dict` / `state_dict` /
`module.` as `vosjax.models.state_dicts.read_state_dict` describes), checks that every tensor
imports into the model of CONFIG (`vosjax.methods.checkpoints`: strict, any missing, unexpected or
wrongly shaped tensor is an error listing them), and writes the tensors, under their official names,
as float32
`.safetensors` or `.npz` (by OUT's suffix). Pass OUT as `--config.init.checkpoint=OUT` to training,
`--mode eval` or `vosjax.segment`: reading it needs NumPy only. The optimizer state and the training
metadata of IN are not written.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config of the model the checkpoint is for (configs/*.py).", lock_config=True
)
flags.mark_flags_as_required(["config"])


def convert(source: str, output: str, config) -> int:
  """Checks that `source` imports into `config`'s model, then writes its tensors to `output`;
  returns the number of tensors written."""
  import jax  # pylint: disable=g-import-not-at-top
  from vosjax import methods  # pylint: disable=g-import-not-at-top
  from vosjax.methods import checkpoints  # pylint: disable=g-import-not-at-top
  from vosjax.models import state_dicts  # pylint: disable=g-import-not-at-top

  if not output.endswith(state_dicts.NUMPY_SUFFIXES):
    raise ValueError(f"{output}: the output must end in {' or '.join(state_dicts.NUMPY_SUFFIXES)}")
  config = config.copy_and_resolve_references()
  config.init.checkpoint = source  # e.g. Betrayed by Attention reads its backbone from it
  method = methods.load_method(config)
  model = method.make_model(config)
  batch = method.example_batch(config)
  template = jax.eval_shape(
    lambda rng: method.init_params(model, config, rng, batch), jax.random.key(0)
  )
  checkpoints.import_checkpoint(method, config, template, source)
  state = state_dicts.read_state_dict(source)
  state_dicts.write_state_dict(output, state)
  return len(state)


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("usage: python -m vosjax.convert IN OUT --config CONFIG")
  _, source, output = argv
  try:
    count = convert(source, output, _CONFIG.value)
  except (ValueError, FileNotFoundError, ImportError) as error:  # CheckpointError included
    sys.exit(f"vosjax.convert: error: {error}")
  print(
    f"Wrote {count} tensors of {source} to {output} (they import into config.method="
    f"{_CONFIG.value.method!r})."
  )


if __name__ == "__main__":
  app.run(main)
