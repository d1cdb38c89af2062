"""The training loop shared by every vosjax method (importable; `vosjax.main` only parses flags).

Data parallelism (`vosjax.core.sharding`): one `jax.jit` program over a 1-D `data` mesh of every
device of every host; the train state is replicated, batches are sharded on their leading axis and
XLA inserts the gradient all-reduce. Random numbers are drawn for the global batch from
`fold_in(seed, step)`, and JAX's partitionable threefry makes them independent of how the batch is
split: 1 device and 8 devices give the same parameters from the same seed and global batch.

A method is a package of `vosjax.methods` chosen by `config.method`; its interface is
`vosjax.methods.interface.Method`. `train_and_evaluate` and `evaluate_checkpoint` also take the
method object itself (`method=`), so a method defined elsewhere (a test, a user's module) trains the
same way.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vosjax import evaluation
from vosjax import methods
from vosjax.core import checkpoint as checkpoint_lib
from vosjax.core import progress
from vosjax.core import sharding
from vosjax.data import pipeline
from vosjax.methods import checkpoints as method_checkpoints
from vosjax.methods import interface
from vosjax.methods.checkpoints import TrainState


class NonFiniteLossError(RuntimeError):
  """The loss or the gradients became NaN/inf; the update was not applied."""


def create_train_state(
  method, model, config, tx, mesh, batch: dict | None = None
) -> tuple[TrainState, Any]:
  """Initialises the state (replicated); returns it and its shardings.

  The params are the method's initialisation from `config.seed`, or those of
  `config.init.checkpoint` when it is set (`vosjax.methods.checkpoints`: an official PyTorch
  checkpoint or a vosjax workdir; the optimizer and extra state start fresh from them).
  `batch` gives the input shapes; default: the method's `example_batch(config)`.
  """
  replicated = NamedSharding(mesh, P())
  init, state_from = method_checkpoints.train_state_builders(method, model, config, tx, batch)
  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  shardings = jax.tree.map(lambda _: replicated, abstract)
  imported = method_checkpoints.initial_params(method, config, abstract.params)
  if imported is None:
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
  else:
    state = jax.jit(state_from, out_shardings=shardings)(imported)
  return state, shardings


def train_step_function(method, config, tx, bind=lambda model_argument: model_argument):
  """`train_step(state, batch, rng, model_argument) -> (state, metrics)`, not jitted: the loss and
  gradients, the optimizer, the method's extra state and the non-finite guard. `bind` turns the
  model argument into the model (`core.sharding.place_model`). Jitted by `make_train_step`;
  AOT-compiled for TPU topologies by `vosjax.benchmarks.tpu`."""
  _, update_extra = interface.extra_state_hooks(method)

  def train_step(state: TrainState, batch: dict, rng: jax.Array, model_argument):
    step_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      return method.loss_fn(
        params, bind(model_argument), batch, step_rng, state.step, config, state.extra
      )

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(
      step=state.step + 1,
      params=params,
      opt_state=opt_state,
      extra=update_extra(state.extra, params, state.step + 1, config),
    )
    # A non-finite step leaves the state untouched, so the last good state can still be saved.
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)
    return new_state, metrics

  return train_step


def jit_train_step(train_step, state_shardings, data_sharding):
  """`train_step` jitted as the loop runs it: state replicated and donated, batch sharded. Traced
  (and lowered) under the mesh, so kernels are chosen by the platform of its devices."""
  replicated = NamedSharding(data_sharding.mesh, P())
  jitted = jax.jit(
    train_step,
    in_shardings=(state_shardings, data_sharding, replicated, replicated),
    out_shardings=(state_shardings, replicated),
    donate_argnums=(0,),
  )
  return sharding.under_mesh(jitted, data_sharding.mesh)


def make_train_step(method, model, config, tx, state_shardings, data_sharding):
  """Returns `train_step(state, batch, rng) -> (state, metrics)`, jitted, state donated."""
  model_argument, bind = sharding.place_model(model, data_sharding.mesh)
  jitted = jit_train_step(
    train_step_function(method, config, tx, bind), state_shardings, data_sharding
  )
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
    return sharding.any_process(self.requested)


# The exit status of `python -m vosjax.main` when SIGTERM stopped the run after its checkpoint was
# saved (`TrainResult.preempted`): sysexits.h's EX_TEMPFAIL ("temporary failure; the user is invited
# to retry"), distinct from 0 (finished), 1 (any error, bad flags included) and 128 + N (killed by
# signal N). launch/slurm_gpu.sbatch and launch/tpu_pod.sh requeue on it.
EXIT_PREEMPTED = 75


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  eval_metrics: dict | None
  preempted: bool


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, method: interface.Method | None = None
) -> TrainResult:
  """Trains `config.method` for `config.num_train_steps`, resuming from `workdir`, then evaluates.

  `method`: the method to train (anything satisfying `interface.Method`); default: the package of
  `vosjax.methods` named by `config.method`.
  """
  # ------------------------------------------------------------------ Setup
  method = methods.load_method(config) if method is None else method
  sharding.check_batch_size(config.batch_size)
  pipeline.check_data(config)  # a broken split fails now, not after a checkpoint folder is made
  mesh = sharding.make_mesh()
  data_sharding = NamedSharding(mesh, P("data"))
  writer = progress.SummaryWriter(workdir)
  logging.info(
    "Devices: %d over %d process(es); global batch %d.",
    jax.device_count(),
    jax.process_count(),
    config.batch_size,
  )

  # ------------------------------------------------------------------ Model and optimizer
  model = method.make_model(config)
  tx = method.make_optimizer(config)
  state, state_shardings = create_train_state(method, model, config, tx, mesh)
  train_step = make_train_step(method, model, config, tx, state_shardings, data_sharding)

  # ------------------------------------------------------------------ Checkpoint and resume
  ckpt = checkpoint_lib.CheckpointManager(workdir, max_to_keep=config.max_to_keep)
  restored = ckpt.restore_latest(state)
  data_step = 0
  if restored is not None:
    state, data_step = restored.state, int(restored.meta["data_step"])
    logging.info(
      "Resumed from %s at step %d%s.",
      ckpt.directory,
      int(state.step),
      " (its params, not those of config.init.checkpoint)" if config.init.checkpoint else "",
    )
  start_step = int(state.step)

  def save(reason: str):
    step = int(state.step)
    ckpt.save(step, state, {"step": step, "data_step": data_step, "reason": reason})
    ckpt.wait()

  # ------------------------------------------------------------------ Training loop
  rng = jax.random.key(config.seed + 1)
  # Built once, where the run resumes; `host_batch` is the last batch trained on (summary images).
  batches = pipeline.make_train_iterator(config, start_step=data_step)
  host_batch = None
  meter = progress.ProgressMeter(config.num_train_steps, start_step=start_step)
  eval_metrics = None
  preempted = False
  # (step, on-device finite flag) of the steps since the last check: read together at the next
  # logged step, so that no step's skipped update goes unnoticed and no step waits for the device.
  unchecked = []
  with _Preemption() as preemption:
    for step in range(start_step + 1, config.num_train_steps + 1):
      host_batch = next(batches)
      batch = sharding.to_global(host_batch, data_sharding)
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
          later = (
            f" and {len(skipped) - 1} later step(s) up to {skipped[-1]}" if skipped[1:] else ""
          )
          raise NonFiniteLossError(
            f"Non-finite loss or gradient at step {skipped[0]}{later} (loss at step {step}: "
            f"{metrics['loss']}); those updates were skipped and the last good state (step "
            f"{int(state.step)}) is saved in {ckpt.directory}. Lower the learning rate "
            "(--config.optimizer.learning_rate) or check the input data for NaNs."
          )
        meter.log(step, metrics)
        writer.scalars(step, metrics)
      if config.eval_every_steps and step % config.eval_every_steps == 0 and not is_last:
        eval_metrics = evaluation.evaluate(
          config,
          workdir,
          method,
          model,
          state.params,
          mesh,
          step=step,
          writer=writer,
          write_outputs=False,
          max_videos=config.periodic_eval_videos or None,
        )
      if step % config.checkpoint_every_steps == 0 or is_last:
        save("periodic" if not is_last else "final")
      if preemption.any_process():
        save("preempted")
        preempted = True
        logging.warning("Stopped at step %d after SIGTERM; rerun the same command to resume.", step)
        break

  # ------------------------------------------------------------------ Final evaluation
  if not preempted:
    if host_batch is None:  # resumed at the last step: the batch a next step would take
      host_batch = next(batches)
    writer.images(
      int(state.step),
      jax.device_get(method.summary_images(state.params, model, host_batch, config)),
    )
    eval_metrics = evaluation.evaluate(
      config,
      workdir,
      method,
      model,
      state.params,
      mesh,
      step=int(state.step),
      writer=writer,
      write_outputs=True,
    )
  ckpt.close()
  writer.close()
  return TrainResult(state=state, eval_metrics=eval_metrics, preempted=preempted)


def evaluate_checkpoint(
  config: ml_collections.ConfigDict, workdir: str, method: interface.Method | None = None
) -> dict:
  """`--mode eval`: evaluates the params of the latest checkpoint of `workdir`; without one, those
  of `config.init.checkpoint` (e.g. the authors' released weights), as
  `vosjax.methods.checkpoints.restore_for_inference` finds them.

  `method`: as in `train_and_evaluate` (default: `config.method`'s package).
  """
  method = methods.load_method(config) if method is None else method
  method_checkpoints.checkpoint_folder(config, workdir)  # fails before building anything
  mesh = sharding.make_mesh()
  model = method.make_model(config)
  restored = method_checkpoints.restore_for_inference(method, model, config, workdir, mesh)
  logging.info("Evaluating the params of %s.", restored.source)
  writer = progress.SummaryWriter(workdir)
  metrics = evaluation.evaluate(
    config,
    workdir,
    method,
    model,
    restored.params,
    mesh,
    step=restored.step,
    writer=writer,
    write_outputs=True,
  )
  writer.close()
  return metrics
