"""Official DINO / DINOv2 checkpoints: download, read (.pth, .safetensors, .npz), convert to Flax.

Entry point: `load_backbone(config) -> (module, params)` with `config = default_backbone_config()`.

Resolution order for a named checkpoint without `checkpoint=PATH`:
  1. `<cache_dir>/<name>.npz`   converted Flax params written by an earlier run (no torch needed);
  2. `<cache_dir>/<file>.pth`   the official file, downloaded earlier;
  3. download from the official URL (resumable, checksum-verified when a hash is known, atomic).
Offline, step 3 fails fast with an error naming the URL and `--config.backbone.checkpoint=PATH`.

Every tensor of a checkpoint is accounted for: after known prefixes are stripped and the few
tensors inference does not use are dropped by name (the DINO projection head, DINOv2's iBOT
`mask_token`, a Hugging Face pooler), any missing, unexpected or wrongly shaped tensor is an error
listing them all.
"""

import dataclasses
import hashlib
import logging
import os
import pathlib
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vosjax.models import state_dicts
from vosjax.models import vit
from vosjax.models.state_dicts import CheckpointError

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class PretrainedCheckpoint:
  """One official checkpoint. sha256 is None where the authors publish no hash."""

  name: str
  arch: str
  url: str
  sha256: Optional[str] = None

  @property
  def filename(self) -> str:
    return pathlib.PurePosixPath(urllib.parse.urlparse(self.url).path).name


_DINO = "https://dl.fbaipublicfiles.com/dino"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2"
# URLs from facebookresearch/dino hubconf.py + README and dinov2/hub/backbones.py. Neither project
# publishes checksums (torch.hub loads them without check_hash), so sha256 is None throughout.
PRETRAINED_CHECKPOINTS: dict[str, PretrainedCheckpoint] = {
  c.name: c
  for c in (
    PretrainedCheckpoint(
      "dino_vits16",
      "dino_vits16",
      f"{_DINO}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    ),
    PretrainedCheckpoint(
      "dino_vits8", "dino_vits8", f"{_DINO}/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth"
    ),
    PretrainedCheckpoint(
      "dino_vitb16", "dino_vitb16", f"{_DINO}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
    ),
    PretrainedCheckpoint(
      "dino_vitb8", "dino_vitb8", f"{_DINO}/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"
    ),
    # Full training checkpoints (student, teacher, head, optimizer); the teacher backbone is used.
    PretrainedCheckpoint(
      "dino_vits16_full",
      "dino_vits16",
      f"{_DINO}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain_full_checkpoint.pth",
    ),
    PretrainedCheckpoint(
      "dino_vits8_full",
      "dino_vits8",
      f"{_DINO}/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain_full_checkpoint.pth",
    ),
    PretrainedCheckpoint(
      "dinov2_vits14", "dinov2_vits14", f"{_DINOV2}/dinov2_vits14/dinov2_vits14_pretrain.pth"
    ),
    PretrainedCheckpoint(
      "dinov2_vitb14", "dinov2_vitb14", f"{_DINOV2}/dinov2_vitb14/dinov2_vitb14_pretrain.pth"
    ),
    PretrainedCheckpoint(
      "dinov2_vits14_reg",
      "dinov2_vits14_reg",
      f"{_DINOV2}/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth",
    ),
    PretrainedCheckpoint(
      "dinov2_vitb14_reg",
      "dinov2_vitb14_reg",
      f"{_DINOV2}/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
    ),
  )
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ChecksumMismatchError(CheckpointError):
  """A file's sha256 differs from the recorded one."""


class PretrainedWeightsUnavailableError(RuntimeError):
  """The weights are neither local nor downloadable."""


def default_backbone_config() -> ml_collections.ConfigDict:
  """Backbone settings, meant to live at `config.backbone`."""
  config = ml_collections.ConfigDict()
  config.name = "dino_vits8"
  config.checkpoint = ml_collections.config_dict.placeholder(str)  # local .pth/.safetensors/.npz
  config.cache_dir = os.path.join(os.path.expanduser("~"), ".cache", "vosjax", "checkpoints")
  config.random_init = False  # For tests and benchmarks only: features are meaningless.
  config.dtype = "float32"  # Compute dtype: "float32" or "bfloat16".
  # Frames per forward pass in frozen feature extraction; 0: automatic (2 on CPU, 8 on
  # accelerators).
  config.frame_chunk = 0
  config.allow_download = True
  config.download_timeout_s = 10.0
  return config


def resolve_architecture(name: str) -> vit.ViTArch:
  """Architecture of a checkpoint name or an architecture name."""
  arch_name = PRETRAINED_CHECKPOINTS[name].arch if name in PRETRAINED_CHECKPOINTS else name
  if arch_name not in vit.VIT_ARCHITECTURES:
    known = sorted(set(PRETRAINED_CHECKPOINTS) | set(vit.VIT_ARCHITECTURES))
    raise ValueError(f"unknown backbone name {name!r}; known: {', '.join(known)}")
  return vit.VIT_ARCHITECTURES[arch_name]


# ---------------------------------------------------------------------------------------------
# Download.


def file_sha256(path: os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as stream:
    for block in iter(lambda: stream.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def verify_sha256(path: os.PathLike, expected: Optional[str]) -> None:
  """Raises ChecksumMismatchError if `expected` is given and differs from the file's sha256."""
  if expected is None:
    return
  actual = file_sha256(path)
  if actual != expected.lower():
    raise ChecksumMismatchError(f"{path}: sha256 {actual} does not match expected {expected}")


def _resolve_host(host: str, timeout_s: float) -> None:
  """getaddrinfo ignores socket timeouts, so resolve in a daemon thread to fail fast offline."""
  result: dict[str, Any] = {}

  def resolve():
    try:
      socket.getaddrinfo(host, 443)
    except OSError as error:
      result["error"] = error

  worker = threading.Thread(target=resolve, daemon=True)
  worker.start()
  worker.join(timeout_s)
  if worker.is_alive():
    raise OSError(f"DNS lookup of {host} timed out after {timeout_s:g}s")
  if "error" in result:
    raise result["error"]


def download(
  url: str, destination: os.PathLike, sha256: Optional[str] = None, timeout_s: float = 10.0
) -> pathlib.Path:
  """Downloads `url` to `destination`, resuming a previous `.part` with an HTTP Range request.

  The file only appears at `destination` (by atomic rename) once complete and, when `sha256` is
  given, verified. A checksum mismatch deletes the partial file.

  Raises:
    OSError (incl. urllib.error.URLError) on network failure; ChecksumMismatchError.
  """
  destination = pathlib.Path(destination)
  destination.parent.mkdir(parents=True, exist_ok=True)
  partial = destination.with_name(destination.name + ".part")
  offset = partial.stat().st_size if partial.exists() else 0
  host = urllib.parse.urlparse(url).hostname
  if host:
    _resolve_host(host, timeout_s)
  request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
  expected_size = None
  try:
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
      if offset and response.status != 206:  # Server ignored the Range header: start over.
        offset = 0
      length = response.headers.get("Content-Length")
      expected_size = offset + int(length) if length is not None else None
      with open(partial, "ab" if offset else "wb") as stream:
        for block in iter(lambda: response.read(1 << 20), b""):
          stream.write(block)
  except urllib.error.HTTPError as error:
    if not (offset and error.code == 416):  # 416: the partial file already holds everything.
      raise
  size = partial.stat().st_size
  if expected_size is not None and size != expected_size:
    raise OSError(
      f"download of {url} stopped at {size} of {expected_size} bytes; "
      f"rerun to resume from {partial}"
    )
  try:
    verify_sha256(partial, sha256)
  except ChecksumMismatchError:
    partial.unlink()
    raise
  os.replace(partial, destination)
  return destination


def _unavailable(spec: PretrainedCheckpoint, cached: pathlib.Path, reason: str) -> Exception:
  return PretrainedWeightsUnavailableError(
    f"Pretrained weights {spec.name!r} are not available locally ({reason}). Download\n  "
    f"{spec.url}\non a machine with internet access, then pass "
    f"--config.backbone.checkpoint=PATH (or place the file at {cached})."
  )


def resolve_checkpoint_file(config: ml_collections.ConfigDict) -> pathlib.Path:
  """Local checkpoint path for `config`: the explicit file, a cached file, or a fresh download."""
  if config.checkpoint:
    path = pathlib.Path(config.checkpoint).expanduser()
    if not path.is_file():
      raise FileNotFoundError(f"backbone.checkpoint={config.checkpoint}: no such file")
    return path
  if config.name not in PRETRAINED_CHECKPOINTS:
    raise ValueError(
      f"no official checkpoint named {config.name!r} (known: "
      f"{', '.join(PRETRAINED_CHECKPOINTS)}); set --config.backbone.checkpoint=PATH"
    )
  spec = PRETRAINED_CHECKPOINTS[config.name]
  cache_dir = pathlib.Path(config.cache_dir).expanduser()
  converted = cache_dir / f"{spec.name}.npz"
  if converted.is_file():
    return converted
  cached = cache_dir / spec.filename
  if cached.is_file():
    verify_sha256(cached, spec.sha256)
    return cached
  if not config.allow_download:
    raise _unavailable(spec, cached, "downloads disabled by backbone.allow_download=False")
  logging.info("Downloading %s to %s", spec.url, cached)
  try:
    return download(spec.url, cached, spec.sha256, config.download_timeout_s)
  except (OSError, urllib.error.URLError) as error:
    raise _unavailable(spec, cached, f"download failed: {error}") from error


# ---------------------------------------------------------------------------------------------
# Reading state dicts.


def read_state_dict(path: os.PathLike, prefer: str = "teacher") -> dict[str, np.ndarray]:
  """Reads a DINO checkpoint (`state_dicts.read_state_dict`: .pth/.pt, .safetensors or a flat .npz)
  into a flat {name: float32 array} dict.

  Full DINO checkpoints hold `teacher` and `student` state dicts; `prefer` picks one (DINO
  recommends the teacher). `module.` prefixes (DDP) are stripped, and if the names carry a
  `backbone.` prefix only those tensors are kept, after dropping the DINO projection `head.`.
  """
  state = state_dicts.read_state_dict(path, prefer)
  if any(name.startswith("backbone.") for name in state):
    stray = [n for n in state if not n.startswith(("backbone.", "head."))]
    if stray:
      raise CheckpointError(f"{path}: tensors outside backbone./head.: {', '.join(sorted(stray))}")
    state = {n[len("backbone.") :]: v for n, v in state.items() if n.startswith("backbone.")}
  return state


# Hugging Face transformers names (ViTModel for DINO, Dinov2[WithRegisters]Model) -> DINO names.
_HF_RENAMES = [
  (r"embeddings\.cls_token", "cls_token"),
  (r"embeddings\.mask_token", "mask_token"),
  (r"embeddings\.position_embeddings", "pos_embed"),
  (r"embeddings\.register_tokens", "register_tokens"),
  (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
  (r"encoder\.layer\.(\d+)\.(?:norm1|layernorm_before)\.(weight|bias)", r"blocks.\1.norm1.\2"),
  (r"encoder\.layer\.(\d+)\.(?:norm2|layernorm_after)\.(weight|bias)", r"blocks.\1.norm2.\2"),
  (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
  (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
  (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
  (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
  (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
  (r"layernorm\.(weight|bias)", r"norm.\1"),
]
_HF_QKV = re.compile(
  r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)"
)
# Tensors that inference does not use, dropped by exact name.
_UNUSED = {
  "mask_token": "DINOv2 iBOT mask token (masked training only)",
  "pooler.dense.weight": "HF ViT pooler",
  "pooler.dense.bias": "HF ViT pooler",
}


def to_dino_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Maps timm or Hugging Face names and layouts onto the original DINO/DINOv2 names."""
  state = dict(state)
  for prefix in ("vit.", "dinov2.", "model."):
    if state and all(n.startswith(prefix) for n in state):
      state = {n[len(prefix) :]: v for n, v in state.items()}
  if any(n.startswith(("embeddings.", "encoder.layer.")) for n in state):
    renamed, qkv_parts = {}, {}
    for name, value in state.items():
      match = _HF_QKV.fullmatch(name)
      if match:
        qkv_parts.setdefault((match[1], match[3]), {})[match[2]] = value
        continue
      for pattern, replacement in _HF_RENAMES:
        if re.fullmatch(pattern, name):
          name = re.sub(pattern, replacement, name)
          break
      renamed[name] = value
    for (block, kind), parts in qkv_parts.items():
      if set(parts) != {"query", "key", "value"}:
        raise CheckpointError(f"block {block}: incomplete query/key/value {kind}: {sorted(parts)}")
      renamed[f"blocks.{block}.attn.qkv.{kind}"] = np.concatenate(
        [parts["query"], parts["key"], parts["value"]], axis=0
      )
    state = renamed
  if "reg_token" in state:
    # timm's DINOv2-with-registers layout: CLS position folded into cls_token, none in pos_embed.
    state["register_tokens"] = state.pop("reg_token")
    pos = state.get("pos_embed")
    if pos is not None:
      state["pos_embed"] = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
  return state


# ---------------------------------------------------------------------------------------------
# Conversion to Flax.


def _expected_tensors(arch: vit.ViTArch) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """DINO tensor name -> (Flax param path, PyTorch shape)."""
  c, p, hidden = arch.embed_dim, arch.patch_size, arch.mlp_dim
  expected = {
    "cls_token": (("cls_token",), (1, 1, c)),
    "pos_embed": (("pos_embed",), (1, 1 + arch.pos_embed_grid**2, c)),
    "patch_embed.proj.weight": (("patch_embed", "kernel"), (c, 3, p, p)),
    "patch_embed.proj.bias": (("patch_embed", "bias"), (c,)),
    "norm.weight": (("norm", "scale"), (c,)),
    "norm.bias": (("norm", "bias"), (c,)),
  }
  if arch.num_register_tokens:
    expected["register_tokens"] = (("register_tokens",), (1, arch.num_register_tokens, c))
  layers = {
    "norm1": (c, c),
    "attn.qkv": (3 * c, c),
    "attn.proj": (c, c),
    "norm2": (c, c),
    "mlp.fc1": (hidden, c),
    "mlp.fc2": (c, hidden),
  }
  for i in range(arch.depth):
    for layer, (out_dim, in_dim) in layers.items():
      path = (f"blocks_{i}",) + tuple(layer.split("."))
      is_norm = layer.startswith("norm")
      expected[f"blocks.{i}.{layer}.weight"] = (
        path + ("scale" if is_norm else "kernel",),
        (c,) if is_norm else (out_dim, in_dim),
      )
      expected[f"blocks.{i}.{layer}.bias"] = (path + ("bias",), (out_dim,))
    if arch.layer_scale:
      for scale in ("ls1", "ls2"):
        expected[f"blocks.{i}.{scale}.gamma"] = ((f"blocks_{i}", scale, "gamma"), (c,))
  return expected


def convert_state_dict(
  state: Mapping[str, np.ndarray], arch: vit.ViTArch, source: str = "checkpoint"
) -> Params:
  """Converts a state dict (DINO, timm or Hugging Face names) into Flax params for `arch`."""
  state = {n: v for n, v in to_dino_names(state).items() if n not in _UNUSED}
  expected = _expected_tensors(arch)
  missing = [n for n in expected if n not in state]
  unexpected = [n for n in state if n not in expected]
  wrong_shapes = {
    n: (tuple(state[n].shape), shape)
    for n, (_, shape) in expected.items()
    if n in state and tuple(state[n].shape) != shape
  }
  if missing or unexpected or wrong_shapes:
    raise CheckpointError(state_dicts.mismatch_report(source, missing, unexpected, wrong_shapes))
  flat = {}
  for name, (path, _) in expected.items():
    value = np.asarray(state[name], np.float32)
    if path[-1] == "kernel":
      # Conv [out, in, kh, kw] -> [kh, kw, in, out]; Linear [out, in] -> [in, out].
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    flat[path] = jnp.asarray(value)
  return flax.traverse_util.unflatten_dict(flat)


def _param_shapes(arch: vit.ViTArch) -> Any:
  """Param tree of jax.ShapeDtypeStruct (traced only, nothing computed)."""
  return jax.eval_shape(
    vit.VisionTransformer(arch).init,
    jax.random.PRNGKey(0),
    jnp.zeros((1, arch.patch_size, arch.patch_size, 3)),
  )["params"]


def save_params(path: os.PathLike, params: Params, arch_name: str) -> None:
  """Writes converted params as .npz (atomically), tagged with the architecture name."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  flat = {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params).items()}
  partial = path.with_name(path.name + ".part.npz")
  np.savez(partial, __arch__=np.array(arch_name), **flat)
  os.replace(partial, path)


def load_params(path: os.PathLike, arch: vit.ViTArch) -> Params:
  """Reads params written by `save_params`, checking every array against `arch`."""
  try:
    with np.load(path, allow_pickle=False) as archive:
      flat = {tuple(k.split("/")): archive[k] for k in archive.files if k != "__arch__"}
  except Exception as error:  # zipfile.BadZipFile, EOFError, ValueError, ...
    raise CheckpointError(f"{path}: cannot read converted params: {error}") from error
  expected = {
    k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(_param_shapes(arch)).items()
  }
  missing = ["/".join(k) for k in expected if k not in flat]
  unexpected = ["/".join(k) for k in flat if k not in expected]
  wrong_shapes = {
    "/".join(k): (flat[k].shape, s) for k, s in expected.items() if k in flat and flat[k].shape != s
  }
  if missing or unexpected or wrong_shapes:
    raise CheckpointError(state_dicts.mismatch_report(str(path), missing, unexpected, wrong_shapes))
  return flax.traverse_util.unflatten_dict(
    {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}
  )


def load_params_file(path: os.PathLike, arch: vit.ViTArch, prefer: str = "teacher") -> Params:
  """Flax params from a .npz (converted), .safetensors or PyTorch checkpoint file."""
  path = pathlib.Path(path)
  if path.suffix == ".npz":
    return load_params(path, arch)
  return convert_state_dict(read_state_dict(path, prefer), arch, source=str(path))


def random_params(arch: vit.ViTArch, seed: int = 0) -> Params:
  """Random params in NumPy (no XLA compile): N(0, 0.02) clipped at 2 sigma for weights and tokens,
  ones for norm scales and layer scales (the DINOv2 hub value), zeros for biases."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in flax.traverse_util.flatten_dict(_param_shapes(arch)).items():
    if path[-1] in ("scale", "gamma"):
      value = np.ones(shape.shape)
    elif path[-1] == "bias":
      value = np.zeros(shape.shape)
    else:
      value = 0.02 * np.clip(rng.standard_normal(shape.shape), -2.0, 2.0)
    flat[path] = jnp.asarray(value, jnp.float32)
  return flax.traverse_util.unflatten_dict(flat)


def _warn_random_features(name: str) -> None:
  banner = "!" * 78
  logging.warning(
    "\n%s\n!!! backbone.random_init=True: %s has RANDOM weights. Its features are "
    "meaningless;\n!!! use this only for tests and benchmarks.\n%s",
    banner,
    name,
    banner,
  )


def backbone_module(config: ml_collections.ConfigDict, arch: vit.ViTArch) -> vit.VisionTransformer:
  """The ViT module of `arch` computing in `config.dtype` (see default_backbone_config)."""
  if config.dtype not in _DTYPES:
    raise ValueError(f"backbone.dtype must be one of {sorted(_DTYPES)}, got {config.dtype!r}")
  return vit.VisionTransformer(arch, dtype=_DTYPES[config.dtype])


def load_backbone(config: ml_collections.ConfigDict) -> tuple[vit.VisionTransformer, Params]:
  """Builds the backbone named by `config.name` and its params (see default_backbone_config).

  Returns:
    (module, params) for `module.apply({"params": params}, images)`.
  """
  arch = resolve_architecture(config.name)
  module = backbone_module(config, arch)
  if config.random_init:
    _warn_random_features(config.name)
    return module, random_params(arch, seed=0)
  path = resolve_checkpoint_file(config)
  params = load_params_file(path, arch)
  if not config.checkpoint and path.suffix != ".npz":
    # Cache the conversion so later runs read plain arrays and need no torch.
    save_params(
      pathlib.Path(config.cache_dir).expanduser() / f"{config.name}.npz",
      params,
      PRETRAINED_CHECKPOINTS[config.name].arch,
    )
  return module, params
