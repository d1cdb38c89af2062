"""Slot Attention autoencoder for object discovery (Locatello et al. 2020).

Follows the TF2 original (`google-research/slot_attention/model.py`,
`SlotAttentionAutoEncoder`):
  encoder: Conv5x5 (stride 1, 'SAME') + ReLU, four times, 64 channels, at full resolution;
  SoftPositionEmbed, flatten, LayerNorm, MLP(64, ReLU, 64);
  slot attention with Gaussian slot initialisation (mu, log_sigma shared by all slots),
    no q/k/v bias, GRU, residual MLP(128);
  decoder per slot: broadcast to 8x8 + SoftPositionEmbed, ConvTranspose(5x5, stride 2,
    'SAME') + ReLU until the input size, ConvTranspose(5x5, stride 1) + ReLU,
    ConvTranspose(3x3, stride 1) -> C + 1;
  alpha softmax over slots, recon = sum_k recon_k * mask_k.
The stride-2 layers here are PyTorch-style ConvTranspose(5, stride 2, padding 2,
output_padding 1), which doubles the size like Keras 'SAME' (the two place the kernel
one output pixel apart); the stride-1 transposed convolutions are written as 'SAME'
convolutions, the same function family.
LayerNorm epsilon defaults to Keras' 1e-3. The original trains on images scaled to
[-1, 1]; scaling is the caller's job.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vosjax.models import precision
from vosjax.models import convolution
from vosjax.models import layers
from vosjax.models import slot_attention


def _num_doublings(size: int, initial: int) -> int | None:
  """n such that size == initial * 2**n, or None."""
  n = 0
  while initial * 2**n < size:
    n += 1
  return n if initial * 2**n == size else None


class SlotAttentionAutoEncoder(nn.Module):
  """Object-discovery autoencoder. Defaults are the CLEVR configuration of the paper.

  A small CPU variant for 64x64: `num_slots=4, encoder_widths=(32, 32, 32, 32),
  slot_dim=32, slot_mlp_hidden_size=64, decoder_width=32`.

  Attributes:
    num_slots: K.
    num_iterations: Slot-attention iterations.
    encoder_widths: Width of each stride-1 Conv5x5 + ReLU encoder layer.
    slot_dim: Slot / q,k,v size; the post-encoder MLP maps features to it.
    slot_mlp_hidden_size: Hidden width of slot attention's residual MLP.
    decoder_initial_size: `(h0, w0)` broadcast grid; the input `(H, W)` must equal
      `(h0, w0) * 2**n` for one n (the number of stride-2 transposed convolutions).
    decoder_width: Width of the decoder's transposed convolutions.
    learned_slot_init: Learned queries instead of Gaussian samples.
    epsilon: Slot-attention epsilon.
    layer_norm_epsilon: Epsilon of every LayerNorm (Keras default 1e-3).
    gradient_mode: Slot-attention gradient mode.
  """

  num_slots: int = 7
  num_iterations: int = 3
  encoder_widths: Sequence[int] = (64, 64, 64, 64)
  slot_dim: int = 64
  slot_mlp_hidden_size: int = 128
  decoder_initial_size: Sequence[int] = (8, 8)
  decoder_width: int = 64
  learned_slot_init: bool = False
  epsilon: float = 1e-8
  layer_norm_epsilon: float = 1e-3
  gradient_mode: slot_attention.GradientMode = "full"

  @nn.compact
  def __call__(
    self, image: jnp.ndarray, slot_noise: jnp.ndarray | None = None
  ) -> dict[str, jnp.ndarray]:
    """Decomposes and reconstructs images.

    Args:
      image: `[B, H, W, C]`.
      slot_noise: Optional `[B, K, slot_dim]` standard-normal noise for the Gaussian slot
        initialisation; drawn from the 'slots' RNG stream when omitted.

    Returns:
      dict with recon `[B, H, W, C]`, masks `[B, K, H, W]` (softmax over slots),
      slot_recons `[B, K, H, W, C]`, attn `[B, K, H * W]` (last iteration, softmax over
      slots) and slots `[B, K, slot_dim]`.
    """
    if image.ndim != 4:
      raise ValueError(
        f"SlotAttentionAutoEncoder expects image [B, H, W, C], got shape {image.shape}."
      )
    batch, height, width, channels = image.shape
    init_h, init_w = self.decoder_initial_size
    doublings_h = _num_doublings(height, init_h)
    doublings_w = _num_doublings(width, init_w)
    if doublings_h is None or doublings_h != doublings_w:
      raise ValueError(
        f"SlotAttentionAutoEncoder: input size ({height}, {width}) must be "
        f"decoder_initial_size {tuple(self.decoder_initial_size)} times the same power "
        f"of 2 on both axes."
      )

    x = image
    for i, features in enumerate(self.encoder_widths):
      x = nn.relu(convolution.Conv2d(features, 5, 2, name=f"encoder_conv{i}")(x))
    x = layers.SoftPositionEmbed(name="encoder_pos")(x)
    x = x.reshape((batch, -1, x.shape[-1]))
    x = nn.LayerNorm(epsilon=self.layer_norm_epsilon, name="encoder_norm")(x)
    x = layers.FeatureMLP(self.slot_dim, self.slot_dim, name="encoder_mlp")(x)

    if self.learned_slot_init:
      init_slots = slot_attention.LearnedSlotInit(self.num_slots, self.slot_dim, name="slot_init")(
        batch
      )
    else:
      init_slots = slot_attention.GaussianSlotInit(self.num_slots, self.slot_dim, name="slot_init")(
        batch, slot_noise
      )
    slots, attn = slot_attention.SlotAttention(
      num_iterations=self.num_iterations,
      mlp_hidden_size=self.slot_mlp_hidden_size,
      epsilon=self.epsilon,
      use_qkv_bias=False,
      use_gru=True,
      gradient_mode=self.gradient_mode,
      layer_norm_epsilon=self.layer_norm_epsilon,
      name="slot_attention",
    )(init_slots, x)

    y = layers.spatial_broadcast(slots, (init_h, init_w))
    y = y.reshape((batch * self.num_slots,) + y.shape[2:])
    y = layers.SoftPositionEmbed(name="decoder_pos")(y)
    for i in range(doublings_h):
      y = nn.relu(
        layers.TorchConvTranspose(
          self.decoder_width, 5, stride=2, padding=2, output_padding=1, name=f"decoder_upsample{i}"
        )(y)
      )
    # A stride-1 'SAME' transposed convolution is a 'SAME' convolution (flipped kernel).
    y = nn.relu(convolution.Conv2d(self.decoder_width, 5, 2, name="decoder_conv")(y))
    y = convolution.Conv2d(channels + 1, 3, 1, name="decoder_output")(y)
    y = y.reshape((batch, self.num_slots) + y.shape[1:])

    slot_recons, alpha_logits = y[..., :channels], y[..., channels]
    masks = precision.softmax_float32(alpha_logits, axis=1)
    recon = jnp.sum(slot_recons * masks[..., None], axis=1)
    return {
      "recon": recon,
      "masks": masks,
      "slot_recons": slot_recons,
      "attn": attn,
      "slots": slots,
    }
