"""The dense features of a trained model (`interface.ProvidesDenseFeatures`; Betrayed by
Attention's spatio-temporal block keys), restored the one way inference restores params
(`checkpoints.restore_for_inference`): `python -m vosjax.propagate --features block`."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vosjax import methods
from vosjax.core import sharding
from vosjax.methods import checkpoints
from vosjax.methods import interface


@dataclasses.dataclass(eq=False)
class TrainedFeatures:
  """A trained model's dense features, run on frames `[T, H, W, 3]` in [0, 1], the whole video
  in one call (the method normalises them as its inference does)."""

  method: Any
  model: Any  # the method's model (a pytree, passed to the jitted function as an argument)
  config: Any
  source: str = ""  # where the params came from, for people

  def __post_init__(self):
    method, config = self.method, self.config
    self._run = jax.jit(
      lambda params, model, video: method.dense_features(params, model, video, config)
    )

  @property
  def patch_size(self) -> int:
    """Pixels per feature cell."""
    return self.method.feature_stride(self.model)

  def features(self, params, frames: np.ndarray) -> np.ndarray:
    """float32 `[T, h, w, C]` of frames `[T, H, W, 3]` in [0, 1]."""
    return np.asarray(self._run(params, self.model, jnp.asarray(frames)[None])[0], np.float32)


def load_trained_features(config, workdir: str) -> tuple[TrainedFeatures, Any]:
  """(TrainedFeatures, params) of the method of `config`: the newest checkpoint of `workdir`, else
  `config.init.checkpoint` (`checkpoints.restore_for_inference`, as `vosjax.segment`).

  Raises:
    ValueError: the method has no dense features. FileNotFoundError, CheckpointError,
    CheckpointMismatchError: as `restore_for_inference`.
  """
  method = methods.load_method(config)
  if not isinstance(method, interface.ProvidesDenseFeatures):
    capable = methods.with_capability(interface.ProvidesDenseFeatures)
    raise ValueError(
      f"config.method={config.method!r} has no trained dense features "
      f"(interface.ProvidesDenseFeatures); the methods with them: {', '.join(capable)}"
    )
  checkpoints.checkpoint_folder(config, workdir)  # fails before the model is built
  mesh = sharding.make_mesh(jax.devices()[:1])
  model = method.make_model(config)
  restored = checkpoints.restore_for_inference(method, model, config, workdir, mesh)
  return TrainedFeatures(method, model, config, restored.source), restored.params
