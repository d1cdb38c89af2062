"""Motion Grouping on MOVi-E through TFDS, with the official hyper-parameters (Yang et al., ICCV
2021).

Command (needs MOVi-E, read from gs://kubric-public/tfds or a local copy; the development machines
have neither: tests run this config on tiny synthetic data, tests/test_configs.py):
  python -m vosjax.main --config configs/motion_grouping.py --workdir workdirs/mg_movi_e
  # local copy of MOVi-E: --config.data.data_dir=/path/to/tfds

Official settings (charigyang/motiongrouping, see docs/motion_grouping.md): flow colour-wheel
encoded, 2 learned-query slots, 5 iterations, slot dim 256, batch 32 samples x 2 flows, Adam 5e-4
with 200 warm-up steps, lr halved and entropy/consistency weights x5 every 80k steps, losses x100 /
x0.01 / x0.01, 128x224 in the paper (MOVi-E is square: 128x128 here). The official code trains
"until stopped"; 300k steps is a long run. The training pair is a frame's forward and backward flow
(the official code pairs two gaps of the same frame; MOVi ships gap 1 in both directions).

Expected result: not measured here (MOVi-E cannot be downloaded on the development machines); the
synthetic demo (configs/demo.py) is the measured reference. Foreground J / FG-ARI / mIoU are printed
in the final `EVAL` line and written to WORKDIR/eval_metrics.json.
"""

import ml_collections

from vosjax.data import movi_config
from vosjax.methods import motion_grouping


def get_config() -> ml_collections.ConfigDict:
  config = motion_grouping.default_config()
  config.data = movi_config.movi_e_data_config()
  config.data.clip_length = 1  # one frame per sample ...
  config.data.clip_margin = 1  # ... that has both a forward and a backward flow
  return config
