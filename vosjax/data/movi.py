"""Input pipeline for Kubric MOVi (TFDS) and the `vosjax_synthetic` stand-in.

Both are read by the same code: raw TFRecords from the split's TFDS file
instructions, parsed with the dataset's own feature spec (only the features
used below), frames decoded after the temporal window is chosen.

`data_config` fields (an `ml_collections.ConfigDict`, see
`vosjax.data.movi_config.default_data_config`):
  tfds_name:      "name/config[:version]", e.g. "movi_e/128x128:1.0.0"
                  (real MOVi, read from `data_dir`) or "vosjax_synthetic/64x64"
                  (built offline into `data_dir` on first use; any
                  `VosjaxSyntheticConfig` name such as "32x32_f8_o2-4_n8-4").
  data_dir:       TFDS data directory ("gs://kubric-public/tfds" for MOVi, a
                  local copy made with `gsutil -m cp -r`, or a local folder).
  train_split:    split of the training stream, e.g. "train" ("train[:90%]").
  eval_split:     split of the evaluation pass, e.g. "validation".
  resolution:     (H, W) of the output; int means square. Bilinear resize for
                  video / flow / depth, nearest for segmentations; flow values
                  are scaled by (H / h, W / w) on (delta_row, delta_col).
  clip_length:    frames per training clip (SAVi: 6).
  clip_margin:    frames at each end a training window never starts/ends in:
                  window start s is uniform in [m, T - clip_length - m].
                  (SAVi draws one of the non-overlapping windows instead.)
  eval_frames:    frames per evaluation video from its start; None = all.
  shuffle_buffer: records per shuffle block (see below); 1 disables shuffling.
                  Holds that many raw records in memory (about 1.3 MB each
                  for vosjax_synthetic/64x64, several MB for MOVi 128x128).
  max_instances:  segmentation ids above this become background 0 (SAVi: 23).

Batches (host-local numpy, shapes static):
  video          float32 [B, T, H, W, 3] in [0, 1]
  segmentations  int32   [B, T, H, W]    0 background, id = instance index + 1
  forward_flow   float32 [B, T, H, W, 2] (delta_row, delta_col) pixels, t -> t+1
  backward_flow  float32 [B, T, H, W, 2] t -> t-1
  depth          float32 [B, T, H, W, 1] metadata depth_range units
  valid          bool    [B]             False on evaluation padding
Flow is the dataset's flow of each frame (a training clip's last frame keeps
its flow to the frame after the clip); decoded as
uint16 / 65535 * (max - min) + min with metadata/{backward,forward}_flow_range
((-255, 255) if a dataset has no range), as SAVi does.

Training stream: each host reads its own `tfds.even_splits` part of the split.
Epoch e visits the host's file instructions in an order permuted by
(seed, e) and permutes records inside consecutive blocks of `shuffle_buffer`
records with (seed, e, block) (TFDS already shuffled records when writing).
The window start of the n-th record of the host's stream comes from
(seed, n). Hence the batch sequence depends only on (seed, process_index,
process_count, data config), and resuming at step s skips whole epochs and
shards arithmetically and reads fewer than `shuffle_buffer` records (plus at
most one shard's prefix) without decoding them.
"""

from __future__ import annotations

import math
import os
import re
import socket
import threading
from typing import Any, Iterator

from absl import logging
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vosjax.data import movi_config

SYNTHETIC_NAME = movi_config.SYNTHETIC_NAME
DEFAULT_FLOW_RANGE = (-255.0, 255.0)
_GCS_HOST = "storage.googleapis.com"
_GCS_PROBE_TIMEOUT_S = 5.0
_DATA_DIR_KEY = "--config.data.data_dir"
_NAME_KEY = "--config.data.tfds_name"


# The defaults live in a module without TensorFlow (configs import them); also reachable here.
default_data_config = movi_config.default_data_config


# ------------------------------------------------------------------ builder --
_accelerators_hidden = False


def hide_accelerators_from_tensorflow() -> None:
  """Process setup before TensorFlow's first use (`get_builder`, which every reader calls), not at
  import: the input pipeline must never take accelerators (and their memory) from JAX."""
  global _accelerators_hidden
  if _accelerators_hidden:
    return
  _accelerators_hidden = True
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialized its devices; nothing to hide.
    pass


def _check_gcs_reachable(data_dir: str, tfds_name: str) -> None:
  """Fails within seconds when gs:// cannot be reached (TF would retry)."""
  error = []

  def probe():
    try:
      socket.create_connection((_GCS_HOST, 443), timeout=_GCS_PROBE_TIMEOUT_S).close()
    except OSError as e:
      error.append(e)

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(_GCS_PROBE_TIMEOUT_S + 1.0)
  if thread.is_alive() or error:
    reason = error[0] if error else "timed out"
    name, _, version = tfds_name.partition(":")
    version = version or "1.0.0"
    raise ConnectionError(
      f"Cannot reach {data_dir!r} for dataset {tfds_name!r} ({_GCS_HOST}: "
      f"{reason}). Copy it locally (mkdir -p DIR/{name} && gsutil -m cp -r "
      f"{data_dir.rstrip('/')}/{name}/{version} DIR/{name}/) and set "
      f"{_DATA_DIR_KEY}=DIR, or use the offline synthetic set with "
      f"{_NAME_KEY}={SYNTHETIC_NAME}/64x64."
    )


def get_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `data_config.tfds_name` in `data_config.data_dir`.

  `vosjax_synthetic` is generated (offline) if it is not prepared yet.

  Raises:
    ValueError: malformed or unknown dataset name (or synthetic config name).
    ConnectionError: a gs:// data_dir is unreachable (fails in seconds).
    FileNotFoundError: the dataset is not in data_dir.
  """
  hide_accelerators_from_tensorflow()
  tfds_name = str(data_config.tfds_name)
  data_dir = str(data_config.data_dir)
  if not data_dir.startswith(("gs://", "s3://")):
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
  if not re.fullmatch(r"[a-z0-9_]+(/[A-Za-z0-9_.\-]+)?(:[0-9.*]+)?", tfds_name):
    raise ValueError(
      f"{_NAME_KEY}={tfds_name!r} is not a TFDS name like "
      "'movi_e/128x128:1.0.0' or 'vosjax_synthetic/64x64'"
    )
  dataset = tfds_name.split("/")[0].split(":")[0]
  if dataset == SYNTHETIC_NAME:
    # Registers the builder; imported here so MOVi users never need it.
    from vosjax.data import synthetic  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401

    try:
      builder = tfds.builder(tfds_name, data_dir=data_dir)
    except ValueError as e:
      raise ValueError(f"{_NAME_KEY}={tfds_name!r}: {e}") from e
    if not builder.is_prepared():
      logging.info("Generating %s into %s (offline, one-time)", tfds_name, builder.data_path)
      builder.download_and_prepare()
      logging.info("Generated %s: %s", tfds_name, builder.info.splits)
    return builder
  if data_dir.startswith("gs://"):
    _check_gcs_reachable(data_dir, tfds_name)
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except Exception as e:  # TFDS raises several types for a missing dataset.
    raise FileNotFoundError(
      f"Dataset {tfds_name!r} not found in data_dir {data_dir!r} (expected "
      f"{data_dir}/{tfds_name.split(':')[0]}/VERSION/dataset_info.json): "
      f"{type(e).__name__}: {e}. Set {_DATA_DIR_KEY} to the folder that "
      f"holds it or {_NAME_KEY} to an available dataset (offline: "
      f"{SYNTHETIC_NAME}/64x64)."
    ) from e
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"Dataset {tfds_name!r} is not prepared in {builder.data_path}. Set "
      f"{_DATA_DIR_KEY} to the folder holding the MOVi TFRecords."
    )
  return builder


def _split_info(builder: tfds.core.DatasetBuilder, split: str, key: str):
  try:
    return builder.info.splits[split]
  except (KeyError, ValueError, AssertionError) as e:
    raise ValueError(
      f"Split {split!r} not found for dataset {builder.info.full_name!r} in "
      f"{builder.data_dir}: available {sorted(builder.info.splits)}. Set "
      f"--config.data.{key}."
    ) from e


def _host_split(builder, split: str, key: str, process_index: int, process_count: int):
  """This host's part of `split`: (file instructions, number of records)."""
  _split_info(builder, split, key)  # clear error for a missing split
  host = tfds.even_splits(split, n=process_count)[process_index]
  instructions = _split_info(builder, host, key).file_instructions
  instructions = [i for i in instructions if i.take > 0]
  # One listing of the folder (not a request per file, which is slow on gs://).
  present = set(tf.io.gfile.listdir(builder.data_dir))
  missing = sorted({os.path.basename(os.fspath(i.filename)) for i in instructions} - present)
  if missing:
    raise FileNotFoundError(
      f"Split {split!r} of dataset {builder.info.full_name!r} is incomplete in "
      f"{builder.data_dir}: {len(missing)} file(s) missing, e.g. {missing[0]!r}. Copy the "
      f"dataset again, or set {_DATA_DIR_KEY} or --config.data.{key}."
    )
  num_records = sum(i.take for i in instructions)
  if num_records == 0:
    raise ValueError(
      f"Split {split!r} of {builder.info.full_name!r} gives no "
      f"examples to process {process_index} of {process_count}."
    )
  return instructions, num_records


def check_split(data_config: ml_collections.ConfigDict, key: str) -> None:
  """Raises the error that reading `data_config.<key>` (e.g. "eval_split") would raise later:
  unknown dataset or split, or a split whose files are missing from the dataset folder."""
  builder = get_builder(data_config)
  _host_split(builder, data_config[key], key, 0, 1)


# ------------------------------------------------------------------ decoding --
class _Decoder:
  """Parses raw MOVi records and decodes a frame window into float tensors."""

  def __init__(self, builder: tfds.core.DatasetBuilder, data_config: ml_collections.ConfigDict):
    features = builder.info.features
    for required in ("video", "segmentations"):
      if required not in features:
        raise ValueError(
          f"Dataset {builder.info.full_name!r} has no "
          f"{required!r} feature; MOVi-format data required."
        )
    self.num_frames, self.height, self.width, _ = features["video"].shape
    if self.num_frames is None or self.height is None:
      raise ValueError(
        f"{builder.info.full_name!r}: video shape {features['video'].shape} must be static."
      )
    resolution = data_config.resolution
    if isinstance(resolution, int):
      resolution = (resolution, resolution)
    self.resolution = tuple(int(r) for r in resolution)
    self.max_instances = int(data_config.max_instances)
    spec: dict[str, Any] = {"video": True, "segmentations": True}
    skip = {"video": tfds.decode.SkipDecoding(), "segmentations": tfds.decode.SkipDecoding()}
    metadata = set(features["metadata"].keys()) if "metadata" in features else set()
    self.available = {"video", "segmentations"}
    for name in ("forward_flow", "backward_flow", "depth"):
      if name in features:
        self.available.add(name)
        spec[name] = True
        if name == "depth":
          skip["depth"] = tfds.decode.SkipDecoding()
        if f"{name}_range" in metadata:
          spec.setdefault("metadata", {})[f"{name}_range"] = True
      else:
        logging.warning("%s has no %r; it will be zeros.", builder.info.full_name, name)
    self._features = tfds.decode.PartialDecoding(spec).extract_features(features)
    self._skip = skip

  def parse(self, record: tf.Tensor) -> dict[str, tf.Tensor]:
    return self._features.deserialize_example(record, decoders=self._skip)

  def _images(
    self, encoded: tf.Tensor, frames: tf.Tensor, channels: int, dtype: tf.DType
  ) -> tf.Tensor:
    encoded = tf.gather(encoded, frames)
    images = tf.map_fn(
      lambda x: tf.io.decode_image(x, channels=channels, dtype=dtype, expand_animations=False),
      encoded,
      fn_output_signature=tf.TensorSpec(None, dtype),
    )
    return tf.ensure_shape(images, (None, self.height, self.width, channels))

  def _range(self, example, name: str, default) -> tuple[tf.Tensor, tf.Tensor]:
    value_range = example.get("metadata", {}).get(f"{name}_range")
    if value_range is None:
      value_range = tf.constant(default, tf.float32)
    return value_range[0], value_range[1]

  def decode(
    self, example: dict[str, tf.Tensor], start: tf.Tensor, length: int
  ) -> dict[str, tf.Tensor]:
    """Frames [start, start + length) at `resolution` (see module docstring)."""
    frames = tf.range(start, start + length)
    out_h, out_w = self.resolution
    resize = (out_h, out_w) != (self.height, self.width)

    def as_float(values, name, default):
      low, high = self._range(example, name, default)
      return tf.cast(values, tf.float32) / 65535.0 * (high - low) + low

    def smooth(x):  # bilinear, as SAVi's ResizeSmall for float features
      return tf.image.resize(x, (out_h, out_w), method="bilinear") if resize else x

    video = self._images(example["video"], frames, 3, tf.uint8)
    video = smooth(tf.image.convert_image_dtype(video, tf.float32))
    segmentations = self._images(example["segmentations"], frames, 1, tf.uint8)
    if resize:
      segmentations = tf.image.resize(segmentations, (out_h, out_w), method="nearest")
    segmentations = tf.cast(segmentations[..., 0], tf.int32)
    segmentations = tf.where(segmentations > self.max_instances, 0, segmentations)
    out = {"video": video, "segmentations": segmentations}
    scale = tf.constant([out_h / self.height, out_w / self.width], tf.float32)
    for name in ("forward_flow", "backward_flow"):
      if name in self.available:
        flow = as_float(tf.gather(example[name], frames), name, DEFAULT_FLOW_RANGE)
        out[name] = smooth(flow) * scale
      else:
        out[name] = tf.zeros((length, out_h, out_w, 2), tf.float32)
    if "depth" in self.available:
      depth = self._images(example["depth"], frames, 1, tf.uint16)
      out["depth"] = smooth(as_float(depth, "depth", (0.0, 65535.0)))
    else:
      out["depth"] = tf.zeros((length, out_h, out_w, 1), tf.float32)
    for name, channels in (("video", 3), ("forward_flow", 2), ("backward_flow", 2), ("depth", 1)):
      out[name] = tf.ensure_shape(out[name], (length, out_h, out_w, channels))
    out["segmentations"] = tf.ensure_shape(out["segmentations"], (length, out_h, out_w))
    return out


def _instruction_tensors(instructions) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """File paths, records to skip and to take of TFDS file instructions."""
  return (
    tf.constant([os.fspath(i.filename) for i in instructions]),
    tf.constant([i.skip for i in instructions], tf.int64),
    tf.constant([i.take for i in instructions], tf.int64),
  )


def _read_records(paths: tf.Tensor, skips: tf.Tensor, takes: tf.Tensor) -> tf.data.Dataset:
  """Raw serialized records of the given file slices, in order."""
  files = tf.data.Dataset.from_tensor_slices((paths, skips, takes))
  files = files.filter(lambda path, skip, take: take > 0)
  return files.flat_map(
    lambda path, skip, take: tf.data.TFRecordDataset(path).skip(skip).take(take)
  )


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return int(process_index), int(process_count)


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
      f"global batch size {global_batch_size} must be a positive "
      f"multiple of the process count {process_count}"
    )
  return global_batch_size // process_count


def _seed_pair(*words: int) -> np.ndarray:
  """A stateless-RNG seed [2] (int64) derived from integers."""
  state = np.random.SeedSequence([int(w) for w in words]).generate_state(2)
  return (state.astype(np.int64) & 0x7FFFFFFF).astype(np.int64)


# ------------------------------------------------------------------ training --
def make_train_iterator(
  data_config: ml_collections.ConfigDict,
  global_batch_size: int,
  *,
  seed: int,
  start_step: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict]:
  """Infinite host-local batches of random clips (see the module docstring).

  Args:
    data_config: see the module docstring.
    global_batch_size: batch over all hosts; each host yields
      global_batch_size // process_count examples per batch.
    seed: data seed (order, windows).
    start_step: yield the batches of an uninterrupted run from this step on.
    process_index, process_count: default to JAX's.

  Yields:
    dicts of numpy arrays [B, clip_length, H, W, ...] plus valid bool [B].
  """
  process_index, process_count = _process(process_index, process_count)
  local_batch = _local_batch_size(global_batch_size, process_count)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  builder = get_builder(data_config)
  decoder = _Decoder(builder, data_config)
  length, margin = int(data_config.clip_length), int(data_config.clip_margin)
  last_start = decoder.num_frames - length - margin
  if length < 1 or margin < 0 or last_start < margin:
    raise ValueError(
      f"clip_length={length} with clip_margin={margin} does not fit videos of "
      f"{decoder.num_frames} frames; change --config.data.clip_length or "
      "--config.data.clip_margin"
    )
  instructions, num_records = _host_split(
    builder, data_config.train_split, "train_split", process_index, process_count
  )
  block = max(1, min(int(data_config.shuffle_buffer), num_records))
  order_key = _seed_pair(seed, process_index, process_count, 1)
  window_key = _seed_pair(seed, process_index, process_count, 2)

  paths, skips, takes = _instruction_tensors(instructions)

  def epoch_records(epoch, first_record):
    # Records of one epoch from `first_record` (a multiple of `block`) on.
    epoch_key = tf.random.experimental.stateless_fold_in(order_key, epoch)
    order = tf.argsort(tf.random.stateless_uniform([len(instructions)], epoch_key))
    ordered_takes = tf.gather(takes, order)
    cut = tf.clip_by_value(
      first_record - tf.cumsum(ordered_takes, exclusive=True), 0, ordered_takes
    )
    records = _read_records(
      tf.gather(paths, order), tf.gather(skips, order) + cut, ordered_takes - cut
    )

    def permute(index, records):
      key = tf.random.experimental.stateless_fold_in(epoch_key, index)
      return tf.gather(records, tf.argsort(tf.random.stateless_uniform(tf.shape(records)[:1], key)))

    blocks = records.batch(block).enumerate(start=first_record // block)
    return blocks.map(permute).unbatch()

  position = start_step * local_batch  # records this host consumed before
  epoch, offset = divmod(position, num_records)
  first_block_start = offset - offset % block
  stream = epoch_records(tf.constant(epoch, tf.int64), tf.constant(first_block_start, tf.int64))
  stream = stream.concatenate(
    tf.data.Dataset.range(epoch + 1, np.iinfo(np.int64).max).flat_map(
      lambda e: epoch_records(e, tf.constant(0, tf.int64))
    )
  )
  stream = stream.skip(offset - first_block_start).enumerate(start=position)

  def decode(index, record):
    key = tf.random.experimental.stateless_fold_in(window_key, index)
    start = tf.random.stateless_uniform(
      [], key, minval=margin, maxval=last_start + 1, dtype=tf.int32
    )
    return decoder.decode(decoder.parse(record), start, length)

  stream = stream.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  stream = stream.batch(local_batch, drop_remainder=True).prefetch(2)
  valid = np.ones((local_batch,), bool)
  for batch in stream.with_options(_options()).as_numpy_iterator():
    yield dict(batch, valid=valid)


# ---------------------------------------------------------------- evaluation --
def num_eval_batches(
  data_config: ml_collections.ConfigDict, global_batch_size: int, process_count: int
) -> int:
  """Batches every host yields in `make_eval_iterator`."""
  local_batch = _local_batch_size(global_batch_size, process_count)
  builder = get_builder(data_config)
  total = _split_info(builder, data_config.eval_split, "eval_split").num_examples
  return math.ceil(math.ceil(total / process_count) / local_batch)


def make_eval_iterator(
  data_config: ml_collections.ConfigDict,
  global_batch_size: int,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict]:
  """One pass over `eval_split` with full videos, padded to whole batches.

  Every host yields `num_eval_batches(...)` batches; padding examples are
  zeros with valid=False.

  Yields:
    dicts of numpy arrays [B, eval_frames or T, H, W, ...] plus valid bool [B].
  """
  process_index, process_count = _process(process_index, process_count)
  local_batch = _local_batch_size(global_batch_size, process_count)
  builder = get_builder(data_config)
  decoder = _Decoder(builder, data_config)
  frames = data_config.eval_frames
  frames = decoder.num_frames if frames is None else int(frames)
  if not 1 <= frames <= decoder.num_frames:
    raise ValueError(
      f"eval_frames={frames} not in [1, {decoder.num_frames}]; change --config.data.eval_frames"
    )
  instructions, _ = _host_split(
    builder, data_config.eval_split, "eval_split", process_index, process_count
  )
  num_batches = num_eval_batches(data_config, global_batch_size, process_count)
  examples = _read_records(*_instruction_tensors(instructions)).map(
    lambda r: dict(decoder.decode(decoder.parse(r), 0, frames), valid=True),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  zeros = {name: tf.zeros(spec.shape, spec.dtype) for name, spec in examples.element_spec.items()}
  zeros["valid"] = tf.constant(False)
  padded = examples.concatenate(tf.data.Dataset.from_tensors(zeros).repeat())
  padded = padded.take(num_batches * local_batch).batch(local_batch).prefetch(2)
  yield from padded.with_options(_options()).as_numpy_iterator()
