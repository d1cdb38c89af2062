"""`config.init.checkpoint` for every method: reading state dicts, vosjax workdirs, strict errors.

The official checkpoints of each method are tested end to end against PyTorch in
tests/test_betrayed_official_checkpoint.py and tests/test_motion_grouping_official_checkpoint.py.
"""

import sys

import jax
import numpy as np
import pytest
import torch

from vosjax import train
from vosjax.core import checkpoint as checkpoint_lib
from vosjax.core import sharding
from vosjax.data import movi_config
from vosjax.methods import motion_grouping
from vosjax.methods import slot_attention
from vosjax.models import state_dicts


def _tensors(seed: int) -> dict[str, torch.Tensor]:
  generator = torch.Generator().manual_seed(seed)
  return {
    "layer.weight": torch.randn(3, 2, generator=generator),
    "layer.bias": torch.randn(3, generator=generator, dtype=torch.float64),
  }


def _assert_state(state, expected):
  assert sorted(state) == sorted(expected)
  for name, value in expected.items():
    assert state[name].dtype == np.float32
    np.testing.assert_array_equal(state[name], value.to(torch.float32).numpy())


@pytest.mark.parametrize("layout", ["plain", "training", "ddp_state_dict"])
def test_read_state_dict_unwraps_training_checkpoints(tmp_path, layout):
  tensors = _tensors(0)
  saved = {
    "plain": tensors,
    # The training checkpoints of SSL-UVOS and Motion Grouping.
    "training": {
      "iteration": 60000,
      "loss": torch.tensor(0.3),
      "model_state_dict": tensors,
      "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-5}]},
    },
    "ddp_state_dict": {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tensors.items()}},
  }[layout]
  torch.save(saved, tmp_path / "checkpoint.pth")
  _assert_state(state_dicts.read_state_dict(tmp_path / "checkpoint.pth"), tensors)


def test_unreadable_layouts_are_clear_errors(tmp_path):
  torch.save({"iteration": 1, "weights": [torch.zeros(2)]}, tmp_path / "no_state.pth")
  with pytest.raises(state_dicts.CheckpointError, match=r"no state dict found.*'iteration'"):
    state_dicts.read_state_dict(tmp_path / "no_state.pth")
  torch.save(
    {"iteration": 1, "model_state_dict": {"a": torch.zeros(2), "step": 3}}, tmp_path / "mixed.pth"
  )
  with pytest.raises(state_dicts.CheckpointError, match=r"non-tensor entries: \['step'\]"):
    state_dicts.read_state_dict(tmp_path / "mixed.pth")
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    state_dicts.read_state_dict(tmp_path / "missing.pth")


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_numpy_formats_round_trip_without_torch(tmp_path, monkeypatch, suffix):
  expected = {name: value.to(torch.float32).numpy() for name, value in _tensors(1).items()}
  path = state_dicts.write_state_dict(tmp_path / f"weights{suffix}", expected)
  assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails
  state = state_dicts.read_state_dict(path)
  assert sorted(state) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(state[name], value)
  with pytest.raises(ValueError, match=r"\.safetensors or \.npz"):
    state_dicts.write_state_dict(tmp_path / "weights.pth", expected)


def test_import_tensors_is_strict_and_converts_layouts():
  template = {
    "dense": {
      "kernel": jax.ShapeDtypeStruct((2, 3), np.float32),
      "bias": jax.ShapeDtypeStruct((3,), np.float32),
    }
  }
  names = {
    "fc.weight": (("dense", "kernel"), state_dicts.LINEAR),
    "fc.bias": (("dense", "bias"), state_dicts.COPY),
  }
  weight = np.arange(6, dtype=np.float32).reshape(3, 2)
  params = state_dicts.import_tensors(
    {
      "fc.weight": weight,
      "fc.bias": np.zeros(3, np.float32),
      "backbone.x": np.zeros(1, np.float32),
    },
    names,
    template,
    used_elsewhere=("backbone.",),
  )
  np.testing.assert_array_equal(params["dense"]["kernel"], weight.T)
  with pytest.raises(state_dicts.CheckpointError) as error:
    state_dicts.import_tensors(
      {"fc.weight": weight.T, "backbone.x": np.zeros(1, np.float32)},
      names,
      template,
      source="test.pth",
    )
  assert str(error.value).splitlines() == [
    "test.pth does not fit the architecture:",
    "  missing (1): fc.bias",
    "  unexpected (1): backbone.x",
    "  wrong shape: fc.weight is (2, 3), expected (3, 2)",
  ]
  with pytest.raises(state_dicts.CheckpointError, match="no PyTorch name maps to.*dense/bias"):
    state_dicts.import_tensors({}, {"fc.weight": names["fc.weight"]}, template)


def _tiny_mg_config(seed: int, checkpoint=None, decoder_conv_width: int = 8):
  """Motion Grouping, narrow (8-16 channels) at 32x32."""
  config = motion_grouping.default_config()
  config.seed = seed
  config.data = movi_config.default_data_config()
  config.data.resolution = (32, 32)
  config.model.encoder_widths = (8, 8, 16)
  config.model.slot_dim = config.model.slot_mlp_hidden_size = 16
  config.model.decoder_transpose_widths = (8, 8, 8)
  config.model.decoder_conv_width = decoder_conv_width
  config.model.num_iterations = 2
  config.init.checkpoint = None if checkpoint is None else str(checkpoint)
  return config


def _create_state(config):
  return train.create_train_state(
    motion_grouping,
    motion_grouping.make_model(config),
    config,
    motion_grouping.make_optimizer(config),
    sharding.make_mesh(),
  )[0]


def test_vosjax_workdir_as_init_checkpoint(tmp_path):
  """Fine-tuning from another run: its params (newest step), a fresh optimizer and step."""
  trained = _create_state(_tiny_mg_config(seed=1))
  trained = trained.replace(
    step=trained.step + 5, params=jax.tree.map(lambda p: p + 0.5, trained.params)
  )
  manager = checkpoint_lib.CheckpointManager(str(tmp_path / "run"))
  manager.save(5, trained, {"step": 5, "data_step": 5})
  manager.close()
  for path in (tmp_path / "run", tmp_path / "run" / "checkpoints"):
    state = _create_state(_tiny_mg_config(seed=2, checkpoint=path))
    assert int(state.step) == 0
    jax.tree.map(np.testing.assert_array_equal, state.params, trained.params)
    jax.tree.map(
      np.testing.assert_array_equal,
      state.opt_state,
      motion_grouping.make_optimizer(_tiny_mg_config(seed=2)).init(trained.params),
    )

  wider = _tiny_mg_config(seed=2, checkpoint=tmp_path / "run", decoder_conv_width=12)
  with pytest.raises(state_dicts.CheckpointError) as error:
    _create_state(wider)
  assert "(step 5) does not fit" in str(error.value)
  assert "wrong shape: decoder/conv/conv/kernel is (5, 5, 8, 8), expected (5, 5, 8, 12)" in str(
    error.value
  )
  (tmp_path / "empty").mkdir()
  with pytest.raises(state_dicts.CheckpointError, match="not a vosjax workdir"):
    _create_state(_tiny_mg_config(seed=2, checkpoint=tmp_path / "empty"))


def test_method_without_official_import_says_so(tmp_path):
  torch.save(_tensors(2), tmp_path / "weights.pth")
  config = slot_attention.default_config()
  config.data = movi_config.default_data_config()
  config.init.checkpoint = str(tmp_path / "weights.pth")
  with pytest.raises(state_dicts.CheckpointError, match="slot_attention.*imports no PyTorch"):
    train.create_train_state(
      slot_attention,
      slot_attention.make_model(config),
      config,
      slot_attention.make_optimizer(config),
      sharding.make_mesh(),
    )


def test_eval_without_checkpoint_or_import_names_both(tmp_path):
  with pytest.raises(FileNotFoundError, match="init.checkpoint"):
    train.evaluate_checkpoint(_tiny_mg_config(seed=0), str(tmp_path))
