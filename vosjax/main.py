"""Command line: `python -m vosjax.main --config configs/demo.py --workdir DIR [--mode train|eval]`.

Only parses flags and starts (multi-host) JAX; the work is in `vosjax.train`. Config values are
overridden from the command line, e.g.
`--config.batch_size=8 --config.optimizer.learning_rate=1e-4`.

Exit status: 0 when the run finished (trained and evaluated); 75 (EX_TEMPFAIL, "try again later")
when it stopped on SIGTERM after saving a checkpoint, so that a scheduler requeues it (rerunning the
same command resumes; see launch/README.md); 1 for an error (bad flags, or one line naming the
problem, or a traceback).
"""

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and results.")
_MODE = flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "eval"],
  "train: train (resuming from WORKDIR) then evaluate; eval: evaluate the "
  "latest checkpoint in WORKDIR, else the params of "
  "--config.init.checkpoint.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "Multi-host: host:port of process 0. Leave unset on TPU pods and "
  "SLURM, where jax.distributed detects everything.",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  None,
  "Call jax.distributed.initialize(). Default: when a coordinator address "
  "is given, or on a TPU pod / SLURM job with more than one task.",
)
_TRACEBACK = flags.DEFINE_bool(
  "traceback",
  False,
  "Show the full traceback of input and config errors (by default they are "
  "one line naming the problem).",
)
flags.mark_flags_as_required(["config", "workdir"])


def _wants_distributed() -> bool:
  if _DISTRIBUTED.value is not None:
    return _DISTRIBUTED.value
  if _COORDINATOR.value:
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from vosjax.core import host_memory  # pylint: disable=g-import-not-at-top

  host_memory.reexec_with_huge_pages()  # process setup, before JAX is imported
  # Imported here so that --help is fast and TF/JAX start after flag parsing.
  import jax  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  from vosjax import train  # pylint: disable=g-import-not-at-top
  from vosjax.core import checkpoint  # pylint: disable=g-import-not-at-top
  from vosjax.core import progress  # pylint: disable=g-import-not-at-top
  from vosjax.models import pretrained  # pylint: disable=g-import-not-at-top

  progress.setup_logging()
  if _wants_distributed():
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  # Errors about the user's input, config, data, weights or workdir: one line naming the problem
  # and what to do, not a traceback. ConnectionError: an unreachable bucket (data or workdir).
  user_errors = (
    ValueError,
    FileNotFoundError,
    ConnectionError,
    train.NonFiniteLossError,
    checkpoint.CheckpointMismatchError,
    pretrained.PretrainedWeightsUnavailableError,
  )
  try:
    epath.Path(_WORKDIR.value).mkdir(parents=True, exist_ok=True)  # local or gs://
    if _MODE.value == "train":
      result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
      if result.preempted:
        logging.warning(
          "Exiting with status %d (stopped by SIGTERM, checkpoint saved): requeue to resume.",
          train.EXIT_PREEMPTED,
        )
        sys.exit(train.EXIT_PREEMPTED)
    else:
      train.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
  except user_errors as e:
    if _TRACEBACK.value:
      raise
    message = " ".join(str(e).split())  # one line, however the message was wrapped
    sys.exit(f"vosjax: {type(e).__name__}: {message}\n(rerun with --traceback for the full trace)")


if __name__ == "__main__":
  app.run(main)
