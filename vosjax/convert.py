"""Command: convert an official PyTorch checkpoint once, so that later runs need no torch.

  python -m vosjax.convert IN.pth OUT.safetensors --config CONFIG [--config.key=value ...]
  python -m vosjax.convert IN.pth OUT.npz --backbone NAME [--student]

A method's checkpoint (`--config`): reads IN (needs torch; the state dict is unwrapped from
`model_state_dict` / `state_dict` / `module.` as `vosjax.models.state_dicts.read_state_dict`
describes), checks that every tensor imports into the model of CONFIG (`vosjax.methods.checkpoints`:
strict, any missing, unexpected or wrongly shaped tensor is an error listing them), and writes the
tensors, under their official names, as float32 `.safetensors` or `.npz` (by OUT's suffix). Pass OUT
as `--config.init.checkpoint=OUT` to training, `--mode eval` or `vosjax.segment`: reading it needs
NumPy only. The optimizer state and the training metadata of IN are not written.

A DINO / DINOv2 backbone (`--backbone`, a name of `vosjax.models.pretrained.PRETRAINED_CHECKPOINTS`
or `vosjax.models.vit.VIT_ARCHITECTURES`): IN (.pth, .pt or .safetensors, DINO, timm or Hugging Face
names; full DINO training checkpoints give their teacher, or with `--student` their student) is
converted to the Flax params of that ViT and written as `.npz`, the file that
`--config.backbone.checkpoint=OUT` (or the backbone cache) reads without torch.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config of the model the checkpoint is for (configs/*.py).", lock_config=True
)
_BACKBONE = flags.DEFINE_string(
  "backbone", None, "Instead of --config: the DINO/DINOv2 architecture or checkpoint name of IN."
)
_STUDENT = flags.DEFINE_bool(
  "student",
  False,
  "--backbone, full DINO training checkpoints: convert the student (default: teacher).",
)


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


def convert_backbone(source: str, output: str, name: str, student: bool = False) -> int:
  """Converts the DINO/DINOv2 checkpoint `source` into the Flax params of the ViT `name` and writes
  them to `output` (.npz); returns the number of arrays written."""
  import flax  # pylint: disable=g-import-not-at-top
  from vosjax.models import pretrained  # pylint: disable=g-import-not-at-top

  if not output.endswith(".npz"):
    raise ValueError(f"{output}: a converted backbone is written as .npz")
  arch = pretrained.resolve_architecture(name)
  params = pretrained.load_params_file(source, arch, "student" if student else "teacher")
  pretrained.save_params(output, params, name)
  return len(flax.traverse_util.flatten_dict(params))


def main(argv):
  usage = (
    "usage: python -m vosjax.convert IN OUT --config CONFIG, or "
    "python -m vosjax.convert IN OUT.npz --backbone NAME [--student]"
  )
  if len(argv) != 3 or (_CONFIG.value is None) == (_BACKBONE.value is None):
    raise app.UsageError(usage)
  from vosjax.core import host_memory  # pylint: disable=g-import-not-at-top

  host_memory.reexec_with_huge_pages()  # process setup, before JAX is imported
  _, source, output = argv
  try:
    if _BACKBONE.value is not None:
      count = convert_backbone(source, output, _BACKBONE.value, _STUDENT.value)
      print(f"Wrote the {count} Flax arrays of {_BACKBONE.value} from {source} to {output}.")
    else:
      count = convert(source, output, _CONFIG.value)
      print(
        f"Wrote {count} tensors of {source} to {output} (they import into config.method="
        f"{_CONFIG.value.method!r})."
      )
  except (ValueError, FileNotFoundError, ImportError) as error:  # CheckpointError included
    sys.exit(f"vosjax.convert: error: {error}")


if __name__ == "__main__":
  app.run(main)
