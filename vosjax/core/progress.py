"""Progress for people (console: step, loss terms, steps/s, ETA) and TensorBoard summaries.

Only process 0 writes; every other process keeps quiet, so a pod prints and writes each line once.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Mapping

import jax
import numpy as np


def format_duration(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class ProgressMeter:
  """Prints `step N/M | loss ... | X steps/s | ETA ...` lines."""

  def __init__(self, total_steps: int, start_step: int = 0):
    self.total_steps = total_steps
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def log(self, step: int, metrics: Mapping[str, float]) -> str:
    now = time.perf_counter()
    steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self.total_steps - step) / max(steps_per_sec, 1e-9)
    terms = " ".join(f"{k} {float(v):.4g}" for k, v in sorted(metrics.items()) if k != "loss")
    line = (
      f"step {step}/{self.total_steps} | loss {float(metrics['loss']):.5g} | {terms} | "
      f"{steps_per_sec:.2f} steps/s | ETA {format_duration(eta)}"
    )
    if jax.process_index() == 0:
      print(line, flush=True)
    return line


class SummaryWriter:
  """TensorBoard event files in `WORKDIR/tensorboard` (scalars and uint8 images)."""

  def __init__(self, workdir: str):
    self._writer = None
    if jax.process_index() == 0:
      from flax.metrics import tensorboard  # pylint: disable=g-import-not-at-top

      self._writer = tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def scalars(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
    if self._writer is None:
      return
    for key, value in metrics.items():
      value = np.asarray(value)
      if value.ndim == 0 and np.issubdtype(value.dtype, np.number):
        self._writer.scalar(f"{prefix}/{key}", float(value), step)
    self._writer.flush()

  def images(self, step: int, images: Mapping[str, np.ndarray], prefix: str = "train") -> None:
    """`images`: name -> uint8 [N, H, W, 3] (or one [H, W, 3])."""
    if self._writer is None:
      return
    for key, value in images.items():
      value = np.asarray(value)
      for i, image in enumerate(value if value.ndim == 4 else value[None]):
        self._writer.image(f"{prefix}/{key}/{i}", image, step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def setup_logging() -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  # TensorFlow (used only for data) is chatty about devices it will not use.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
