"""PyTorch state dicts: read them (.pth/.pt, .safetensors, .npz) and import them into Flax params.

One reader for every checkpoint vosjax loads (the DINO backbones of `vosjax.models.pretrained` and
the official method checkpoints of `config.init.checkpoint`):

  * `.safetensors` and `.npz` (a flat {name: array} archive, as `python -m vosjax.convert` writes)
    are read with NumPy alone; other files with `torch.load(weights_only=True)`.
  * A torch file holding more than tensors is unwrapped: the first nested dict among `prefer` (e.g.
    DINO's "teacher"), "model_state_dict" (the training checkpoints of SSL-UVOS and Motion Grouping:
    `{"iteration", "loss", "model_state_dict", "optimizer_state_dict"}`), "model", "state_dict".
  * `module.` prefixes (DistributedDataParallel) are stripped; values become float32.

`import_tensors` fills a Flax params template from a state dict by an explicit name map (PyTorch
name -> Flax path and layout). It is strict, unlike `load_state_dict(strict=False)`: every missing,
unexpected or wrongly shaped tensor is an error that lists them all.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
from typing import Any, Iterable, Mapping, Optional

import flax
import numpy as np

# Layouts of a PyTorch tensor, and how each becomes its Flax counterpart.
COPY = "copy"  # same layout (norm scales, biases, embeddings, tokens)
LINEAR = "linear"  # nn.Linear weight [out, in] -> Dense kernel [in, out]
CONV = "conv"  # nn.Conv2d weight [out, in, kh, kw] -> Conv kernel [kh, kw, in, out]
# nn.ConvTranspose2d weight [in, out, kh, kw] -> `layers.TorchConvTranspose` kernel [kh, kw, in,
# out], spatially flipped (flax correlates the dilated input where PyTorch convolves it).
CONV_TRANSPOSE = "conv_transpose"
# nn.Conv1d weight [out, in, 1] of kernel size 1 -> the Dense kernel [in, out] it equals.
CONV1D_1X1 = "conv1d_1x1"
LAYOUTS = (COPY, LINEAR, CONV, CONV_TRANSPOSE, CONV1D_1X1)

# Nested state dicts tried, in order, after the caller's `prefer`.
STATE_DICT_KEYS = ("model_state_dict", "model", "state_dict")
NUMPY_SUFFIXES = (".safetensors", ".npz")


class CheckpointError(ValueError):
  """A checkpoint file is unreadable, corrupt or does not fit the architecture."""


def read_state_dict(path: os.PathLike, prefer: Optional[str] = None) -> dict[str, np.ndarray]:
  """Reads a checkpoint file into a flat {name: float32 array} dict (see the module docstring).

  The result is cached for the last file read (keyed by path, size and modification time), so a
  method that reads one checkpoint twice (backbone and trained parameters) loads it once.
  """
  path = pathlib.Path(path)
  try:
    stat = path.stat()
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: no such checkpoint file") from None
  return dict(_read_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns, prefer))


@functools.lru_cache(maxsize=1)
def _read_cached(
  path: str, size: int, mtime_ns: int, prefer: Optional[str]
) -> dict[str, np.ndarray]:
  del size, mtime_ns  # part of the cache key only
  path = pathlib.Path(path)
  if path.suffix == ".safetensors":
    import safetensors.numpy  # pylint: disable=g-import-not-at-top

    try:
      raw = dict(safetensors.numpy.load_file(str(path)))
    except Exception as error:  # safetensors raises its own SafetensorError type.
      raise CheckpointError(f"{path}: cannot read safetensors file: {error}") from error
  elif path.suffix == ".npz":
    try:
      with np.load(path, allow_pickle=False) as archive:
        raw = {name: archive[name] for name in archive.files}
    except Exception as error:  # zipfile.BadZipFile, EOFError, ValueError, ...
      raise CheckpointError(f"{path}: cannot read npz file: {error}") from error
  else:
    raw = _read_torch_file(path, prefer)
  state = {}
  for name, value in raw.items():
    name = name[len("module.") :] if name.startswith("module.") else name
    state[name] = np.asarray(value, np.float32)
  return state


def _read_torch_file(path: pathlib.Path, prefer: Optional[str]) -> dict[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
      f"Reading the PyTorch checkpoint {path} needs torch (pip install torch, CPU build is "
      "enough). Alternatively convert it once where torch exists and pass the result: `python -m "
      "vosjax.convert IN.pth OUT.safetensors --config CONFIG` (method checkpoints) or `python -m "
      "vosjax.convert IN.pth OUT.npz --backbone NAME` (backbones)."
    ) from error
  try:
    # Full DINO checkpoints pickle their argparse.Namespace of training arguments.
    with torch.serialization.safe_globals([argparse.Namespace]):
      checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # torch raises RuntimeError/UnpicklingError/EOFError variously.
    raise CheckpointError(
      f"{path}: cannot read PyTorch checkpoint (truncated or corrupt?): {error}"
    ) from error
  if not isinstance(checkpoint, Mapping):
    raise CheckpointError(f"{path}: expected a dict of tensors, got {type(checkpoint).__name__}")
  if not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
    keys = ((prefer,) if prefer else ()) + STATE_DICT_KEYS
    for key in keys:
      if isinstance(checkpoint.get(key), Mapping):
        checkpoint = checkpoint[key]
        break
    else:
      raise CheckpointError(
        f"{path}: no state dict found (looked for {list(keys)}); top-level "
        f"keys: {sorted(map(str, checkpoint))}"
      )
  not_tensors = sorted(n for n, v in checkpoint.items() if not isinstance(v, torch.Tensor))
  if not_tensors:
    raise CheckpointError(f"{path}: the state dict holds non-tensor entries: {not_tensors}")
  return {name: value.detach().to(torch.float32).numpy() for name, value in checkpoint.items()}


def write_state_dict(path: os.PathLike, state: Mapping[str, np.ndarray]) -> pathlib.Path:
  """Writes {name: array} as .safetensors or .npz (by the suffix), atomically; no torch needed to
  read it back with `read_state_dict`."""
  path = pathlib.Path(path)
  if path.suffix not in NUMPY_SUFFIXES:
    raise ValueError(f"{path}: the output must end in {' or '.join(NUMPY_SUFFIXES)}")
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + ".part" + path.suffix)
  arrays = {name: np.ascontiguousarray(value, np.float32) for name, value in state.items()}
  if path.suffix == ".safetensors":
    import safetensors.numpy  # pylint: disable=g-import-not-at-top

    safetensors.numpy.save_file(arrays, str(partial))
  else:
    np.savez(partial, **arrays)
  os.replace(partial, path)
  return path


# ---------------------------------------------------------------------------------------------
# Import into Flax params.


def mismatch_report(
  source: str,
  missing: Iterable[str],
  unexpected: Iterable[str],
  wrong_shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]],
) -> str:
  """The lines of a strict-loading error: what is missing, unexpected, or of the wrong shape."""
  missing, unexpected = sorted(missing), sorted(unexpected)
  lines = [f"{source} does not fit the architecture:"]
  if missing:
    lines.append(f"  missing ({len(missing)}): {', '.join(missing)}")
  if unexpected:
    lines.append(f"  unexpected ({len(unexpected)}): {', '.join(unexpected)}")
  for name, (got, want) in sorted(wrong_shapes.items()):
    lines.append(f"  wrong shape: {name} is {got}, expected {want}")
  return "\n".join(lines)


def to_flax(value: np.ndarray, layout: str) -> np.ndarray:
  """A PyTorch tensor in `layout` -> its Flax layout (see the layout constants)."""
  if layout == COPY:
    return value
  if layout == LINEAR and value.ndim == 2:
    return value.T
  if layout == CONV and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if layout == CONV_TRANSPOSE and value.ndim == 4:
    return np.flip(value.transpose(2, 3, 0, 1), axis=(0, 1))
  if layout == CONV1D_1X1 and value.ndim == 3 and value.shape[2] == 1:
    return value[:, :, 0].T
  raise ValueError(f"layout {layout!r} does not apply to a tensor of shape {value.shape}")


def torch_shape(flax_shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  """The PyTorch shape whose `to_flax` has `flax_shape` (for error messages)."""
  if layout == LINEAR and len(flax_shape) == 2:
    return flax_shape[::-1]
  if layout == CONV and len(flax_shape) == 4:
    kh, kw, cin, cout = flax_shape
    return (cout, cin, kh, kw)
  if layout == CONV_TRANSPOSE and len(flax_shape) == 4:
    kh, kw, cin, cout = flax_shape
    return (cin, cout, kh, kw)
  if layout == CONV1D_1X1 and len(flax_shape) == 2:
    return (flax_shape[1], flax_shape[0], 1)
  return tuple(flax_shape)


def import_tensors(
  state: Mapping[str, np.ndarray],
  names: Mapping[str, tuple[tuple[str, ...], str]],
  template: Any,
  *,
  source: str = "the checkpoint",
  used_elsewhere: tuple[str, ...] = (),
) -> Any:
  """Fills the params `template` from `state` by the name map `names`, strictly.

  Args:
    state: {PyTorch name: array}.
    names: {PyTorch name: (Flax param path, layout)}; must cover every leaf of `template`.
    template: params pytree (arrays or `jax.ShapeDtypeStruct`) giving the paths and shapes.
    source: what the tensors are, for the error message.
    used_elsewhere: name prefixes of tensors that the caller imports by other means (e.g. a
      backbone); they are neither unexpected nor imported here.

  Returns:
    params with the structure of `template`, float32 NumPy leaves.

  Raises:
    CheckpointError listing every missing, unexpected and wrongly shaped tensor.
  """
  flat_template = flax.traverse_util.flatten_dict(template)
  # Names whose path this template has (a map may name params of other configurations).
  needed = {name: entry for name, entry in names.items() if entry[0] in flat_template}
  unfilled = set(flat_template) - {path for path, _ in needed.values()}
  if unfilled:  # the name map and the module disagree: a bug in the caller, not in the file
    raise CheckpointError(
      f"{source}: no PyTorch name maps to the params {sorted('/'.join(p) for p in unfilled)}"
    )
  missing = [name for name in needed if name not in state]
  unexpected = [
    name for name in state if name not in needed and not name.startswith(tuple(used_elsewhere))
  ]
  wrong_shapes = {}
  flat = {}
  for name, (path, layout) in needed.items():
    if name not in state:
      continue
    want = tuple(flat_template[path].shape)
    value = np.asarray(state[name], np.float32)
    if tuple(value.shape) != torch_shape(want, layout):
      wrong_shapes[name] = (tuple(value.shape), torch_shape(want, layout))
      continue
    flat[path] = np.ascontiguousarray(to_flax(value, layout))
  if missing or unexpected or wrong_shapes:
    raise CheckpointError(mismatch_report(source, missing, unexpected, wrong_shapes))
  return flax.traverse_util.unflatten_dict(flat)
