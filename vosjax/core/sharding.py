"""Data parallelism over every device of every host: one 1-D `data` mesh, replicated state.

The train state is replicated (`P()`), batches are sharded on their leading axis (`P("data")`) and
enter the devices through `jax.make_array_from_process_local_data`, so each host feeds only its
part.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

import flax
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(devices: list | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh named `data` over `devices` (default: every device of every process).

  Auto axis type: shardings are given at the jit boundary and XLA propagates them inside, so the
  model code needs no sharding annotations (JAX 0.10's default, Explicit, would ask for them).
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ("data",), (jax.sharding.AxisType.Auto,), devices=devices)


def check_batch_size(global_batch_size: int, what: str = "config.batch_size") -> None:
  """Raises a ValueError naming `what` unless the global batch splits evenly over the devices."""
  if global_batch_size % jax.device_count():
    raise ValueError(
      f"{what}={global_batch_size} is not divisible by the number of devices "
      f"({jax.device_count()} over {jax.process_count()} process(es)); set --{what} to a multiple "
      f"of {jax.device_count()}."
    )


def to_global(batch: dict, sharding: NamedSharding) -> dict:
  """Host-local numpy batch -> global jax arrays sharded on the leading (batch) axis."""
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
  )


def to_host_local(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Global arrays sharded on the leading axis -> this host's rows as numpy."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return jax.tree.map(
    np.asarray, multihost_utils.global_array_to_host_local_array(tree, mesh, P("data"))
  )


def any_process(flag: bool) -> bool:
  """True when `flag` is true on any process (every process gets the same answer)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


def place_model(model: Any, mesh: jax.sharding.Mesh) -> tuple[Any, Callable[[Any], Any]]:
  """Returns (model_argument, bind) for passing a model through `jax.jit`.

  A flax linen Module holds no arrays and is closed over (argument None). A method may instead
  return a pytree model holding frozen arrays (e.g. Betrayed by Attention's backbone); it is
  replicated onto the devices once and passed as a jit argument, so its weights are neither baked
  into the program as constants nor copied again at every step.
  """
  if isinstance(model, flax.linen.Module):
    return None, lambda argument: model
  replicated = NamedSharding(mesh, P())
  placed = jax.tree.map(
    lambda x: jax.make_array_from_callback(
      np.shape(x), replicated, lambda index: np.asarray(x)[index]
    ),
    model,
  )
  return placed, lambda argument: argument


def host_values(x: jax.Array) -> np.ndarray:
  """The whole value of a (possibly multi-host, sharded) array, the same on every process."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@contextlib.contextmanager
def _mesh_set(mesh: jax.sharding.Mesh):
  """`jax.set_mesh(mesh)`, except inside a trace (`jax.make_jaxpr` or an outer `jit` of the call),
  where JAX refuses it: there the enclosing trace's mesh context applies."""
  with contextlib.ExitStack() as stack:
    try:
      stack.enter_context(jax.set_mesh(mesh))
    except ValueError as error:
      if "outside of `jax.jit`" not in str(error):
        raise
    yield


def under_mesh(jitted: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """`jitted` called (and, through `.lower`, lowered) under `jax.set_mesh(mesh)`, so that it is
  traced with the mesh set and `vosjax.core.platform.target_platform()` sees the platform of the
  devices it is compiled for (a CPU host compiling for a TPU picks the TPU kernels)."""

  def call(*args, **kwargs):
    with _mesh_set(mesh):
      return jitted(*args, **kwargs)

  def lower(*args, **kwargs):
    with _mesh_set(mesh):
      return jitted.lower(*args, **kwargs)

  call.lower = lower
  return call


def jit_predict(
  method,
  model,
  config,
  mesh: jax.sharding.Mesh,
  grown_config: Callable[[Any, dict], Any] | None = None,
) -> Callable[[Any, dict], Any]:
  """`predict(params, batch)`: the method's prediction, jitted, the model placed on `mesh`.

  `grown_config(config, per_example_fields) -> config | None` (a method's
  `interface.GrowsCapacity`): after each call it sees the prediction's per-example fields (arrays
  of at most one axis) as NumPy; while it returns a config (a static capacity was exceeded), the
  prediction is recompiled with that config and run again, and the grown config is kept for the
  later calls. Every process sees the same fields, so all recompile together.
  """
  model_argument, bind = place_model(model, mesh)

  def compiled(predict_config):
    return under_mesh(jax.jit(lambda p, b, m: method.predict(p, bind(m), b, predict_config)), mesh)

  current = {"config": config, "predict": compiled(config)}

  def predict(params, batch):
    while True:
      prediction = current["predict"](params, batch, model_argument)
      if grown_config is None:
        return prediction
      fields = {k: host_values(v) for k, v in prediction.items() if np.ndim(v) <= 1}
      grown = grown_config(current["config"], fields)
      if grown is None:
        return prediction
      if grown == current["config"]:  # a method bug; re-running would loop forever
        raise RuntimeError("grown_config returned the config it was given: no capacity grew.")
      logging.warning(
        "The prediction exceeded a static capacity; recompiling it with larger "
        "ones and running it again."
      )
      current.update(config=grown, predict=compiled(grown))

  return predict
