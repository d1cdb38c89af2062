"""One module per method, each exposing the small interface that `vosjax.train` calls.

A method module defines:
  default_config() -> ml_collections.ConfigDict        the method's settings (configs/ start from it)
  make_model(config) -> flax.linen.Module, or a pytree holding frozen arrays (passed to jit as an
                        argument, see `vosjax.train.place_model`)
  make_optimizer(config) -> optax.GradientTransformation
  init_params(model, config, rng, batch) -> params pytree (what is trained and checkpointed)
  loss_fn(params, model, batch, rng, step, config) -> (loss, dict of scalar metrics)
  predict(params, model, batch, config) -> dict(ids=int32 [B, T, H, W], optionally
                                                foreground=bool [B, T, H, W]); never sees labels
  summary_images(params, model, batch, config) -> dict name -> uint8 [N, H, W, 3]
`config.method` names the module.
"""
