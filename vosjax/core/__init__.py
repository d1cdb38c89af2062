"""What every part of vosjax uses and that knows no method: sharding, train state, checkpoints,
optimizers, progress, config defaults, image conversion."""
