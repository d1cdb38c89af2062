"""The official SMTC checkpoint (shvdiwnkozbw/SMTC) as vosjax parameters.

The official `src/train.py` saves, every 500 iterations, `{"iteration", "model_state_dict",
"optimizer_state_dict", "loss"}` with `model_state_dict = model_without_ddp.state_dict()` (no
`module.` prefix; one is stripped anyway), and `src/eval_multi.py` loads `checkpoint[
"model_state_dict"]` with `load_state_dict` (strict); the released ViT-S/16 model (README,
"Pretrained Model") is loaded that way. Only the STUDENT is saved: the EMA teacher, the optimizer
state (AdamW over 4 groups) and the iteration are not model parameters and are not imported.
`model_state_dict` is the `state_dict()` of `src/model/model_twostage.py::SlotAttentionAutoEncoder`
(no buffers):

  encoder.*                   the fine-tuned DINO ViT-S/16 (`vit_small(16)`, DINO names: cls_token,
                              pos_embed [1, 197, 384], patch_embed.proj, blocks.{0..11}.{norm1,
                              attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm; its `head` is an
                              Identity)                          -> params["encoder"] (trained too)
  transport_proj              Conv1d(256, 384, kernel 1) [384, 256, 1]
                                                                 -> head/fusion/transport_proj
  slot_attention.slots_mu     [1, S, 1, 384]                     -> head/slot_attention/slots_mu
  slot_attention.slots_sigma  [1, S, 1, 384] (log std)           -> head/slot_attention/slots_sigma
  slot_attention.norm_input, norm_slots, norm_pre_ff (LayerNorm)  -> norm_inputs, norm_slots,
  norm_mlp slot_attention.project_q, project_k, project_v (Linear, bias)   -> project_q, project_k,
  project_v slot_attention.mlp.0, mlp.2 (Linear 384-384-384)               -> mlp_hidden, mlp_out
  mlp_slot.0, mlp_slot.2      Linear(384, 768), Linear(768, 384) -> head/mlp_slot/hidden, out

The map follows the params template (the ViT's depth and widths, S from the config), so a narrower
model of the same layout imports too. Not in the weights, so set in the config: the number of
instances per semantic (`config.model.num_instances`; `--num_instances`, 4 released), the
iterations (`config.model.inference_iterations`, 5 in `eval_multi.sh`), the ViT's head count (6 for
ViT-S; only `backbone.arch_overrides` can change it) and the correlation grid's side lengths (only
their product, the Conv1d's 256 input channels, is checked; official 16 x 16).

Backbone: the encoder is part of the trained params, so with `config.init.checkpoint` set
`make_model` reads no DINO weights (`initial_backbone`): importing needs neither the DINO file nor a
download.

Teacher: vosjax's EMA teacher (`init_extra_state`) starts as a copy of the imported params, encoder
included, when training starts from the checkpoint; the official training starts its teacher as a
copy of the student as well, but the official code has no path that resumes from a checkpoint, and
its teacher's encoder is then DINO's initialisation (vosjax's EMA never moves the teacher's
encoder, so it stays the imported, fine-tuned one).
"""

from __future__ import annotations

import logging
from typing import Any

import ml_collections
import numpy as np

from vosjax.methods import vit_video
from vosjax.models import pretrained
from vosjax.models import state_dicts
from vosjax.models.state_dicts import CheckpointError
from vosjax.models.state_dicts import CONV
from vosjax.models.state_dicts import CONV1D_1X1
from vosjax.models.state_dicts import COPY
from vosjax.models.state_dicts import LINEAR

ENCODER_PREFIX = "encoder."
SOURCE = "the SMTC model_state_dict"


def _dense(official: str, path: tuple[str, ...]) -> dict:
  return {
    f"{official}.weight": (path + ("kernel",), LINEAR),
    f"{official}.bias": (path + ("bias",), COPY),
  }


def _norm(official: str, path: tuple[str, ...]) -> dict:
  return {
    f"{official}.weight": (path + ("scale",), COPY),
    f"{official}.bias": (path + ("bias",), COPY),
  }


def encoder_names(depth: int) -> dict[str, tuple[tuple[str, ...], str]]:
  """Official `encoder.*` name -> (vosjax params path, layout) for a DINO ViT of `depth` blocks."""
  encoder = ("encoder",)
  names = {
    "encoder.cls_token": (encoder + ("cls_token",), COPY),
    "encoder.pos_embed": (encoder + ("pos_embed",), COPY),
    "encoder.patch_embed.proj.weight": (encoder + ("patch_embed", "kernel"), CONV),
    "encoder.patch_embed.proj.bias": (encoder + ("patch_embed", "bias"), COPY),
  }
  names.update(_norm("encoder.norm", encoder + ("norm",)))
  for i in range(depth):
    block = encoder + (f"blocks_{i}",)
    names.update(_norm(f"encoder.blocks.{i}.norm1", block + ("norm1",)))
    names.update(_norm(f"encoder.blocks.{i}.norm2", block + ("norm2",)))
    for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
      names.update(_dense(f"encoder.blocks.{i}.{layer}", block + tuple(layer.split("."))))
  return names


def head_names() -> dict[str, tuple[tuple[str, ...], str]]:
  """Official name -> (vosjax params path, layout) of everything but the encoder."""
  head = ("head",)
  names = {
    "transport_proj.weight": (head + ("fusion", "transport_proj", "kernel"), CONV1D_1X1),
    "transport_proj.bias": (head + ("fusion", "transport_proj", "bias"), COPY),
  }
  names.update(_dense("mlp_slot.0", head + ("mlp_slot", "hidden")))
  names.update(_dense("mlp_slot.2", head + ("mlp_slot", "out")))
  slots = head + ("slot_attention",)
  for gaussian in ("slots_mu", "slots_sigma"):
    names[f"slot_attention.{gaussian}"] = (slots + (gaussian,), COPY)
  for official, ours in (
    ("norm_input", "norm_inputs"),
    ("norm_slots", "norm_slots"),
    ("norm_pre_ff", "norm_mlp"),
  ):
    names.update(_norm(f"slot_attention.{official}", slots + (ours,)))
  for projection in ("project_q", "project_k", "project_v"):
    names.update(_dense(f"slot_attention.{projection}", slots + (projection,)))
  names.update(_dense("slot_attention.mlp.0", slots + ("mlp_hidden",)))
  names.update(_dense("slot_attention.mlp.2", slots + ("mlp_out",)))
  return names


def official_names(params: Any) -> dict[str, tuple[tuple[str, ...], str]]:
  """The whole map for the params template {"encoder": ViT params, "head": SMTC head params}."""
  if set(params) != {"encoder", "head"}:
    raise CheckpointError(f"SMTC params must be {{'encoder', 'head'}}, got {sorted(params)}")
  depth = sum(1 for name in params["encoder"] if name.startswith("blocks_"))
  return {**encoder_names(depth), **head_names()}


def import_params(
  state_dict: dict[str, np.ndarray], params: Any, config: ml_collections.ConfigDict
) -> Any:
  """`interface.ImportsCheckpoints.import_params`: the official student, encoder included.

  Raises:
    CheckpointError listing every missing, unexpected and wrongly shaped tensor by its official
    name.
  """
  del config  # everything the weights fix is in the template's shapes
  return state_dicts.import_tensors(state_dict, official_names(params), params, source=SOURCE)


def initial_backbone(config: ml_collections.ConfigDict):
  """(ViT module, initial encoder params) for `make_model`.

  `vit_video.load_backbone(config.backbone)` (the DINO weights), except with
  `config.init.checkpoint` set (an official file or a vosjax workdir): the encoder's params then
  come from that checkpoint, and the initialisation is only traced for its shapes
  (`train.create_train_state`), so the initial params are a random placeholder of the configured
  architecture and no DINO file is read or downloaded.
  """
  if not config.init.checkpoint:
    return vit_video.load_backbone(config.backbone)
  arch = pretrained.resolve_architecture(config.backbone.name).replace(
    **vit_video.arch_overrides(config.backbone)
  )
  logging.info(
    "SMTC: the encoder comes from config.init.checkpoint=%s; the %s weights are not read.",
    config.init.checkpoint,
    config.backbone.name,
  )
  return pretrained.backbone_module(config.backbone, arch), pretrained.random_params(arch, seed=0)
