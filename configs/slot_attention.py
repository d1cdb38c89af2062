"""Slot Attention object discovery (RGB autoencoder, 7 Gaussian slots) on the synthetic set at
64x64.

Command:
  python -m vosjax.main --config configs/slot_attention.py --workdir workdirs/slot_attention

Trains the object-discovery autoencoder of Locatello et al. 2020 (narrower than the official
CLEVR model so it runs on a CPU) on single frames, and evaluates FG-ARI and mIoU over whole
validation videos.

Expected result: see the README's results table (measured on 2 CPU cores).
"""

import ml_collections

from vosjax.data import movi_config
from vosjax.methods import slot_attention


def get_config() -> ml_collections.ConfigDict:
  config = slot_attention.default_config()
  config.data = movi_config.default_data_config()  # vosjax_synthetic/64x64
  config.data.clip_length = 1  # single frames
  config.data.clip_margin = 0
  return config
