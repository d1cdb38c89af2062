"""Motion Grouping trained self-supervised on the DAVIS-2016 frames, scored with the davis2016
protocol.

Command:
  python -m vosjax.main --config configs/davis2016.py --workdir workdirs/davis2016 \
      [--config.data.root=PATH_TO_DAVIS2016] \
      [--config.data.raft_flow_root=DIR --config.data.raft_res=480p]

With `raft_flow_root` the flows are the precomputed RAFT `.flo` files of the official layout
(`DIR/Flows_gap{1,2,-1,-2}[/raft_res]/<seq>/<frame>.flo`, as Motion Grouping's raft/run_inference.py
writes them), resized to 128x224 with the vectors rescaled, instead of OpenCV DIS.

As the official protocol: trains on the 18 DAVIS-2016 val sequences that have frames (cows and goat
have none in ../shared/data/davis2016) without their labels, on pairs of OpenCV DIS flows of the
same frame (gaps 1, 2, -1, -2) computed once at the frames' resolution, resized to 128x224 and
cached in `config.data.flow_cache_dir` (18 sequences: 411 s and 1.0 GB here). At the end (and with
`--mode eval`) every frame's 4 flows give the mean foreground mask, upsampled to 480p and scored
with the davis2016 protocol (frames 1:-1, like the DAVIS-2016 toolkit), next to the median-flow
baseline on the same flows; see `vosjax/evaluation/davis_flows.py` for the outputs.

The model is the demo's narrow Motion Grouping (the official widths are 4-8x wider), so that it runs
on a CPU: 0.10-0.22 steps/s at batch 8 on 2 busy cores. Measured 2026-11-22: stopped by SIGTERM at
step 110 (14 min wall) and scored with `--mode eval` (12 min): J 0.071 / F 0.111 against the
baseline's J 0.482 / F 0.416 on the same flows (4-flow vote); after 110 steps the masks are not a
grouping yet. The paper's 68.3 J needs RAFT flow and ~1e5 steps on GPUs.
"""

import os

import ml_collections

from configs import demo

DAVIS2016 = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "davis2016"
)


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()  # the narrow Motion Grouping model and its losses
  config.data = ml_collections.ConfigDict()
  config.data.source = "davis"
  config.data.root = os.path.normpath(DAVIS2016)
  # The val sequences with frames; None: every sequence under JPEGImages/480p.
  config.data.sequences = ml_collections.FieldReference(None, field_type=tuple)
  config.data.resolution = (128, 224)
  config.data.gaps = (1, 2, -1, -2)
  config.data.flow_cache_dir = os.path.expanduser("~/.cache/vosjax/flows")
  # Precomputed RAFT flows (Motion Grouping's `Flows_gap{g}[/raft_res]/<seq>/<frame>.flo` layout,
  # e.g. from its raft/run_inference.py) instead of OpenCV DIS: --config.data.raft_flow_root=DIR.
  config.data.raft_flow_root = ml_collections.FieldReference(None, field_type=str)
  config.data.raft_res = ml_collections.FieldReference(None, field_type=str)  # "480p", "1080p"

  config.batch_size = 8
  config.num_train_steps = 3000
  config.log_every_steps = 10
  config.checkpoint_every_steps = 50
  config.eval_every_steps = 0  # scored once, at the end
  config.num_eval_videos_to_write = 4
  config.optimizer.learning_rate = 5e-4  # the official rate (the demo's is faster)
  config.optimizer.warmup_steps = 50
  config.optimizer.decay_steps = 1500
  return config
