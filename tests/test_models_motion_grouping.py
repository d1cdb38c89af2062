"""Tests for vosjax.models.motion_grouping and vosjax.models.layers.

The reference is a PyTorch model assembled in this file from stock torch layers following
the architecture description of Motion Grouping (docs/motion_grouping.md, "Architecture"): Conv2d,
InstanceNorm2d(affine), MaxPool2d(ceil_mode=True), ConvTranspose2d(5, 2, 2, 1), GRUCell,
nn.Embedding queries. The flax parameters are copied into it and the outputs compared.
torch is a test-only dependency.
"""

import flax.linen as flax_nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from vosjax.models import layers
from vosjax.models import motion_grouping

torch.set_num_threads(1)

SMALL = dict(
  encoder_widths=(8, 16, 16),
  slot_dim=16,
  slot_mlp_hidden_size=16,
  decoder_transpose_widths=(8, 8, 8),
  decoder_conv_width=8,
  num_iterations=3,
)


def _t(x) -> torch.Tensor:
  return torch.from_numpy(np.array(x, dtype=np.float32))


def _random_params(module, *args, seed=0):
  """Random parameters with the module's tree structure, without running `module.init`.

  Tracing `init` under `eval_shape` is cheap; compiling it (dozens of random-number
  generators) takes most of a minute on a loaded CPU. Kernels get N(0, 1/fan_in), norm
  scales 1 + N(0, 0.2^2), all other parameters N(0, 0.2^2).
  """
  shapes = jax.eval_shape(lambda key: module.init(key, *args), jax.random.key(0))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    if name == "kernel":
      return jnp.asarray(noise / np.sqrt(np.prod(leaf.shape[:-1])))
    if name == "scale":
      return jnp.asarray(1.0 + 0.2 * noise)
    return jnp.asarray(0.2 * noise)

  return jax.tree_util.tree_map_with_path(draw, shapes)


# ---------------------------------------------------------------- torch reference model


def _load_dense(module: tnn.Linear, p):
  module.weight.data = _t(p["kernel"]).T.contiguous()
  module.bias.data = _t(p["bias"])


def _load_norm(module, p):
  module.weight.data = _t(p["scale"])
  module.bias.data = _t(p["bias"])


def _load_conv(module: tnn.Conv2d, p):
  module.weight.data = _t(p["kernel"]).permute(3, 2, 0, 1).contiguous()
  module.bias.data = _t(p["bias"])


def _load_conv_transpose(module: tnn.ConvTranspose2d, p):
  # flax (transpose_kernel=False) correlates the dilated input: PyTorch's kernel flipped.
  kernel = np.flip(np.asarray(p["kernel"]), axis=(0, 1))
  module.weight.data = _t(kernel).permute(2, 3, 0, 1).contiguous()
  module.bias.data = _t(p["bias"])


def _conv_block(cin, cout, p):
  conv = tnn.Conv2d(cin, cout, 5, padding=2)
  norm = tnn.InstanceNorm2d(cout, affine=True)
  if p is not None:
    _load_conv(conv, p["conv"])
    _load_norm(norm, p["norm"])
  return [conv, norm, tnn.ReLU()]


def _grid(h, w):
  ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
  grid = torch.stack([ys, xs], -1)
  return torch.cat([grid, 1 - grid], -1)


class TorchMotionGrouping(tnn.Module):
  """Motion Grouping in PyTorch, per docs/motion_grouping.md, "Architecture"."""

  def __init__(
    self, params, in_channels, widths, slot_dim, mlp_hidden, t_widths, conv_width, num_slots, iters
  ):
    super().__init__()
    p = params
    enc, cin = [], in_channels
    for s, w in enumerate(widths):
      if s > 0:
        enc.append(tnn.MaxPool2d(2, stride=2, ceil_mode=True))
      enc += _conv_block(cin, w, p and p["encoder"][f"stage{s}_conv1"])
      enc += _conv_block(w, w, p and p["encoder"][f"stage{s}_conv2"])
      cin = w
    self.encoder = tnn.Sequential(*enc)
    self.enc_pos = tnn.Linear(4, widths[-1])
    self.enc_norm = tnn.LayerNorm(widths[-1])
    self.enc_mlp = tnn.Sequential(
      tnn.Linear(widths[-1], slot_dim), tnn.ReLU(), tnn.Linear(slot_dim, slot_dim)
    )
    self.queries = tnn.Embedding(num_slots, slot_dim)
    self.norm_inputs = tnn.LayerNorm(slot_dim)
    self.norm_slots = tnn.LayerNorm(slot_dim)
    self.norm_mlp = tnn.LayerNorm(slot_dim)
    self.q = tnn.Linear(slot_dim, slot_dim)
    self.k = tnn.Linear(slot_dim, slot_dim)
    self.v = tnn.Linear(slot_dim, slot_dim)
    self.gru = tnn.GRUCell(slot_dim, slot_dim)
    self.slot_mlp = tnn.Sequential(
      tnn.Linear(slot_dim, mlp_hidden), tnn.ReLU(), tnn.Linear(mlp_hidden, slot_dim)
    )
    self.dec_pos = tnn.Linear(4, slot_dim)
    dec, cin = [], slot_dim
    for i, w in enumerate(t_widths):
      convt = tnn.ConvTranspose2d(cin, w, 5, stride=2, padding=2, output_padding=1)
      norm = tnn.InstanceNorm2d(w, affine=True)
      if p is not None:
        _load_conv_transpose(convt, p["decoder"][f"upsample{i}"]["conv_transpose"])
        _load_norm(norm, p["decoder"][f"upsample{i}"]["norm"])
      dec += [convt, norm, tnn.ReLU()]
      cin = w
    dec += _conv_block(cin, conv_width, p and p["decoder"]["conv"])
    out = tnn.Conv2d(conv_width, in_channels + 1, 5, padding=2)
    dec.append(out)
    self.decoder = tnn.Sequential(*dec)
    self.iters, self.num_slots, self.up = iters, num_slots, 2 ** len(t_widths)
    if p is None:
      return
    _load_conv(out, p["decoder"]["output"]["conv"])
    _load_dense(self.enc_pos, p["encoder_pos"]["proj"])
    _load_norm(self.enc_norm, p["encoder_norm"])
    _load_dense(self.enc_mlp[0], p["encoder_mlp"]["dense_1"])
    _load_dense(self.enc_mlp[2], p["encoder_mlp"]["dense_2"])
    self.queries.weight.data = _t(p["slot_init"]["queries"])
    sa = p["slot_attention"]
    for name, mod in [
      ("norm_inputs", self.norm_inputs),
      ("norm_slots", self.norm_slots),
      ("norm_mlp", self.norm_mlp),
    ]:
      _load_norm(mod, sa[name])
    for name, mod in [
      ("project_q", self.q),
      ("project_k", self.k),
      ("project_v", self.v),
      ("mlp_hidden", self.slot_mlp[0]),
      ("mlp_out", self.slot_mlp[2]),
    ]:
      _load_dense(mod, sa[name])
    self.gru.weight_ih.data = _t(sa["gru"]["input"]["kernel"]).T.contiguous()
    self.gru.bias_ih.data = _t(sa["gru"]["input"]["bias"])
    self.gru.weight_hh.data = _t(sa["gru"]["hidden"]["kernel"]).T.contiguous()
    self.gru.bias_hh.data = _t(sa["gru"]["hidden"]["bias"])
    _load_dense(self.dec_pos, p["decoder"]["pos_embed"]["proj"])

  def forward(self, flow):  # flow [B, C, H, W]
    b, c, h, w = flow.shape
    x = self.encoder(flow).permute(0, 2, 3, 1)
    x = x + self.enc_pos(_grid(*x.shape[1:3]))
    x = self.enc_mlp(self.enc_norm(x.reshape(b, -1, x.shape[-1])))
    inputs = self.norm_inputs(x)
    k, v = self.k(inputs), self.v(inputs)
    slots = self.queries.weight[None].expand(b, -1, -1)
    d = slots.shape[-1]
    for _ in range(self.iters):
      prev = slots
      q = self.q(self.norm_slots(slots))
      attn = (torch.einsum("bid,bjd->bij", q, k) * d**-0.5).softmax(dim=1)
      weights = attn + 1e-8
      weights = weights / weights.sum(-1, keepdim=True)
      updates = torch.einsum("bjd,bij->bid", v, weights)
      slots = self.gru(updates.reshape(-1, d), prev.reshape(-1, d)).reshape(b, -1, d)
      slots = slots + self.slot_mlp(self.norm_mlp(slots))
    hd, wd = h // self.up, w // self.up
    x = slots.reshape(-1, d)[:, None, None, :].expand(-1, hd, wd, -1)
    x = (x + self.dec_pos(_grid(hd, wd))).permute(0, 3, 1, 2)
    x = self.decoder(x).reshape(b, self.num_slots, c + 1, h, w)
    recons, masks = x[:, :, :c], x[:, :, c:].softmax(dim=1)
    return (recons * masks).sum(1), recons, masks[:, :, 0], attn


# ---------------------------------------------------------------- layers


def test_build_grid_corners():
  grid = layers.build_grid(3, 5)
  assert grid.shape == (3, 5, 4)
  np.testing.assert_allclose(grid[0, 0], [0, 0, 1, 1])
  np.testing.assert_allclose(grid[2, 4], [1, 1, 0, 0])
  np.testing.assert_allclose(grid[1, 1], [0.5, 0.25, 0.5, 0.75])
  np.testing.assert_allclose(grid, _grid(3, 5).numpy(), atol=1e-7)


def test_conv_transpose_matches_torch_and_doubles_size():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
  block = layers.ConvTransposeNormReLU(4, use_norm=False, use_relu=False)
  params = _random_params(block, x)
  out = np.asarray(block.apply({"params": params}, x))
  assert out.shape == (2, 10, 14, 4)
  ref = tnn.ConvTranspose2d(3, 4, 5, stride=2, padding=2, output_padding=1)
  _load_conv_transpose(ref, params["conv_transpose"])
  with torch.no_grad():
    ref_out = ref(_t(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(out, ref_out, atol=1e-5)


@pytest.mark.parametrize(
  "kernel,stride,padding,output_padding,size",
  [
    (5, 2, 2, 1, 7),
    (4, 2, 1, 0, 6),
    (5, 3, 2, 2, 5),
    (3, 1, 1, 0, 4),
    (1, 2, 0, 1, 3),
    (5, 2, 2, 0, 7),
  ],
)
def test_subpixel_conv_transpose_equals_flax_conv_transpose(
  kernel, stride, padding, output_padding, size
):
  """Values and gradients; equal phases are interleaved by stacking, unequal ones (odd output
  sizes: the last case) or phases no tap reaches (kernel 1, stride 2) by strided updates."""
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, size, size + 1, 3)), jnp.float32)
  module = layers.TorchConvTranspose(4, kernel, stride, padding, output_padding)
  params = _random_params(module, x)
  reference = flax_nn.ConvTranspose(
    4,
    (kernel, kernel),
    strides=(stride, stride),
    padding=(layers.torch_conv_transpose_padding(kernel, stride, padding, output_padding),) * 2,
  )
  out = module.apply({"params": params}, x)
  expected = reference.apply({"params": params}, x)
  assert out.shape == expected.shape
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5)
  weights = jnp.asarray(np.random.default_rng(6).normal(size=out.shape), jnp.float32)
  gradients = [
    jax.grad(lambda p, x, m=m: jnp.sum(m.apply({"params": p}, x) * weights), argnums=(0, 1))(
      params, x
    )
    for m in (module, reference)
  ]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), *gradients)


def test_conv_norm_relu_matches_torch():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 9, 6, 3)).astype(np.float32) * 3 + 1
  block = layers.ConvNormReLU(4, 5)
  params = _random_params(block, x)
  out = np.asarray(block.apply({"params": params}, x))
  ref = tnn.Sequential(*_conv_block(3, 4, params))
  with torch.no_grad():
    ref_out = ref(_t(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(out, ref_out, atol=1e-5)


def test_max_pool_ceil_mode_matches_torch_on_odd_sizes():
  x = np.random.default_rng(2).normal(size=(2, 7, 5, 3)).astype(np.float32)
  out = np.asarray(layers.max_pool_2x2_ceil(jnp.asarray(x)))
  ref = tnn.MaxPool2d(2, stride=2, ceil_mode=True)(_t(x).permute(0, 3, 1, 2))
  assert out.shape == (2, 4, 3, 3)
  np.testing.assert_array_equal(out, ref.permute(0, 2, 3, 1).numpy())


def test_max_pool_gradient_goes_to_the_first_maximum_as_in_torch():
  rng = np.random.default_rng(4)
  # Rounded ReLU outputs: many ties (zeros and equal values) inside windows.
  x = np.maximum(np.round(rng.normal(size=(2, 7, 6, 3)) * 2) / 2, 0).astype(np.float32)
  weights = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
  grad = jax.grad(lambda x: jnp.sum(layers.max_pool_2x2_ceil(x) * weights))(jnp.asarray(x))
  x_torch = _t(x).permute(0, 3, 1, 2).requires_grad_(True)
  pooled = tnn.MaxPool2d(2, stride=2, ceil_mode=True)(x_torch)
  (pooled * _t(weights).permute(0, 3, 1, 2)).sum().backward()
  np.testing.assert_array_equal(np.asarray(grad), x_torch.grad.permute(0, 2, 3, 1).numpy())


def test_soft_position_embed_adds_projected_grid():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 6, 5)), jnp.float32)
  module = layers.SoftPositionEmbed()
  params = _random_params(module, x)
  out = module.apply({"params": params}, x)
  expected = x + layers.build_grid(4, 6) @ params["proj"]["kernel"] + params["proj"]["bias"]
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-6)


# ---------------------------------------------------------------- Motion Grouping


def _small_model_and_params(channels=3, height=16, width=24, seed=0):
  model = motion_grouping.MotionGrouping(**SMALL)
  x = jnp.zeros((1, height, width, channels))
  params = _random_params(model, x, seed=seed)
  return model, params


@pytest.mark.parametrize("channels", [3, 2])
def test_matches_torch_reference(channels):
  model, params = _small_model_and_params(channels)
  flow = np.random.default_rng(4).uniform(-1, 1, size=(2, 16, 24, channels)).astype(np.float32)
  out = jax.jit(model.apply)({"params": params}, flow)
  ref_model = TorchMotionGrouping(
    params,
    channels,
    SMALL["encoder_widths"],
    SMALL["slot_dim"],
    SMALL["slot_mlp_hidden_size"],
    SMALL["decoder_transpose_widths"],
    SMALL["decoder_conv_width"],
    2,
    SMALL["num_iterations"],
  )
  with torch.no_grad():
    recon, recons, masks, attn = ref_model(_t(flow).permute(0, 3, 1, 2))
  np.testing.assert_allclose(np.asarray(out["attn"]), attn.numpy(), atol=1e-4)
  np.testing.assert_allclose(np.asarray(out["masks"]), masks.numpy(), atol=1e-4)
  np.testing.assert_allclose(np.asarray(out["recon"]), recon.permute(0, 2, 3, 1).numpy(), atol=1e-4)
  np.testing.assert_allclose(
    np.asarray(out["slot_recons"]), recons.permute(0, 1, 3, 4, 2).numpy(), atol=1e-4
  )


def test_default_parameter_count_matches_torch():
  model = motion_grouping.MotionGrouping()
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 128, 224, 3)))
  flax_count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
  ref = TorchMotionGrouping(None, 3, (64, 128, 256), 256, 256, (64, 64, 64), 64, 2, 5)
  assert flax_count == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("height,width", [(64, 64), (128, 224)])
def test_output_shapes_and_mask_properties(height, width):
  model, params = _small_model_and_params(3, height, width)
  flow = jax.random.uniform(jax.random.key(5), (2, height, width, 3), minval=-1, maxval=1)
  out = jax.jit(model.apply)({"params": params}, flow)
  assert out["recon"].shape == (2, height, width, 3)
  assert out["masks"].shape == (2, 2, height, width)
  assert out["slot_recons"].shape == (2, 2, height, width, 3)
  assert out["attn"].shape == (2, 2, (height // 4) * (width // 4))
  assert out["slots"].shape == (2, 2, SMALL["slot_dim"])
  np.testing.assert_allclose(np.asarray(out["masks"].sum(1)), 1.0, atol=1e-5)
  np.testing.assert_allclose(
    np.asarray(out["recon"]),
    np.asarray((out["slot_recons"] * out["masks"][..., None]).sum(1)),
    atol=1e-5,
  )


# 5 flows and 10 slot images: whole chunks, or a padded last chunk.
@pytest.mark.parametrize("encoder_chunk_size,decoder_chunk_size", [(0, 2), (2, 4), (3, 10)])
def test_chunked_encoder_and_decoder_equal_all_at_once(encoder_chunk_size, decoder_chunk_size):
  """Same parameter tree, outputs and gradients as encoding and decoding all at once."""
  model, params = _small_model_and_params(3)
  chunked = motion_grouping.MotionGrouping(
    **SMALL, encoder_chunk_size=encoder_chunk_size, decoder_chunk_size=decoder_chunk_size
  )
  flow = jax.random.uniform(jax.random.key(5), (5, 16, 24, 3), minval=-1, maxval=1)
  shapes = jax.eval_shape(chunked.init, jax.random.key(0), flow)["params"]
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, params)

  def loss(p, module):  # weights every output pixel differently, so each one's gradient counts
    out = module.apply({"params": p}, flow)
    return jnp.sum(jnp.sin(3.0 * out["recon"])) + jnp.sum(out["masks"] ** 2)

  whole_out, chunked_out = (jax.jit(m.apply)({"params": params}, flow) for m in (model, chunked))
  for key in ("recon", "masks", "slot_recons"):
    np.testing.assert_allclose(
      np.asarray(chunked_out[key]), np.asarray(whole_out[key]), rtol=1e-5, atol=1e-5
    )
  whole_grad, chunked_grad = (
    jax.jit(jax.grad(loss), static_argnums=1)(params, m) for m in (model, chunked)
  )
  # One scale for all: a bias before an InstanceNorm has a zero gradient up to rounding noise.
  scale = max(float(np.abs(np.asarray(leaf)).max()) for leaf in jax.tree.leaves(whole_grad))
  for path_and_whole, chunk_leaf in zip(
    jax.tree_util.tree_leaves_with_path(whole_grad), jax.tree.leaves(chunked_grad)
  ):
    path, whole_leaf = path_and_whole
    np.testing.assert_allclose(
      np.asarray(chunk_leaf) / scale,
      np.asarray(whole_leaf) / scale,
      atol=1e-4,
      err_msg=jax.tree_util.keystr(path),
    )


def test_negative_chunk_size_is_an_error():
  model = motion_grouping.MotionGrouping(**SMALL, decoder_chunk_size=-1)
  with pytest.raises(ValueError, match="chunk_size must be >= 0"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 24, 3)))


def test_rejects_indivisible_resolution_and_bad_rank():
  model = motion_grouping.MotionGrouping(**SMALL)
  with pytest.raises(ValueError, match="divisible by 8"):
    model.init(jax.random.key(0), jnp.zeros((1, 60, 64, 3)))
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    model.init(jax.random.key(0), jnp.zeros((60, 64, 3)))


def test_foreground_is_everything_but_the_slot_with_most_border_mass():
  from vosjax.methods import motion_grouping as method  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  for num_slots in (2, 3, 5):
    masks = np.asarray(jax.nn.softmax(rng.normal(size=(4, num_slots, 6, 7)) * 3, axis=1))
    foreground = np.asarray(method.foreground_from_masks(jnp.asarray(masks)))
    for n in range(4):
      border = [np.concatenate([m[0], m[-1], m[1:-1, 0], m[1:-1, -1]]).mean() for m in masks[n]]
      background = int(np.argmax(border))
      expected = sum(masks[n, k] for k in range(num_slots) if k != background)
      np.testing.assert_allclose(foreground[n], expected, atol=1e-6)
      if num_slots == 2:  # the other slot: the one that touches the border least
        np.testing.assert_allclose(foreground[n], masks[n, int(np.argmin(border))], atol=1e-6)
