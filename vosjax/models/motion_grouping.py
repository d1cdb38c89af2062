"""Motion Grouping (Yang et al., ICCV 2021): a slot-attention autoencoder on optical flow.

Follows the official `src/model.py` (charigyang/motiongrouping):
  encoder: for each width w in `encoder_widths`, two [Conv5x5 -> InstanceNorm(affine) ->
    ReLU] blocks, with MaxPool 2x2 (ceil_mode) between stages ([64, MP, 128, MP, 256]);
  SoftPositionEmbed, flatten, LayerNorm, MLP(D, D) (no activation after the last Dense);
  slot attention: learned queries (nn.Embedding), q/k/v with bias, GRU, residual MLP;
  decoder per slot: broadcast to (H/8, W/8) + SoftPositionEmbed, three
    ConvTranspose(5x5, stride 2, pad 2, output_pad 1) + IN + ReLU, Conv5x5 + IN + ReLU,
    Conv5x5 -> C + 1 (reconstruction channels + alpha logit);
  alpha softmax over slots, recon = sum_k recon_k * mask_k.

Differences from the PyTorch code: parameter initialisers are flax defaults (lecun-normal
kernels, zero biases) rather than PyTorch's uniform fan-in ones; flax `ConvTranspose`
kernels are PyTorch's spatially flipped (same function family, same output alignment).
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vosjax.models import precision
from vosjax.models import layers
from vosjax.models import slot_attention


class MotionGroupingEncoder(nn.Module):
  """CNN encoder [w0, MP, w1, MP, w2, ...] with two conv blocks per width.

  Attributes:
    widths: Channel width of each stage; a 2x2 ceil-mode max-pool separates stages.
    chunk_size: Images encoded at a time (`layers.apply_in_chunks`); 0: all at once.
  """

  widths: Sequence[int] = (64, 128, 256)
  chunk_size: int = 0

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """`[B, H, W, C]` -> `[B, ceil(H / 2^(S-1)), ceil(W / 2^(S-1)), widths[-1]]`."""
    return layers.apply_in_chunks(self, _encode, x, self.chunk_size)


def _encode(encoder: MotionGroupingEncoder, x: jnp.ndarray) -> jnp.ndarray:
  """The encoder's layers on `[n, H, W, C]`, in the scope of `encoder`."""
  for stage, width in enumerate(encoder.widths):
    if stage > 0:
      x = layers.max_pool_2x2_ceil(x)
    x = layers.ConvNormReLU(width, 5, parent=encoder, name=f"stage{stage}_conv1")(x)
    x = layers.ConvNormReLU(width, 5, parent=encoder, name=f"stage{stage}_conv2")(x)
  return x


class MotionGroupingDecoder(nn.Module):
  """Spatial-broadcast decoder shared by all slots.

  Attributes:
    transpose_widths: Output width of each stride-2 ConvTranspose (+IN+ReLU); the broadcast
      grid is the output size divided by 2**len(transpose_widths).
    conv_width: Width of the stride-1 Conv5x5 + IN + ReLU block.
    output_channels: C; the last conv outputs C + 1 channels (recon + alpha logit).
    instance_norm: InstanceNorm after each hidden layer (official). See `MotionGrouping`.
    chunk_size: Slot images decoded at a time (`layers.apply_in_chunks`, with `remat`: the
      backward pass recomputes a chunk's activations instead of keeping all of them); 0 (or
      >= B * K) decodes every slot at once. Same parameters and values either way.
  """

  transpose_widths: Sequence[int] = (64, 64, 64)
  conv_width: int = 64
  output_channels: int = 3
  instance_norm: bool = True
  chunk_size: int = 0

  @nn.compact
  def __call__(self, slots: jnp.ndarray, output_size: Sequence[int]) -> jnp.ndarray:
    """Decodes every slot.

    Args:
      slots: `[B, K, D]`.
      output_size: `(H, W)`, divisible by 2**len(transpose_widths).

    Returns:
      `[B, K, H, W, C + 1]` per-slot reconstructions and alpha logits.
    """
    factor = 2 ** len(self.transpose_widths)
    height, width = output_size
    batch, num_slots = slots.shape[:2]
    grid = (height // factor, width // factor)
    vectors = slots.reshape((batch * num_slots, slots.shape[-1]))
    x = layers.apply_in_chunks(
      self, functools.partial(_decode, grid=grid), vectors, self.chunk_size, remat=True
    )
    return x.reshape((batch, num_slots) + x.shape[1:])


def _decode(
  decoder: MotionGroupingDecoder, vectors: jnp.ndarray, grid: tuple[int, int]
) -> jnp.ndarray:
  """`[N, D]` slot vectors -> `[N, H, W, C + 1]`, in the scope of `decoder`."""
  x = layers.spatial_broadcast(vectors, grid)
  x = layers.SoftPositionEmbed(parent=decoder, name="pos_embed")(x)
  for i, features in enumerate(decoder.transpose_widths):
    x = layers.ConvTransposeNormReLU(
      features, use_norm=decoder.instance_norm, parent=decoder, name=f"upsample{i}"
    )(x)
  x = layers.ConvNormReLU(
    decoder.conv_width, 5, use_norm=decoder.instance_norm, parent=decoder, name="conv"
  )(x)
  return layers.ConvNormReLU(
    decoder.output_channels + 1, 5, use_norm=False, use_relu=False, parent=decoder, name="output"
  )(x)


class MotionGrouping(nn.Module):
  """Motion Grouping autoencoder. Defaults are the official DAVIS configuration.

  A small CPU variant for 64x64 demos: `encoder_widths=(16, 32, 32), slot_dim=32,
  slot_mlp_hidden_size=32, decoder_transpose_widths=(16, 16, 16), decoder_conv_width=16`
  (146k parameters). The decoder runs once per slot at full resolution and dominates the
  cost.

  Attributes:
    num_slots: K (2: foreground and background).
    num_iterations: Slot-attention iterations.
    encoder_widths: Encoder stage widths (max-pool between stages).
    encoder_chunk_size: `MotionGroupingEncoder.chunk_size` (a faster forward pass on CPU).
    slot_dim: Slot / q,k,v size; the post-encoder MLP maps features to it.
    slot_mlp_hidden_size: Hidden width of slot attention's residual MLP.
    decoder_transpose_widths: Widths of the stride-2 ConvTranspose layers; their count
      sets the broadcast resolution (H / 2**count) and the required divisibility of H, W.
    decoder_conv_width: Width of the decoder's stride-1 conv block.
    decoder_instance_norm: InstanceNorm in the decoder, as in the official code. False
      drops the decoder's norms (the original slot-attention decoders have none); it did
      not make the CPU demo learn faster (see configs/demo.py), and at initialisation the
      two slots' decoded flows differ less without the norms (mean |difference| 0.01 vs
      0.35 with them, demo model and data).
    decoder_chunk_size: `MotionGroupingDecoder.chunk_size` (less memory, some recompute).
    epsilon: Slot-attention epsilon.
    gradient_mode: Slot-attention gradient mode ('full', 'last_iteration',
      'last_iteration_to_init').
  """

  num_slots: int = 2
  num_iterations: int = 5
  encoder_widths: Sequence[int] = (64, 128, 256)
  encoder_chunk_size: int = 0
  slot_dim: int = 256
  slot_mlp_hidden_size: int = 256
  decoder_transpose_widths: Sequence[int] = (64, 64, 64)
  decoder_conv_width: int = 64
  decoder_instance_norm: bool = True
  decoder_chunk_size: int = 0
  epsilon: float = 1e-8
  gradient_mode: slot_attention.GradientMode = "full"

  @nn.compact
  def __call__(self, flow: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Reconstructs encoded flow through K slots.

    Args:
      flow: `[B, H, W, C]` encoded flow (C = 3 for RGB-encoded, 2 for raw); H and W must
        be divisible by 2**len(decoder_transpose_widths) (8 by default).

    Returns:
      dict with
        recon: `[B, H, W, C]` combined reconstruction;
        masks: `[B, K, H, W]` alpha masks (softmax over slots);
        slot_recons: `[B, K, H, W, C]` per-slot reconstructions;
        attn: `[B, K, N]` last slot-attention iteration's attention (softmax over slots)
          over the N = h * w encoder positions (row-major), h, w = encoder output size;
        slots: `[B, K, slot_dim]`.
    """
    if flow.ndim != 4:
      raise ValueError(f"MotionGrouping expects flow [B, H, W, C], got shape {flow.shape}.")
    batch, height, width, channels = flow.shape
    factor = 2 ** len(self.decoder_transpose_widths)
    if height % factor or width % factor:
      raise ValueError(
        f"MotionGrouping needs H and W divisible by {factor} (the decoder upsamples "
        f"{len(self.decoder_transpose_widths)} times by 2), got H={height}, W={width}."
      )

    x = MotionGroupingEncoder(self.encoder_widths, self.encoder_chunk_size, name="encoder")(flow)
    x = layers.SoftPositionEmbed(name="encoder_pos")(x)
    x = x.reshape((batch, -1, x.shape[-1]))
    x = nn.LayerNorm(epsilon=1e-5, name="encoder_norm")(x)
    x = layers.FeatureMLP(self.slot_dim, self.slot_dim, name="encoder_mlp")(x)

    init_slots = slot_attention.LearnedSlotInit(self.num_slots, self.slot_dim, name="slot_init")(
      batch
    )
    slots, attn = slot_attention.SlotAttention(
      num_iterations=self.num_iterations,
      mlp_hidden_size=self.slot_mlp_hidden_size,
      epsilon=self.epsilon,
      use_qkv_bias=True,
      use_gru=True,
      gradient_mode=self.gradient_mode,
      name="slot_attention",
    )(init_slots, x)

    decoded = MotionGroupingDecoder(
      self.decoder_transpose_widths,
      self.decoder_conv_width,
      channels,
      self.decoder_instance_norm,
      self.decoder_chunk_size,
      name="decoder",
    )(slots, (height, width))
    slot_recons, alpha_logits = decoded[..., :channels], decoded[..., channels]
    masks = precision.softmax_float32(alpha_logits, axis=1)
    recon = jnp.sum(slot_recons * masks[..., None], axis=1)
    return {
      "recon": recon,
      "masks": masks,
      "slot_recons": slot_recons,
      "attn": attn,
      "slots": slots,
    }
