"""Compute dtype of a method's model: float32 parameters, bfloat16 (or float32) arithmetic.

`config.model.dtype` ("float32", the default, or "bfloat16") is the dtype every method computes its
model in, for training and inference. The parameters stay float32 (what the optimizer updates and
the checkpoints store): `cast_to_compute` casts them, and the model inputs, to the compute dtype at
the `apply` call, so gradients reach the float32 parameters through the cast. Softmaxes run in
float32 inside the models (`softmax_float32`) and the losses in float32 (`to_float32` on the model
outputs), the usual mixed-precision recipe for accelerators (bfloat16 matmuls at full MXU rate,
half the activation memory).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
  """The dtype named by `config.model.dtype` (absent: float32); a clear error for other names."""
  name = config.model.get("dtype", "float32") if "model" in config else "float32"
  if name not in DTYPES:
    raise ValueError(f"config.model.dtype must be one of {sorted(DTYPES)}, got {name!r}.")
  return DTYPES[name]


def _cast_floating(tree: Any, dtype: Any) -> Any:
  def cast(x):
    if isinstance(x, jax.Array | jnp.ndarray) or hasattr(x, "dtype"):
      if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
        return jnp.asarray(x).astype(dtype)
    return x

  return jax.tree.map(cast, tree)


def cast_to_compute(tree: Any, dtype: Any) -> Any:
  """Floating leaves of `tree` (parameters, inputs) in the compute dtype; others unchanged."""
  if dtype == jnp.float32:
    return tree
  return _cast_floating(tree, dtype)


def to_float32(tree: Any) -> Any:
  """Floating leaves of `tree` (model outputs) in float32, for the losses and the predictions."""
  return _cast_floating(tree, jnp.float32)


def softmax_float32(logits: jax.Array, axis: int = -1) -> jax.Array:
  """`jax.nn.softmax` computed in float32 and returned in the logits' dtype."""
  return jax.nn.softmax(logits.astype(jnp.float32), axis=axis).astype(logits.dtype)


def apply(module: Any, params: Any, *args: Any, dtype: Any, method: Any = None, **kwargs: Any):
  """`module.apply({"params": params}, *args, **kwargs)` computing in `dtype`: parameters and
  floating arguments cast to it, floating outputs back to float32. The identity for float32."""
  if dtype == jnp.float32:
    return module.apply({"params": params}, *args, method=method, **kwargs)
  rngs = kwargs.pop("rngs", None)
  output = module.apply(
    {"params": cast_to_compute(params, dtype)},
    *cast_to_compute(args, dtype),
    method=method,
    rngs=rngs,
    **cast_to_compute(kwargs, dtype),
  )
  return to_float32(output)
