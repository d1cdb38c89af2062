"""The method interface: what `vosjax.train`, the evaluation and `vosjax.segment` call.

A method is a package `vosjax.methods.<name>` (named by `config.method`) whose module-level
functions satisfy `Method`, and optionally one or more capability protocols below. Code outside
`methods/` asks for a capability by its protocol (`isinstance(method, PredictsFromFlow)`), never by
name.

Shapes: B batch, T frames, H x W pixels; params, extra are pytrees.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import ml_collections
import numpy as np
import optax

ConfigDict = ml_collections.ConfigDict


@runtime_checkable
class Method(Protocol):
  """Required of every method."""

  def default_config(self) -> ConfigDict:
    """The method's settings (`vosjax.core.config.base_config` plus its sections)."""

  def make_model(self, config: ConfigDict) -> Any:
    """A flax linen Module, or a pytree holding frozen arrays (see `core.sharding.place_model`)."""

  def make_optimizer(self, config: ConfigDict) -> optax.GradientTransformation:
    """The optimizer over the trained params (`core.optimizers` for clipping and groups)."""

  def example_batch(self, config: ConfigDict) -> dict[str, np.ndarray]:
    """Zeros with the shapes `init_params` reads (one example), so no data is needed to build."""

  def init_params(self, model: Any, config: ConfigDict, rng, batch: dict) -> Any:
    """The trained and checkpointed parameters."""

  def loss_fn(
    self, params: Any, model: Any, batch: dict, rng, step, config: ConfigDict, extra: Any
  ) -> tuple[Any, dict]:
    """(scalar loss, dict of scalar metrics); `extra` is the method-owned state ({} if none)."""

  def predict(self, params: Any, model: Any, batch: dict, config: ConfigDict) -> dict:
    """ids int32 `[B, T, H, W]` (and optionally foreground bool `[B, T, H, W]`, overflow bool
    `[B]`); never sees labels."""

  def summary_images(self, params: Any, model: Any, batch: dict, config: ConfigDict) -> dict:
    """name -> uint8 `[N, H, W, 3]` for TensorBoard."""


@runtime_checkable
class OwnsExtraState(Protocol):
  """Keeps state besides the trained params (e.g. an EMA teacher): initialised from the params,
  updated after every optimizer step, given to `loss_fn`, checkpointed with the train state."""

  def init_extra_state(self, params: Any, config: ConfigDict) -> Any:
    """The initial extra state (a pytree of arrays)."""

  def update_extra_state(self, extra: Any, params: Any, step, config: ConfigDict) -> Any:
    """The extra state after the optimizer step that produced `params` (`step`: its new count)."""


@runtime_checkable
class PredictsFromFlow(Protocol):
  """Segments the foreground from optical flow alone (evaluation on DAVIS flow folders)."""

  def foreground_probability(self, params: Any, model: Any, flow, config: ConfigDict):
    """Soft foreground `[N, H, W]` of flows `[N, H, W, 2]` (delta_row, delta_col)."""

  def slot_masks(self, params: Any, model: Any, flow, config: ConfigDict):
    """Soft masks `[N, K, H, W]` of the K slots of flows `[N, H, W, 2]` (the official evaluation
    picks one of them per flow against the ground truth)."""


@runtime_checkable
class SegmentsVideos(Protocol):
  """Segments a user's video (`vosjax.segment`).

  `SEGMENT_IDS` says what the ids of `predict` are: "classes" (fixed meaning, e.g. 0 background,
  1 foreground: windows are joined as they are) or "clusters" (arbitrary per window: linked between
  windows by IoU and ranked by area).
  """

  SEGMENT_IDS: str

  def segment_inputs(
    self, frames: np.ndarray, config: ConfigDict, *, cache_dir, cache_key: str, flow_preset: str
  ) -> dict[str, np.ndarray]:
    """uint8 frames `[T, H, W, 3]` -> the per-frame arrays `[T, ...]` that `predict` reads, at
    `config.data.resolution` (e.g. optical flow, cached under `cache_dir/cache_key`)."""

  def model_resolution(self, config: ConfigDict) -> tuple[int, int]:
    """(H, W) the model actually runs at (e.g. `model.inference_resolution` where the method
    resizes its inputs again before the network)."""


@runtime_checkable
class ClustersHierarchically(Protocol):
  """`predict` can also return every level of a clustering hierarchy (`vosjax.segment --levels`,
  the multi-granularity figure of Betrayed by Attention)."""

  def with_hierarchy_levels(self, config: ConfigDict) -> ConfigDict:
    """`config` whose `predict` also returns `levels` int32 `[B, L, T, h, w]` (cluster ids of each
    level on the prediction grid, finest first; levels >= `num_levels` repeat the last, coarsest)
    and `num_levels` int32 `[B]`; `ids` stay the coarsest level upsampled."""


@runtime_checkable
class ReproducesOfficialEvaluation(Protocol):
  """What `config.eval.mode="official"` changes in the frame-folder evaluation and
  `vosjax.segment` (`evaluation.windows.segment_frames`), besides what the method itself reads from
  the config. `OFFICIAL_EVALUATION` keys (each optional): drop_last_frame (bool: the official loader
  drops each video's last frame and the evaluation repeats the previous mask), ids_key (str: the
  `predict` output holding the ids the official code upsamples, e.g. on the token grid),
  every_cluster_is_a_proposal (bool: cluster ids written as id + 1 in the official order, not ranked
  by area, so the background cluster is scored too). Upsampling to the frames then follows torch's
  nearest rule as torch computes it (`core.images.NEAREST_RULES` "torch")."""

  OFFICIAL_EVALUATION: dict


@runtime_checkable
class PredictsInChunks(Protocol):
  """`predict` segments independent chunks of consecutive frames (e.g. SMTC's 4-frame clips): a
  frame's result depends only on the frames of its chunk. Videos are then segmented in calls of
  whole chunks laid out as on the whole video (`evaluation.windows.predict_in_chunks`), which gives
  the result of one call on the whole video with one compilation and bounded memory."""

  def chunk_layout(self, num_frames: int, config: ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """(frames int `[N, C]`: the video frames of each chunk, positions int `[num_frames]`: where
    each frame's result lies among the N * C results). On a video of a multiple of C frames,
    `predict` must treat frames [i * C, (i + 1) * C) as chunk i."""


@runtime_checkable
class ProposesCandidates(Protocol):
  """`predict` also proposes candidate masks that may overlap (e.g. SMTC's instance masks), which
  the DAVIS-2017 unsupervised protocols score each on its own
  (`evaluation.davis_protocol.evaluate_sequence_masks`) instead of the id map. `predict` returns
  them as `candidates` float `[B, T, K, h, w]` (soft masks on its grid; K fixed by the config) and
  `candidate_valid` bool `[B, T, K]` (the candidates proposed in that frame)."""

  def candidate_masks(
    self, candidates: np.ndarray, valid: np.ndarray, frame_size: tuple[int, int], config: ConfigDict
  ) -> tuple[np.ndarray, np.ndarray]:
    """One video's `candidates` `[T, K, h, w]` and `valid` `[T, K]` (NumPy) -> (binary masks bool
    `[T, K, h, w]`, empty where not valid, and an id map uint8 `[T, h, w]` resolving the overlaps
    for PNGs: 0 or 1 + a candidate). The frames' masks and ids are their nearest upsampling to
    `frame_size` (H, W) with torch's rule, source index floor(i * h / H)
    (`evaluation.windows.upsample_nearest_floor`)."""


@runtime_checkable
class ImportsCheckpoints(Protocol):
  """Imports the authors' own PyTorch checkpoints (`config.init.checkpoint`, `vosjax.convert`).

  The method knows the official tensor names and layouts; reading the file (torch, safetensors,
  npz; unwrapping `model_state_dict` and `module.`) is shared (`vosjax.models.state_dicts`).
  """

  def import_params(
    self, state_dict: dict[str, np.ndarray], params: Any, config: ConfigDict
  ) -> Any:
    """The trained params from the official {name: array} `state_dict`, with the structure and
    shapes of `params` (arrays or `jax.ShapeDtypeStruct`). Every missing, unexpected or wrongly
    shaped tensor raises `state_dicts.CheckpointError` listing them all. Tensors the method takes
    elsewhere (e.g. a frozen backbone, read by `make_model` from `config.init.checkpoint`) are not
    unexpected."""


@runtime_checkable
class ProvidesDenseFeatures(Protocol):
  """Gives per-frame dense features of a trained model (`python -m vosjax.propagate --features
  block`: label propagation compares them between frames)."""

  def dense_features(self, params: Any, model: Any, video, config: ConfigDict):
    """float32 `[B, T, h, w, C]` features of video `[B, T, H, W, 3]` in [0, 1], run at the size
    given (the caller picks it), on the token grid of `feature_stride(model)` pixels."""

  def feature_stride(self, model: Any) -> int:
    """Pixels per feature cell (the backbone's patch size)."""


@runtime_checkable
class GrowsCapacity(Protocol):
  """`predict` has static capacities (buffer sizes fixed at compilation) that some inputs exceed;
  `core.sharding.jit_predict` then re-runs it with grown ones (recompiling) until none is exceeded,
  so a capacity never changes the result."""

  def grown_config(
    self, config: ConfigDict, prediction: dict[str, np.ndarray]
  ) -> ConfigDict | None:
    """None when `prediction` exceeded no capacity, else `config` with larger capacities (logged).

    `prediction`: the per-example fields of `predict`'s output (arrays `[B]`) as NumPy."""


def capacity_growth(method):
  """The method's `grown_config` (for `core.sharding.jit_predict`), or None if it has none."""
  return method.grown_config if isinstance(method, GrowsCapacity) else None


def extra_state_hooks(method):
  """(init, update) of the method's extra state; a method without one keeps `{}`."""
  if isinstance(method, OwnsExtraState):
    return method.init_extra_state, method.update_extra_state
  return (lambda params, config: {}), (lambda extra, params, step, config: extra)
