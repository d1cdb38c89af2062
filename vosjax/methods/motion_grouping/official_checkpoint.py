"""The official Motion Grouping checkpoints (charigyang/motiongrouping) as vosjax parameters.

The official `src/train.py` saves
`{"iteration", "model_state_dict", "optimizer_state_dict", "loss"}`; its released
`models/ckpt_{davis,fbms,moca,segtrack}.pth` are such files. `model_state_dict` is the
`state_dict()` of `src/model.py::SlotAttentionAutoEncoder`; with the module names of that file:

  encoder_cnn                 Sequential over [64, MP, 128, MP, 256]: per width Conv5x5,
  InstanceNorm2d
                              (affine), ReLU, Conv5x5, InstanceNorm2d, ReLU; MaxPool2d between
                              widths. Indices: stage s starts at 7 s (conv 7s, norm 7s+1, conv 7s+3,
                              norm 7s+4).
  encoder_pos.proj            Linear(4, 256) of the position grid   -> encoder_pos/proj
  layer_norm                  LayerNorm(256)                        -> encoder_norm
  mlp.0, mlp.2                Linear(256, 256), ReLU, Linear        -> encoder_mlp/dense_1, dense_2
  slot_attention.             norm_input, norm_slots, norm_pre_ff   -> slot_attention/norm_inputs,
                                                                       norm_slots, norm_mlp
                              slots_embedding (nn.Embedding(K, D))  -> slot_init/queries
                              project_q, project_k, project_v       -> project_q, project_k,
                              project_v gru (GRUCell: weight_ih, weight_hh,   -> gru/input,
                              gru/hidden
                                bias_ih, bias_hh; gates r, z, n)
                              mlp.0, mlp.2                          -> mlp_hidden, mlp_out
  decoder_pos.proj            Linear(4, 256)                        -> decoder/pos_embed/proj
  decoder_cnn                 Sequential: 3 x [ConvTranspose2d(5, stride 2, pad 2, out pad 1),
                              InstanceNorm2d, ReLU] (indices 3i, 3i+1), Conv5x5 (9), InstanceNorm2d
                              (10), ReLU, Conv5x5 -> C + 1 (12)     -> decoder/upsample{i},
                                                                       decoder/conv, decoder/output

The position grids are plain attributes (not in the state dict) and InstanceNorm2d keeps no running
statistics. The map follows `config.model`'s widths, so a narrower model of the same layout imports
too; the official ones are 64-128-256, slot dim 256, decoder 64, 2 slots, 5 iterations (the number
of iterations and the flow encoding, RGB colour wheel for `--flow_to_rgb`, are not in the weights:
set them in the config; the input channels are, 3 for RGB).
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from vosjax.models import state_dicts
from vosjax.models.state_dicts import CheckpointError
from vosjax.models.state_dicts import CONV
from vosjax.models.state_dicts import CONV_TRANSPOSE
from vosjax.models.state_dicts import COPY
from vosjax.models.state_dicts import LINEAR

# Layers per encoder stage in `encoder_cnn` (conv, norm, relu, conv, norm, relu) plus the max-pool.
_STAGE_LAYERS = 7
# Layers per upsampling block in `decoder_cnn` (conv transpose, norm, relu).
_UPSAMPLE_LAYERS = 3


def _dense(torch_name: str, path: tuple[str, ...], bias: bool = True) -> dict:
  names = {f"{torch_name}.weight": (path + ("kernel",), LINEAR)}
  if bias:
    names[f"{torch_name}.bias"] = (path + ("bias",), COPY)
  return names


def _norm(torch_name: str, path: tuple[str, ...]) -> dict:
  return {
    f"{torch_name}.weight": (path + ("scale",), COPY),
    f"{torch_name}.bias": (path + ("bias",), COPY),
  }


def _conv(torch_name: str, path: tuple[str, ...], layout: str = CONV) -> dict:
  return {
    f"{torch_name}.weight": (path + ("kernel",), layout),
    f"{torch_name}.bias": (path + ("bias",), COPY),
  }


def official_names(
  model_config: ml_collections.ConfigDict,
) -> dict[str, tuple[tuple[str, ...], str]]:
  """Official tensor name -> (vosjax param path, layout) for `config.model`'s widths."""
  names = {}
  for stage in range(len(model_config.encoder_widths)):
    first = _STAGE_LAYERS * stage
    for conv, offset in ((1, 0), (2, 3)):
      block = ("encoder", f"stage{stage}_conv{conv}")
      names.update(_conv(f"encoder_cnn.{first + offset}", block + ("conv",)))
      names.update(_norm(f"encoder_cnn.{first + offset + 1}", block + ("norm",)))
  names.update(_dense("encoder_pos.proj", ("encoder_pos", "proj")))
  names.update(_norm("layer_norm", ("encoder_norm",)))
  names.update(_dense("mlp.0", ("encoder_mlp", "dense_1")))
  names.update(_dense("mlp.2", ("encoder_mlp", "dense_2")))

  slots = ("slot_attention",)
  names["slot_attention.slots_embedding.weight"] = (("slot_init", "queries"), COPY)
  for official, ours in (
    ("norm_input", "norm_inputs"),
    ("norm_slots", "norm_slots"),
    ("norm_pre_ff", "norm_mlp"),
  ):
    names.update(_norm(f"slot_attention.{official}", slots + (ours,)))
  for projection in ("project_q", "project_k", "project_v"):
    names.update(_dense(f"slot_attention.{projection}", slots + (projection,)))
  for official, ours in (("ih", "input"), ("hh", "hidden")):
    names[f"slot_attention.gru.weight_{official}"] = (slots + ("gru", ours, "kernel"), LINEAR)
    names[f"slot_attention.gru.bias_{official}"] = (slots + ("gru", ours, "bias"), COPY)
  names.update(_dense("slot_attention.mlp.0", slots + ("mlp_hidden",)))
  names.update(_dense("slot_attention.mlp.2", slots + ("mlp_out",)))

  names.update(_dense("decoder_pos.proj", ("decoder", "pos_embed", "proj")))
  num_upsample = len(model_config.decoder_transpose_widths)
  for i in range(num_upsample):
    block = ("decoder", f"upsample{i}")
    names.update(
      _conv(f"decoder_cnn.{_UPSAMPLE_LAYERS * i}", block + ("conv_transpose",), CONV_TRANSPOSE)
    )
    names.update(_norm(f"decoder_cnn.{_UPSAMPLE_LAYERS * i + 1}", block + ("norm",)))
  conv = _UPSAMPLE_LAYERS * num_upsample
  names.update(_conv(f"decoder_cnn.{conv}", ("decoder", "conv", "conv")))
  names.update(_norm(f"decoder_cnn.{conv + 1}", ("decoder", "conv", "norm")))
  names.update(_conv(f"decoder_cnn.{conv + 3}", ("decoder", "output", "conv")))
  return names


def import_params(
  state_dict: dict[str, np.ndarray], params: Any, config: ml_collections.ConfigDict
) -> Any:
  """`interface.ImportsCheckpoints.import_params` for the official model state dict."""
  if not config.model.decoder_instance_norm:
    raise CheckpointError(
      "the official decoder has InstanceNorm layers (their indices are part of "
      "the names); set config.model.decoder_instance_norm=True."
    )
  return state_dicts.import_tensors(
    state_dict, official_names(config.model), params, source="the Motion Grouping model_state_dict"
  )
