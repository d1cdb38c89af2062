"""Slot Attention's method (vosjax.methods.slot_attention): its loss."""

import numpy as np
import pytest

from vosjax.methods import slot_attention


def test_autoencoder_loss_is_mean_squared_error():
  rng = np.random.default_rng(3)
  recon, image = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 3))
  np.testing.assert_allclose(
    float(slot_attention.autoencoder_loss(recon, image)), np.mean((recon - image) ** 2), rtol=1e-5
  )
  with pytest.raises(ValueError, match="differs"):
    slot_attention.autoencoder_loss(recon, image[:1])
