"""The training loop shared by every vosjax method (importable; `vosjax.main` only parses flags).

Data parallelism: one `jax.jit` program over a 1-D `data` mesh of every device of every host. The
train state is replicated (`P()`), batches are sharded on their leading axis (`P("data")`) and enter
the devices through `jax.make_array_from_process_local_data`, so each host feeds only its own part.
XLA inserts the gradient all-reduce. Random numbers are drawn for the global batch from
`fold_in(seed, step)`, and JAX's partitionable threefry makes them independent of how the batch is
split: 1 device and 8 devices give the same parameters from the same seed and global batch.

A method is a module of `vosjax.methods` (see its docstring) chosen by `config.method`.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import pkgutil
import signal
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import vosjax.methods
from vosjax import checkpoint as checkpoint_lib
from vosjax import progress
from vosjax.data import pipeline


@flax.struct.dataclass
class TrainState:
  """Everything that a resumed run needs besides the data position (saved in checkpoint metadata)."""
  step: jax.Array  # int32 []
  params: Any
  opt_state: Any


class NonFiniteLossError(RuntimeError):
  """The loss or the gradients became NaN/inf; the update was not applied."""


def base_config(method: str, **values) -> ml_collections.ConfigDict:
  """The loop settings every config has, with the given values (methods add data/model/...).

  Keys: method, seed, batch_size (global), eval_batch_size, num_train_steps, log_every_steps,
  eval_every_steps (0: only at the end), checkpoint_every_steps, max_to_keep,
  num_eval_videos_to_write (overlay GIFs/PNGs written by the evaluation).
  """
  config = ml_collections.ConfigDict(dict(
      method=method, seed=42, batch_size=32, eval_batch_size=8, num_train_steps=1000,
      log_every_steps=100, eval_every_steps=0, checkpoint_every_steps=1000, max_to_keep=3,
      num_eval_videos_to_write=4))
  unknown = set(values) - set(config)
  if unknown:
    raise KeyError(f"base_config: unknown keys {sorted(unknown)}")
  config.update(values)
  return config


def load_method(config: ml_collections.ConfigDict):
  """Imports `vosjax.methods.<config.method>`, with an error listing the methods that exist."""
  names = sorted(m.name for m in pkgutil.iter_modules(vosjax.methods.__path__))
  if config.method not in names:
    raise ValueError(f"Unknown method config.method={config.method!r}; available: {names}. "
                     "Set --config.method to one of them.")
  return importlib.import_module(f"vosjax.methods.{config.method}")


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh named `data` over every device of every process.

  Auto axis type: shardings are given at the jit boundary and XLA propagates them inside, so the
  model code needs no sharding annotations (JAX 0.10's default, Explicit, would ask for them).
  """
  return jax.make_mesh((jax.device_count(),), ("data",), (jax.sharding.AxisType.Auto,),
                       devices=jax.devices())


def check_batch_size(global_batch_size: int, what: str = "config.batch_size") -> None:
  if global_batch_size % jax.device_count():
    raise ValueError(
        f"{what}={global_batch_size} is not divisible by the number of devices "
        f"({jax.device_count()} over {jax.process_count()} process(es)); set --{what} to a multiple "
        f"of {jax.device_count()}.")


def to_global(batch: dict, sharding: NamedSharding) -> dict:
  """Host-local numpy batch -> global jax arrays sharded on the leading (batch) axis."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      batch)


def place_model(model, mesh):
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
      lambda x: jax.make_array_from_callback(np.shape(x), replicated,
                                             lambda index: np.asarray(x)[index]), model)
  return placed, lambda argument: argument


def create_train_state(method, model, config, tx, batch: dict, mesh) -> tuple[TrainState, Any]:
  """Initialises parameters (replicated) from `config.seed`; returns the state and its shardings."""
  replicated = NamedSharding(mesh, P())

  def init(rng):
    params = method.init_params(model, config, rng, batch)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  shardings = jax.tree.map(lambda _: replicated, abstract)
  state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
  return state, shardings


def make_train_step(method, model, config, tx, state_shardings, data_sharding):
  """Returns `train_step(state, batch, rng) -> (state, metrics)`, jitted, state donated."""
  replicated = NamedSharding(data_sharding.mesh, P())

  model_argument, bind = place_model(model, data_sharding.mesh)

  def train_step(state: TrainState, batch: dict, rng: jax.Array, model_argument):
    step_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      return method.loss_fn(params, bind(model_argument), batch, step_rng, state.step, config)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    # A non-finite step leaves the state untouched, so the last good state can still be saved.
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)
    return new_state, metrics

  jitted = jax.jit(train_step, in_shardings=(state_shardings, data_sharding, replicated, replicated),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  return lambda state, batch, rng: jitted(state, batch, rng, model_argument)


class _Preemption:
  """Turns SIGTERM into a flag checked between steps (a checkpoint is saved, then the run exits)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread (e.g. notebooks): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the end of this step, then exiting.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def any_process(self) -> bool:
    """True when any process got SIGTERM (all processes must stop at the same step)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  eval_metrics: dict | None
  preempted: bool


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Trains `config.method` for `config.num_train_steps`, resuming from `workdir`, then evaluates."""
  from vosjax import validation  # pylint: disable=g-import-not-at-top

  # ------------------------------------------------------------------ Setup
  method = load_method(config)
  check_batch_size(config.batch_size)
  pipeline.check_eval_data(config)  # a broken eval split fails now, not after the training
  mesh = make_mesh()
  data_sharding = NamedSharding(mesh, P("data"))
  writer = progress.SummaryWriter(workdir)
  logging.info("Devices: %d over %d process(es); global batch %d.", jax.device_count(),
               jax.process_count(), config.batch_size)

  # ------------------------------------------------------------------ Model and optimizer
  model = method.make_model(config)
  tx = method.make_optimizer(config)
  first_batch = next(pipeline.make_train_iterator(config, start_step=0))
  state, state_shardings = create_train_state(method, model, config, tx, first_batch, mesh)
  train_step = make_train_step(method, model, config, tx, state_shardings, data_sharding)

  # ------------------------------------------------------------------ Checkpoint and resume
  ckpt = checkpoint_lib.CheckpointManager(workdir, max_to_keep=config.max_to_keep)
  restored = ckpt.restore_latest(state)
  data_step = 0
  if restored is not None:
    state, data_step = restored.state, int(restored.meta["data_step"])
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(state.step))
  start_step = int(state.step)

  def save(reason: str):
    step = int(state.step)
    ckpt.save(step, state, {"step": step, "data_step": data_step, "reason": reason})
    ckpt.wait()

  # ------------------------------------------------------------------ Training loop
  rng = jax.random.key(config.seed + 1)
  batches = pipeline.make_train_iterator(config, start_step=data_step)
  meter = progress.ProgressMeter(config.num_train_steps, start_step=start_step)
  eval_metrics = None
  preempted = False
  # (step, on-device finite flag) of the steps since the last check: read together at the next
  # logged step, so that no step's skipped update goes unnoticed and no step waits for the device.
  unchecked = []
  with _Preemption() as preemption:
    for step in range(start_step + 1, config.num_train_steps + 1):
      batch = to_global(next(batches), data_sharding)
      state, metrics = train_step(state, batch, rng)
      data_step += 1
      unchecked.append((step, metrics.pop("finite")))
      is_last = step == config.num_train_steps
      if step % config.log_every_steps == 0 or is_last:
        metrics = jax.device_get(metrics)
        skipped = [s for s, finite in jax.device_get(unchecked) if not finite]
        unchecked = []
        if skipped:
          save("non-finite loss")
          later = f" and {len(skipped) - 1} later step(s) up to {skipped[-1]}" if skipped[1:] else ""
          raise NonFiniteLossError(
              f"Non-finite loss or gradient at step {skipped[0]}{later} (loss at step {step}: "
              f"{metrics['loss']}); those updates were skipped and the last good state (step "
              f"{int(state.step)}) is saved in {ckpt.directory}. Lower the learning rate "
              "(--config.optimizer.learning_rate) or check the input data for NaNs.")
        meter.log(step, metrics)
        writer.scalars(step, metrics)
      if config.eval_every_steps and step % config.eval_every_steps == 0 and not is_last:
        eval_metrics = validation.evaluate(config, workdir, method, model, state.params, mesh,
                                           step=step, writer=writer, write_outputs=False)
      if step % config.checkpoint_every_steps == 0 or is_last:
        save("periodic" if not is_last else "final")
      if preemption.any_process():
        save("preempted")
        preempted = True
        logging.warning("Stopped at step %d after SIGTERM; rerun the same command to resume.", step)
        break

  # ------------------------------------------------------------------ Final evaluation
  if not preempted:
    writer.images(int(state.step), jax.device_get(
        method.summary_images(state.params, model, first_batch, config)))
    eval_metrics = validation.evaluate(config, workdir, method, model, state.params, mesh,
                                       step=int(state.step), writer=writer, write_outputs=True)
  ckpt.close()
  writer.close()
  return TrainResult(state=state, eval_metrics=eval_metrics, preempted=preempted)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`--mode eval`: restores the latest checkpoint of `workdir` and evaluates it."""
  from vosjax import validation  # pylint: disable=g-import-not-at-top
  method = load_method(config)
  mesh = make_mesh()
  model = method.make_model(config)
  tx = method.make_optimizer(config)
  first_batch = next(pipeline.make_train_iterator(config, start_step=0))
  state, _ = create_train_state(method, model, config, tx, first_batch, mesh)
  restored = checkpoint_lib.CheckpointManager(workdir, max_to_keep=config.max_to_keep
                                              ).restore_latest(state)
  if restored is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints; train first (--mode train).")
  writer = progress.SummaryWriter(workdir)
  metrics = validation.evaluate(config, workdir, method, model, restored.state.params, mesh,
                                step=int(restored.state.step), writer=writer, write_outputs=True)
  writer.close()
  return metrics
