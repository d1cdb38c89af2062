"""The official Betrayed-by-Attention checkpoint (shvdiwnkozbw/SSL-UVOS) as vosjax parameters.

The released `checkpoint_dino-s-8.pth` (README: "DINO-ViT-S/8 pretrained on YT-VOS") is a torch file
`{"iteration", "loss", "model_state_dict"}` (`src/train_RGB_cluster.py` also saves
"optimizer_state_dict"); `model_state_dict` is the `state_dict()` of `src/model/model_cluster.py::
AttEncoder`:

  encoder.*                   the DINO ViT-S/8 (`vit_small(8)`, DINO names: cls_token, pos_embed
                              [1, 785, 384], patch_embed.proj, blocks.{0..11}.{norm1, attn.qkv,
                              attn.proj, norm2, mlp.fc1, mlp.fc2}, norm). It REPLACES the frozen
                              backbone that `config.backbone` names: `make_model` reads it from
                              `config.init.checkpoint` (`backbone_params`) into
                              `BetrayedModel.backbone_params`, strictly, with
                              `vosjax.models.pretrained.convert_state_dict`.
  temporal_transformer.0.*    the one spatio-temporal block (`src/model/attention.py::Block`, num_t
  = 1):
                              norm1, attn.qkv (no bias), attn.proj, norm2, mlp.fc1, mlp.fc2 -> the
                              trained params norm1, qkv, proj, norm2, fc1, fc2 (`import_params`).

`AttEncoder` builds the block with 8 heads; the head count is not in the weights, so importing
checks `config.model.num_heads == 8` (another count would split q and k differently).
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from vosjax.models import pretrained
from vosjax.models import state_dicts
from vosjax.models import vit
from vosjax.models.state_dicts import CheckpointError
from vosjax.models.state_dicts import COPY
from vosjax.models.state_dicts import LINEAR

BACKBONE_PREFIX = "encoder."
BLOCK_PREFIX = "temporal_transformer.0."
OFFICIAL_NUM_HEADS = 8  # `AttEncoder`: Block(dim=384, num_heads=8, ...)


def block_names() -> dict[str, tuple[tuple[str, ...], str]]:
  """Official tensor name -> (vosjax block param path, layout)."""
  names = {f"{BLOCK_PREFIX}attn.qkv.weight": (("qkv", "kernel"), LINEAR)}
  for official, ours in (
    ("norm1", "norm1"),
    ("norm2", "norm2"),
    ("attn.proj", "proj"),
    ("mlp.fc1", "fc1"),
    ("mlp.fc2", "fc2"),
  ):
    is_norm = official.startswith("norm")
    names[f"{BLOCK_PREFIX}{official}.weight"] = (
      (ours, "scale" if is_norm else "kernel"),
      COPY if is_norm else LINEAR,
    )
    names[f"{BLOCK_PREFIX}{official}.bias"] = ((ours, "bias"), COPY)
  return names


def import_params(
  state_dict: dict[str, np.ndarray], params: Any, config: ml_collections.ConfigDict
) -> Any:
  """`interface.ImportsCheckpoints.import_params`: the block's params (the backbone tensors
  `encoder.*` are `make_model`'s, see `backbone_params`)."""
  if config.model.num_heads != OFFICIAL_NUM_HEADS:
    raise CheckpointError(
      f"the official block has {OFFICIAL_NUM_HEADS} heads; set "
      f"config.model.num_heads={OFFICIAL_NUM_HEADS} (got "
      f"{config.model.num_heads})."
    )
  return state_dicts.import_tensors(
    state_dict,
    block_names(),
    params,
    source="the SSL-UVOS model_state_dict",
    used_elsewhere=(BACKBONE_PREFIX,),
  )


def backbone_params(path: str, arch: vit.ViTArch) -> pretrained.Params:
  """The DINO backbone params of the official checkpoint `path` (its `encoder.*` tensors)."""
  state = state_dicts.read_state_dict(path)
  encoder = {
    name[len(BACKBONE_PREFIX) :]: value
    for name, value in state.items()
    if name.startswith(BACKBONE_PREFIX)
  }
  if not encoder:
    raise CheckpointError(
      f"{path}: no {BACKBONE_PREFIX}* tensors (the official checkpoint's DINO "
      f"backbone); top-level names: {sorted({n.split('.')[0] for n in state})}"
    )
  return pretrained.convert_state_dict(encoder, arch, source=f"{path} ({BACKBONE_PREFIX}*)")
