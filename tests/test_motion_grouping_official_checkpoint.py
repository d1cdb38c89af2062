"""The official Motion Grouping checkpoints through `config.init.checkpoint`, against PyTorch.

The official model (tests/references/official_motion_grouping_torch.py, a stock-PyTorch
transcription with the official module names) gets random weights from a fixed seed and one Adam
step, and is saved the way the official `src/train.py` saves (`{"iteration", "model_state_dict",
"optimizer_state_dict", "loss"}`). vosjax loads that file as users do (`--config.init.checkpoint`),
and on real OpenCV DIS flow of DAVIS frames we compare what users see: the slot masks, the soft
foreground (`foreground_probability`, as the DAVIS evaluation uses it) and the foreground that
`predict` (`vosjax.segment`) gives. The default variant is the official layout at narrow widths and
64x112; the `slow` one has the official widths at the official 128x224.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from helpers import real_data
from helpers.environment import PYTHON, REPO, subprocess_env
from references.official_motion_grouping_torch import SlotAttentionAutoEncoder
from vosjax import segment
from vosjax import train
from vosjax.core import sharding
from vosjax.data import movi_config
from vosjax.data import optical_flow
from vosjax.data import video as video_io
from vosjax.methods import motion_grouping
from vosjax.models import state_dicts

torch.set_num_threads(1)
NARROW = {"encoder_widths": (8, 16, 16), "decoder_width": 8}
OFFICIAL = {"encoder_widths": (64, 128, 256), "decoder_width": 64}
# Masks and foregrounds: 5 slot-attention iterations and InstanceNorms of float32 products in
# another order; absolute (they lie in [0, 1]). Measured 1.5e-6 (narrow) and 4.3e-6 (official).
MASK_ATOL = {"narrow": 2e-5, "official": 5e-5}


def official_model(widths: dict, resolution, seed: int = 0) -> SlotAttentionAutoEncoder:
  """Random weights (PyTorch's default initialisation, the norms perturbed, the alpha logits x4 so
  that the slots split the frames instead of sharing them ~50/50), then one Adam step on the
  reconstruction of random input, as a checkpoint holds."""
  torch.manual_seed(seed)
  model = SlotAttentionAutoEncoder(
    resolution, widths=widths["encoder_widths"], decoder_width=widths["decoder_width"]
  )
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name or name.startswith("encoder_cnn") and param.ndim == 1:
        param.add_(0.2 * torch.randn_like(param))
    alpha = model.decoder_cnn[-1]
    alpha.weight[model.channels] *= 4.0
    alpha.bias[model.channels] *= 4.0
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  flow = torch.rand(2, 3, *resolution) * 2 - 1
  loss = ((model(flow)[0] - flow) ** 2).mean()
  loss.backward()
  optimizer.step()
  model.checkpoint = {
    "iteration": 1,
    "model_state_dict": model.state_dict(),
    "optimizer_state_dict": optimizer.state_dict(),
    "loss": loss.detach(),
  }
  return model


def mg_config(widths: dict, resolution, checkpoint):
  config = motion_grouping.default_config()
  config.data = movi_config.default_data_config()
  config.data.resolution = resolution
  config.model.encoder_widths = widths["encoder_widths"]
  config.model.slot_dim = config.model.slot_mlp_hidden_size = widths["encoder_widths"][-1]
  config.model.decoder_transpose_widths = (widths["decoder_width"],) * 3
  config.model.decoder_conv_width = widths["decoder_width"]
  config.init.checkpoint = str(checkpoint)
  return config


def davis_flows(resolution, num_frames: int = 3) -> dict:
  """DIS forward and backward flow of the first blackswan frames, at the frames' resolution, resized
  (vectors rescaled) to `resolution`: float32 [T, h, w, 2] each (zeros where there is no frame)."""
  folder = real_data.davis2016_root() / "JPEGImages" / "480p" / "blackswan"
  frames = np.stack(
    [video_io.read_image(p) for p in video_io.list_frame_files(folder)[:num_frames]]
  )
  return {
    name: optical_flow.resize_flow(optical_flow.video_flow(frames, gap), resolution)
    for name, gap in (("forward_flow", 1), ("backward_flow", -1))
  }


def border_rule_foreground(masks: np.ndarray) -> np.ndarray:
  """NumPy foreground of slot masks [N, K, H, W]: all but the slot with the most border mass."""
  border = np.zeros(masks.shape[-2:], bool)
  border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
  background = np.argmax(masks[..., border].mean(axis=-1), axis=1)
  return 1.0 - masks[np.arange(len(masks)), background]


@pytest.fixture(
  scope="module",
  params=[
    pytest.param("narrow", id="narrow"),
    pytest.param("official", id="official", marks=pytest.mark.slow),
  ],
)
def official(request, tmp_path_factory):
  """(variant, config importing the checkpoint, checkpoint path, flows, torch masks of every
  flow)."""
  widths, resolution = (NARROW, (64, 112)) if request.param == "narrow" else (OFFICIAL, (128, 224))
  model = official_model(widths, resolution)
  path = tmp_path_factory.mktemp("official") / "ckpt_davis.pth"
  torch.save(model.checkpoint, path)
  flows = davis_flows(resolution)
  both = np.concatenate([flows["forward_flow"], flows["backward_flow"]])
  config = mg_config(widths, resolution, path)
  encoded = np.asarray(motion_grouping.encode(jnp.asarray(both), config))  # RGB colour wheel
  with torch.no_grad():
    masks = model(torch.from_numpy(encoded.transpose(0, 3, 1, 2).copy()))[2][:, :, 0].numpy()
  return request.param, config, path, flows, encoded, masks


def test_official_checkpoint_segments_like_the_official_model(official, tmp_path):
  variant, config, _, flows, encoded, torch_masks = official
  mesh = sharding.make_mesh(jax.devices()[:1])
  model = motion_grouping.make_model(config)
  state, _ = train.create_train_state(
    motion_grouping, model, config, motion_grouping.make_optimizer(config), mesh
  )
  masks = np.asarray(jax.jit(model.apply)({"params": state.params}, encoded)["masks"])
  assert 0.05 < torch_masks.std()  # the random slots really split the frames
  np.testing.assert_allclose(masks, torch_masks, atol=MASK_ATOL[variant])
  both = np.concatenate([flows["forward_flow"], flows["backward_flow"]])
  foreground = np.asarray(motion_grouping.foreground_probability(state.params, model, both, config))
  torch_foreground = border_rule_foreground(torch_masks)
  np.testing.assert_allclose(foreground, torch_foreground, atol=MASK_ATOL[variant])

  # vosjax.segment: an empty workdir, the imported params; the mean of the frame's flows > 0.5.
  predict, source = segment.load_predictor(motion_grouping, config, str(tmp_path / "empty"))
  assert source.startswith("imported ")
  ids = predict({k: v[None] for k, v in flows.items()})["ids"][0]
  num_frames = len(flows["forward_flow"])
  forward, backward = np.split(torch_foreground, 2)
  mean = np.stack([forward[0], (forward[1] + backward[1]) / 2, backward[2]])  # flows it has
  decided = np.abs(mean - 0.5) > MASK_ATOL[variant]  # pixels that float error cannot flip
  assert ids.shape == (num_frames,) + mean.shape[1:] and decided.mean() > 0.99
  np.testing.assert_array_equal(ids[decided], (mean > 0.5)[decided])


def test_every_mismatch_is_listed(official, tmp_path):
  _, config, path, *_ = official
  state = state_dicts.read_state_dict(path)
  state["slot_attention.mlp.0.weightt"] = state.pop("slot_attention.mlp.0.weight")
  state.pop("decoder_cnn.12.bias")
  state["encoder_pos.proj.weight"] = state["encoder_pos.proj.weight"][:, :3]
  state["temporal_transformer.0.norm1.weight"] = np.ones(3, np.float32)
  broken = state_dicts.write_state_dict(tmp_path / "broken.safetensors", state)
  config = config.copy_and_resolve_references()
  config.init.checkpoint = str(broken)
  model = motion_grouping.make_model(config)
  with pytest.raises(state_dicts.CheckpointError) as error:
    train.create_train_state(
      motion_grouping, model, config, motion_grouping.make_optimizer(config), sharding.make_mesh()
    )
  message = str(error.value)
  assert str(broken) in message
  assert "missing (2): decoder_cnn.12.bias, slot_attention.mlp.0.weight" in message
  assert (
    "unexpected (2): slot_attention.mlp.0.weightt, temporal_transformer.0.norm1.weight" in message
  )
  dim = config.model.encoder_widths[-1]
  assert f"wrong shape: encoder_pos.proj.weight is ({dim}, 3), expected ({dim}, 4)" in message


# Only the fast variant: one conversion suffices.
@pytest.mark.parametrize("official", ["narrow"], indirect=True)
def test_convert_command_then_no_torch(official, tmp_path, monkeypatch):
  """`python -m vosjax.convert` checks the file against the config and writes plain tensors, which
  later runs read without torch."""
  variant, config, path, *_ = official
  overrides = [
    f"--config.model.{key}={value}".replace(" ", "")
    for key, value in config.model.items()
    if key.endswith(("widths", "width", "dim", "size"))
  ]
  output = tmp_path / "ckpt_davis.safetensors"
  command = [
    PYTHON,
    "-m",
    "vosjax.convert",
    str(path),
    str(output),
    "--config",
    "configs/motion_grouping.py",
    *overrides,
  ]
  proc = subprocess.run(
    command, cwd=REPO, env=subprocess_env(1), capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"to {output}" in proc.stdout
  wrong = subprocess.run(
    command[:7],
    cwd=REPO,  # the official widths
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert wrong.returncode != 0 and "wrong shape: encoder_cnn.0.weight" in wrong.stderr

  mesh = sharding.make_mesh()
  model = motion_grouping.make_model(config)
  optimizer = motion_grouping.make_optimizer(config)
  from_pth = train.create_train_state(motion_grouping, model, config, optimizer, mesh)[0].params
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails from here on
  (tmp_path / "other.pth").write_bytes(b"not read")
  with pytest.raises(ImportError, match="needs torch"):
    state_dicts.read_state_dict(tmp_path / "other.pth")
  config = config.copy_and_resolve_references()
  config.init.checkpoint = str(output)
  converted = train.create_train_state(motion_grouping, model, config, optimizer, mesh)[0].params
  jax.tree.map(np.testing.assert_array_equal, converted, from_pth)


@pytest.mark.parametrize("official", ["narrow"], indirect=True)
def test_official_mode_reports_the_oracle_slot_choice(official, tiny_davis_dir, tmp_path):
  """`config.eval.mode="official"` on DAVIS: the masks `--mode eval` writes (davis_results/) are,
  pixel for pixel, the official evaluation's (`official_frame_mask`: the slot of each of the 4
  flows with the higher IoU against the ground truth, nearest-upsampled to 854x480, averaged,
  > 0.5) of the official model on the same flows, every frame; vosjax's label-free masks are
  scored beside them (labelfree_*), and `official_frame_mean_iou` is the official `acc`."""
  from configs import davis2016  # pylint: disable=g-import-not-at-top
  from references.official_motion_grouping_torch import official_frame_mask  # pylint: disable=g-import-not-at-top
  from vosjax.data import davis  # pylint: disable=g-import-not-at-top
  from vosjax.evaluation import davis_flows  # pylint: disable=g-import-not-at-top

  variant, narrow, path, *_ = official
  config = davis2016.get_config()
  config.model.update(narrow.model)
  config.data.resolution = narrow.data.resolution
  config.data.root = str(tiny_davis_dir)
  config.data.sequences = ("blackswan",)
  config.data.flow_cache_dir = str(tmp_path / "flows")
  config.init.checkpoint = str(path)
  config.eval.mode = "official"
  metrics = train.evaluate_checkpoint(config, str(tmp_path / "work"))
  written = np.stack(
    [
      davis.read_label_png(p)
      for p in sorted((tmp_path / "work" / "davis_results" / "blackswan").glob("*.png"))
    ]
  )

  flows = davis.evaluation_flows(
    tiny_davis_dir, "blackswan", config.data.resolution, config.data.flow_cache_dir
  )
  num_frames, num_gaps = flows["flows"].shape[:2]
  encoded = np.asarray(
    motion_grouping.encode(
      jnp.asarray(flows["flows"].reshape(-1, *flows["flows"].shape[2:])), config
    )
  )
  model = official_model(NARROW, tuple(config.data.resolution))
  model.load_state_dict(torch.load(path)["model_state_dict"])
  with torch.no_grad():
    masks = model(torch.from_numpy(encoded.transpose(0, 3, 1, 2).copy()))[2]  # [T*G, s, 1, h, w]
  masks = masks.reshape(num_frames, num_gaps, *masks.shape[1:])
  expected, ious, near = [], [], []
  for t in range(num_frames):
    gt = davis.read_label_png(tiny_davis_dir / "Annotations/480p/blackswan" / f"{t:05d}.png") > 0
    mean, iou = official_frame_mask(masks[t], torch.from_numpy(gt.astype(np.float32))[None, None])
    mean = mean[0].numpy()
    # The post-processing alone, on the same soft masks: identical, every pixel.
    ours, our_iou = davis_flows.oracle_masks(masks[t][:, :, 0].numpy(), gt)
    np.testing.assert_array_equal(ours > 0.5, mean > 0.5)
    assert our_iou == pytest.approx(float(iou), abs=1e-6)
    expected.append(mean > 0.5)
    ious.append(float(iou))
    near.append(np.abs(mean - 0.5) <= 1e-5)  # within float32 reach of the threshold
  # End to end (vosjax's model vs PyTorch's, 1.5e-6 apart): every pixel that float32 differences
  # cannot flip (the random model leaves some soft masks at 0.5 +- 2e-6: 0.5 is its prior).
  near = np.stack(near)
  assert near.mean() < 0.01, near.mean()
  np.testing.assert_array_equal((written > 0)[~near], np.stack(expected)[~near])
  assert metrics["official_frame_mean_iou"] == pytest.approx(np.mean(ious), abs=1e-6)
  assert {"J-Mean", "labelfree_J-Mean", "baseline_J-Mean"} <= set(metrics)
  labelfree = np.stack(
    [
      davis.read_label_png(p)
      for p in sorted((tmp_path / "work" / "davis_results_labelfree" / "blackswan").glob("*.png"))
    ]
  )
  assert labelfree.shape == written.shape
