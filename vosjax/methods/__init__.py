"""One module per method, each exposing the same small interface used by `vosjax.train`.

A method module defines:
  make_model(config) -> flax.linen.Module
  init_variables(model, config, rng, batch) -> params pytree
  loss_fn(params, model, batch, rng, step, config) -> (loss, dict of scalar metrics)
  predict_segmentation(params, model, video_batch, config) -> int32 [B, T, H, W]
"""
