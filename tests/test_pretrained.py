"""Checkpoint reading, conversion, caching and download (against a loopback HTTP server)."""

import argparse
import hashlib
import http.server
import logging
import socket
import subprocess
import sys
import threading
import time

import flax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch

from references import official_dino_torch as official
from helpers.environment import PYTHON, REPO, subprocess_env
from vosjax.models import pretrained
from vosjax.models import vit

# A small DINO-layout ViT (names as in the official state dicts).
TINY_DINO = vit.ViTArch(patch_size=16, embed_dim=32, depth=2, num_heads=2, pos_embed_grid=4)


def tiny_state_dict(seed: int) -> dict[str, torch.Tensor]:
  model = official.VisionTransformer(patch=16, dim=32, depth=2, num_heads=2, grid=4)
  official.randomize_parameters_(model, seed)
  return {k: v.clone() for k, v in model.state_dict().items()}


def as_numpy(state):
  return {k: v.numpy() for k, v in state.items()}


def assert_params_equal(actual, expected):
  flat_actual = flax.traverse_util.flatten_dict(actual)
  flat_expected = flax.traverse_util.flatten_dict(expected)
  assert flat_actual.keys() == flat_expected.keys()
  for key in flat_expected:
    np.testing.assert_array_equal(flat_actual[key], flat_expected[key], err_msg=str(key))


def backbone_config(**overrides):
  config = pretrained.default_backbone_config()
  config.update(overrides)
  return config


def test_backbone_only_pth_converts_like_the_state_dict(tmp_path):
  state = tiny_state_dict(0)
  torch.save(state, tmp_path / "backbone.pth")
  params = pretrained.load_params_file(tmp_path / "backbone.pth", TINY_DINO)
  assert_params_equal(params, pretrained.convert_state_dict(as_numpy(state), TINY_DINO))
  # Linear [out, in] -> kernel [in, out]; conv [out, in, kh, kw] -> [kh, kw, in, out].
  np.testing.assert_array_equal(
    params["blocks_1"]["mlp"]["fc1"]["kernel"], state["blocks.1.mlp.fc1.weight"].numpy().T
  )
  np.testing.assert_array_equal(
    params["patch_embed"]["kernel"][3, 5, 1], state["patch_embed.proj.weight"].numpy()[:, 1, 3, 5]
  )


def test_full_dino_checkpoint_prefixes_and_teacher_default(tmp_path):
  teacher, student = tiny_state_dict(1), tiny_state_dict(2)
  head = {"head.mlp.0.weight": torch.zeros(8, 32), "head.last_layer.weight_g": torch.ones(16, 1)}
  checkpoint = {
    "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **head},
    "student": {
      **{f"module.backbone.{k}": v for k, v in student.items()},
      **{f"module.{k}": v for k, v in head.items()},
    },
    "epoch": 100,
    "args": argparse.Namespace(arch="vit_small", lr=5e-4),
  }
  torch.save(checkpoint, tmp_path / "full.pth")
  assert_params_equal(
    pretrained.load_params_file(tmp_path / "full.pth", TINY_DINO),
    pretrained.convert_state_dict(as_numpy(teacher), TINY_DINO),
  )
  assert_params_equal(
    pretrained.load_params_file(tmp_path / "full.pth", TINY_DINO, "student"),
    pretrained.convert_state_dict(as_numpy(student), TINY_DINO),
  )


def test_module_prefix_is_stripped(tmp_path):
  state = tiny_state_dict(3)
  torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")
  assert_params_equal(
    pretrained.load_params_file(tmp_path / "ddp.pth", TINY_DINO),
    pretrained.convert_state_dict(as_numpy(state), TINY_DINO),
  )


def test_tensor_outside_backbone_and_head_is_an_error(tmp_path):
  state = {f"backbone.{k}": v for k, v in tiny_state_dict(4).items()}
  state["projector.weight"] = torch.zeros(2)
  torch.save(state, tmp_path / "odd.pth")
  with pytest.raises(pretrained.CheckpointError, match="projector.weight"):
    pretrained.load_params_file(tmp_path / "odd.pth", TINY_DINO)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
def test_truncated_file_is_a_clear_error(tmp_path, suffix):
  state = tiny_state_dict(5)
  path = tmp_path / f"weights{suffix}"
  if suffix == ".pth":
    torch.save(state, path)
  elif suffix == ".safetensors":
    safetensors.numpy.save_file(as_numpy(state), str(path))
  else:
    pretrained.save_params(path, pretrained.convert_state_dict(as_numpy(state), TINY_DINO), "tiny")
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(pretrained.CheckpointError, match=str(path)):
    pretrained.load_params_file(path, TINY_DINO)


def test_wrong_architecture_lists_missing_unexpected_and_shapes():
  state = as_numpy(tiny_state_dict(6))
  state["blocks.0.attn.extra"] = np.zeros(3, np.float32)
  other = TINY_DINO.replace(layer_scale=True, pos_embed_grid=5, depth=3)
  with pytest.raises(pretrained.CheckpointError) as error:
    pretrained.convert_state_dict(state, other, source="tiny.pth")
  message = str(error.value)
  assert "tiny.pth does not fit" in message
  assert "blocks.0.ls1.gamma" in message and "blocks.2.norm1.weight" in message  # missing
  assert "unexpected (1): blocks.0.attn.extra" in message
  assert "wrong shape: pos_embed is (1, 17, 32), expected (1, 26, 32)" in message


def test_safetensors_with_official_names(tmp_path):
  state = as_numpy(tiny_state_dict(7))
  safetensors.numpy.save_file(state, str(tmp_path / "model.safetensors"))
  assert_params_equal(
    pretrained.load_params_file(tmp_path / "model.safetensors", TINY_DINO),
    pretrained.convert_state_dict(state, TINY_DINO),
  )


def hugging_face_names(state, layer_scale: bool, prefix: str):
  """Renames a DINO state dict the way transformers' ViTModel / Dinov2Model name it."""
  renamed = {
    "embeddings.cls_token": state["cls_token"],
    "embeddings.position_embeddings": state["pos_embed"],
    "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
    "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
    "layernorm.weight": state["norm.weight"],
    "layernorm.bias": state["norm.bias"],
  }
  for i in range(2):
    block, layer = f"blocks.{i}", f"encoder.layer.{i}"
    for kind in ("weight", "bias"):
      for part, value in zip(
        ("query", "key", "value"), np.split(state[f"{block}.attn.qkv.{kind}"], 3, axis=0)
      ):
        renamed[f"{layer}.attention.attention.{part}.{kind}"] = value
      renamed[f"{layer}.attention.output.dense.{kind}"] = state[f"{block}.attn.proj.{kind}"]
      if layer_scale:  # Dinov2Layer names
        renamed[f"{layer}.norm1.{kind}"] = state[f"{block}.norm1.{kind}"]
        renamed[f"{layer}.norm2.{kind}"] = state[f"{block}.norm2.{kind}"]
        renamed[f"{layer}.mlp.fc1.{kind}"] = state[f"{block}.mlp.fc1.{kind}"]
        renamed[f"{layer}.mlp.fc2.{kind}"] = state[f"{block}.mlp.fc2.{kind}"]
      else:  # ViTLayer names
        renamed[f"{layer}.layernorm_before.{kind}"] = state[f"{block}.norm1.{kind}"]
        renamed[f"{layer}.layernorm_after.{kind}"] = state[f"{block}.norm2.{kind}"]
        renamed[f"{layer}.intermediate.dense.{kind}"] = state[f"{block}.mlp.fc1.{kind}"]
        renamed[f"{layer}.output.dense.{kind}"] = state[f"{block}.mlp.fc2.{kind}"]
    if layer_scale:
      renamed[f"{layer}.layer_scale1.lambda1"] = state[f"{block}.ls1.gamma"]
      renamed[f"{layer}.layer_scale2.lambda1"] = state[f"{block}.ls2.gamma"]
  if layer_scale:
    renamed["embeddings.mask_token"] = np.zeros((1, 32), np.float32)
  else:
    renamed["pooler.dense.weight"] = np.zeros((32, 32), np.float32)
    renamed["pooler.dense.bias"] = np.zeros((32,), np.float32)
  return {prefix + k: v for k, v in renamed.items()}


@pytest.mark.parametrize("layer_scale,prefix", [(False, ""), (True, "dinov2.")])
def test_hugging_face_names(layer_scale, prefix):
  state = as_numpy(tiny_state_dict(8))
  arch = TINY_DINO.replace(layer_scale=layer_scale)
  if layer_scale:
    for i in range(2):
      state[f"blocks.{i}.ls1.gamma"] = np.full(32, 0.5 + i, np.float32)
      state[f"blocks.{i}.ls2.gamma"] = np.full(32, 2.0 + i, np.float32)
  assert_params_equal(
    pretrained.convert_state_dict(hugging_face_names(state, layer_scale, prefix), arch),
    pretrained.convert_state_dict(state, arch),
  )


def test_converted_params_save_and_load(tmp_path):
  params = pretrained.convert_state_dict(as_numpy(tiny_state_dict(9)), TINY_DINO)
  pretrained.save_params(tmp_path / "tiny.npz", params, "tiny")
  assert_params_equal(pretrained.load_params_file(tmp_path / "tiny.npz", TINY_DINO), params)
  with pytest.raises(pretrained.CheckpointError, match="wrong shape: pos_embed"):
    pretrained.load_params(tmp_path / "tiny.npz", TINY_DINO.replace(pos_embed_grid=6))


@pytest.fixture(scope="module")
def vits16_state(tmp_path_factory):
  """A random state dict with the real DINO ViT-S/16 shapes, saved under its official name."""
  model = official.randomize_parameters_(official.VisionTransformer(**official.DINO_VITS16), 10)
  state = model.state_dict()
  path = tmp_path_factory.mktemp("official") / "dino_deitsmall16_pretrain.pth"
  torch.save(state, path)
  return path, as_numpy(state)


def test_load_backbone_uses_cache_then_converted_npz(tmp_path, vits16_state):
  path, state = vits16_state
  cache = tmp_path / "cache"
  cache.mkdir()
  (cache / path.name).symlink_to(path)
  config = backbone_config(name="dino_vits16", cache_dir=str(cache), allow_download=False)
  module, params = pretrained.load_backbone(config)
  assert module.arch == vit.VIT_ARCHITECTURES["dino_vits16"]
  expected = pretrained.convert_state_dict(state, module.arch)
  assert_params_equal(params, expected)
  assert (cache / "dino_vits16.npz").is_file()
  (cache / path.name).unlink()  # The next run needs neither the .pth nor torch.
  assert_params_equal(pretrained.load_backbone(config)[1], expected)


def test_explicit_checkpoint_and_convert_command(tmp_path, vits16_state):
  path, state = vits16_state
  command = [PYTHON, "-m", "vosjax.convert", str(path), str(tmp_path / "s16.npz")]
  proc = subprocess.run(
    command + ["--backbone", "dino_vits16"],
    cwd=REPO,
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Flax arrays of dino_vits16 from {path} to {tmp_path / 's16.npz'}" in proc.stdout
  config = backbone_config(
    name="dino_vits16", checkpoint=str(tmp_path / "s16.npz"), dtype="bfloat16", allow_download=False
  )
  module, params = pretrained.load_backbone(config)
  assert module.dtype == jnp.bfloat16
  assert_params_equal(params, pretrained.convert_state_dict(state, module.arch))
  with pytest.raises(FileNotFoundError, match="no_such.pth"):
    pretrained.load_backbone(backbone_config(checkpoint=str(tmp_path / "no_such.pth")))


def test_offline_without_file_names_url_and_config_key(tmp_path):
  config = backbone_config(name="dinov2_vitb14_reg", cache_dir=str(tmp_path), allow_download=False)
  with pytest.raises(pretrained.PretrainedWeightsUnavailableError) as error:
    pretrained.load_backbone(config)
  message = str(error.value)
  assert (
    "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth" in message
  )
  assert "--config.backbone.checkpoint=PATH" in message


def test_download_fails_fast_when_unreachable(tmp_path):
  with socket.socket() as probe:  # A loopback port with nothing listening.
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  start = time.monotonic()
  with pytest.raises(OSError):
    pretrained.download(f"http://127.0.0.1:{port}/w.pth", tmp_path / "w.pth", timeout_s=2.0)
  assert time.monotonic() - start < 5.0
  assert not (tmp_path / "w.pth").exists()


class _RangeServer:
  """Loopback HTTP server of one payload, honouring `Range: bytes=N-` unless told not to."""

  def __init__(self, payload: bytes, honour_range: bool = True):
    self.payload, self.honour_range, self.ranges = payload, honour_range, []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # pylint: disable=invalid-name
        requested = self.headers.get("Range")
        server.ranges.append(requested)
        start = int(requested[len("bytes=") : -1]) if requested and server.honour_range else 0
        if start >= len(server.payload):
          self.send_response(416)  # Range Not Satisfiable, as real servers answer.
          self.end_headers()
          return
        body = server.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dino.pth"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.mark.parametrize("honour_range", [True, False])
def test_download_resumes_and_verifies_checksum(tmp_path, honour_range):
  payload = np.random.default_rng(11).bytes(300_000)
  sha256 = hashlib.sha256(payload).hexdigest()
  server = _RangeServer(payload, honour_range)
  try:
    destination = tmp_path / "dino.pth"
    (tmp_path / "dino.pth.part").write_bytes(payload[:120_000])  # An interrupted download.
    assert pretrained.download(server.url, destination, sha256) == destination
    assert destination.read_bytes() == payload
    assert not (tmp_path / "dino.pth.part").exists()
    assert server.ranges == ["bytes=120000-"]
    # Interrupted after the last byte but before the rename: the server answers 416 (or 200).
    (tmp_path / "again.pth.part").write_bytes(payload)
    assert pretrained.download(server.url, tmp_path / "again.pth", sha256).read_bytes() == payload
    # A corrupt download: the partial file is removed and nothing appears at the destination.
    with pytest.raises(pretrained.ChecksumMismatchError, match="does not match"):
      pretrained.download(server.url, tmp_path / "other.pth", "0" * 64)
    assert not (tmp_path / "other.pth").exists()
    assert not (tmp_path / "other.pth.part").exists()
  finally:
    server.close()


def test_verify_sha256_of_local_file(tmp_path):
  path = tmp_path / "weights.bin"
  path.write_bytes(b"dino weights")
  pretrained.verify_sha256(path, hashlib.sha256(b"dino weights").hexdigest().upper())
  pretrained.verify_sha256(path, None)
  with pytest.raises(pretrained.ChecksumMismatchError, match=str(path)):
    pretrained.verify_sha256(path, hashlib.sha256(b"other").hexdigest())


def test_missing_torch_gives_install_hint(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # What `import torch` sees without torch.
  (tmp_path / "weights.pth").write_bytes(b"a PyTorch file")
  with pytest.raises(ImportError, match="needs torch"):
    pretrained.read_state_dict(tmp_path / "weights.pth")


def test_random_init_warns_loudly(caplog):
  with caplog.at_level(logging.WARNING):
    module, params = pretrained.load_backbone(
      backbone_config(name="dinov2_vits14_reg", random_init=True)
    )
  assert "RANDOM weights" in caplog.text
  assert params["register_tokens"].shape == (1, 4, 384)
  assert module.arch.interpolate_antialias


def test_config_errors():
  with pytest.raises(ValueError, match="unknown backbone name 'dino_vitx'"):
    pretrained.load_backbone(backbone_config(name="dino_vitx", random_init=True))
  with pytest.raises(ValueError, match="backbone.dtype"):
    pretrained.load_backbone(backbone_config(dtype="float16", random_init=True))


def test_checkpoint_table_points_at_known_architectures():
  for spec in pretrained.PRETRAINED_CHECKPOINTS.values():
    assert spec.arch in vit.VIT_ARCHITECTURES
    assert spec.url.startswith("https://dl.fbaipublicfiles.com/dino")
    assert spec.filename.endswith(".pth")
