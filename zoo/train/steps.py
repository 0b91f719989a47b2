"""The compiled training and evaluation steps: on splits held on the device, or on batches streamed in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from zoo.config import AveragingConfig
from zoo.tasks import Task
from zoo.train import averaging as averaging_lib
from zoo.train.state import TrainState

Data = dict[str, jax.Array]  # Whole splits on the device: {"input": (N, ...), "label": (N,)}.
Batch = dict[str, jax.Array]  # One batch: {"input": (B, ...), "label": (B,)} (+ "mask" (B,) in evaluation).


def normalizer(mean: Any, std: Any) -> Callable[[jax.Array], jax.Array]:
  """Float32 inputs standardised with statistics fitted on the training split."""
  mean = jnp.asarray(mean, jnp.float32)
  inv_std = 1.0 / jnp.asarray(std, jnp.float32)
  # Statistics have one example's shape (or a broadcastable one); add the batch axis explicitly.
  batched = lambda a: a[None] if a.ndim else a
  return lambda x: (x.astype(jnp.float32) - batched(mean)) * batched(inv_std)


def apply_model(model: nn.Module, state_vars: dict[str, Any], x: jax.Array, *, train: bool, rng=None):
  """Runs the model; in training returns the updated non-parameter collections too."""
  mutable = [k for k in state_vars if k != "params"] if train else []
  rngs = {"dropout": rng} if rng is not None else None
  if mutable:
    return model.apply(state_vars, x, train=train, rngs=rngs, mutable=mutable)
  return model.apply(state_vars, x, train=train, rngs=rngs), {}


def _make_update(
  model: nn.Module,
  tx: optax.GradientTransformation,
  task: Task,
  schedule: optax.Schedule,
  *,
  steps_per_epoch: int,
  preprocess: Callable[[jax.Array], jax.Array],
  augment: Callable[[jax.Array, jax.Array], jax.Array] | None,
  penalty: Callable[[Any], jax.Array] | None,
  averaging: AveragingConfig | None,
  update_count: Callable[[Any], jax.Array | None],
  skipped_updates: Callable[[Any], jax.Array | None],
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
  """`update(state, batch, rng) -> (state, metrics)`: one training step on a raw batch (not jitted); what
  every train step below shares."""

  def update(state: TrainState, batch: Batch, rng: jax.Array):
    step_rng, augment_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    inputs = batch["input"]
    if augment is not None:
      inputs = augment(inputs, augment_rng)
    batch = dict(batch, input=preprocess(inputs))

    def loss_fn(params):
      outputs, new_model_state = apply_model(
        model, {"params": params, **state.model_state}, batch["input"], train=True, rng=step_rng
      )
      loss, metrics = task.loss(outputs, batch)
      if penalty is not None:  # Logged apart: metrics["loss"] stays the task's loss.
        metrics = dict(metrics, penalty=penalty(params))
        loss = loss + metrics["penalty"]
      return loss, (metrics, new_model_state)

    (_, (metrics, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # Reduce-on-plateau's scale multiplies the whole update, i.e. the rate (decoupled decay included).
    updates, opt_state = tx.update(grads, state.opt_state, state.params, lr_scale=state.lr_scale)
    params = optax.apply_updates(state.params, updates)
    count = update_count(state.opt_state)
    rate = schedule(state.step if count is None else count) * state.lr_scale
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), learning_rate=rate)
    skipped = skipped_updates(opt_state)
    if skipped is not None:
      metrics["skipped_updates"] = skipped.astype(jnp.float32)
    new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state, model_state=dict(new_model_state)
    )
    if averaging is not None:
      averages = averaging_lib.update_averages(
        averaging, state.averages, new_state.variables(), new_state.step, steps_per_epoch
      )
      new_state = new_state.replace(averages=averages)
    return new_state, metrics

  return update


def _jit_counting_traces(step: Callable) -> Callable:
  """`step` jitted with its first argument (the state) donated; `.traces()` counts its compilations."""
  traces = []

  def traced(*args):
    traces.append(1)  # A Python side effect: runs only while tracing.
    return step(*args)

  jitted = jax.jit(traced, donate_argnums=0)
  jitted.traces = lambda: len(traces)
  return jitted


def make_train_step(
  model: nn.Module,
  tx: optax.GradientTransformation,
  task: Task,
  schedule: optax.Schedule,
  *,
  batch_size: int,
  steps_per_epoch: int,
  preprocess: Callable[[jax.Array], jax.Array],
  augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
  penalty: Callable[[Any], jax.Array] | None = None,
  averaging: AveragingConfig | None = None,
  update_count: Callable[[Any], jax.Array | None] = lambda opt_state: None,
  skipped_updates: Callable[[Any], jax.Array | None] = lambda opt_state: None,
) -> Callable:
  """Returns `train_step(state, data, perm, rng) -> (state, metrics)`, jitted once, state donated.

  The batch is gathered on the device: step `s` takes examples `perm[(s % steps_per_epoch) * B:][:B]`
  of `data`, where `perm` is the epoch's permutation, augments them (`augment(images, rng)`, on the device)
  and normalises them. The step's randomness (dropout, augmentation) comes from `fold_in(rng, s)`, so the
  run is a function of (seed, step) and a resumed run repeats an uninterrupted one exactly.

  The optimiser's update gets `lr_scale=state.lr_scale` (reduce-on-plateau). `averaging` updates the
  weight averages after the step. `update_count(opt_state)` gives the optimiser's own update count where
  it differs from the step (gradient accumulation), for the logged learning rate; `skipped_updates`
  the number of updates skipped for non-finite gradients, logged when not None.
  """
  update = _make_update(
    model, tx, task, schedule, steps_per_epoch=steps_per_epoch, preprocess=preprocess, augment=augment,
    penalty=penalty, averaging=averaging, update_count=update_count, skipped_updates=skipped_updates,
  )  # fmt: skip

  def train_step(state: TrainState, data: Data, perm: jax.Array, rng: jax.Array):
    offset = (state.step % steps_per_epoch) * batch_size
    idx = jax.lax.dynamic_slice_in_dim(perm, offset, batch_size)
    return update(state, {k: v[idx] for k, v in data.items()}, rng)

  return _jit_counting_traces(train_step)


def make_batch_train_step(
  model: nn.Module,
  tx: optax.GradientTransformation,
  task: Task,
  schedule: optax.Schedule,
  *,
  steps_per_epoch: int,
  preprocess: Callable[[jax.Array], jax.Array],
  augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
  penalty: Callable[[Any], jax.Array] | None = None,
  averaging: AveragingConfig | None = None,
  update_count: Callable[[Any], jax.Array | None] = lambda opt_state: None,
  skipped_updates: Callable[[Any], jax.Array | None] = lambda opt_state: None,
) -> Callable:
  """Returns `train_step(state, batch, rng) -> (state, metrics)` for batches the host streams in (a dataset
  too large for the device), jitted once, state donated; `batch` is {"input": (B, ...), "label": (B,)}.

  The same step as `make_train_step`'s once its batch is gathered: augmentation (which may change the
  image size), normalisation, the update, the averages, and the randomness `fold_in(rng, state.step)`.
  `steps_per_epoch` serves the averages (SWA collects at epoch ends).
  """
  return _jit_counting_traces(
    _make_update(
      model,
      tx,
      task,
      schedule,
      steps_per_epoch=steps_per_epoch,
      preprocess=preprocess,
      augment=augment,
      penalty=penalty,
      averaging=averaging,
      update_count=update_count,
      skipped_updates=skipped_updates,
    )  # fmt: skip
  )


def make_eval_fn(
  model: nn.Module, task: Task, preprocess: Callable[[jax.Array], jax.Array]
) -> Callable[[dict[str, Any], Data], dict[str, jax.Array]]:
  """Returns `evaluate(variables, data) -> metric sums`, one compiled call over a whole split.

  `variables` are the model's ({"params": ..., "batch_stats": ...}): `state.variables()`, or averaged ones.

  `data` holds batches stacked on a leading axis, (num_batches, B, ...), with a `mask` marking padding.
  """

  def batch_metrics(variables: dict[str, Any], batch: Data) -> dict[str, jax.Array]:
    outputs, _ = apply_model(model, variables, preprocess(batch["input"]), train=False)
    return task.eval_metrics(outputs, batch)

  @jax.jit
  def evaluate(variables: dict[str, Any], data: Data) -> dict[str, jax.Array]:
    def body(totals, batch):
      return jax.tree.map(jnp.add, totals, batch_metrics(variables, batch)), None

    shapes = jax.eval_shape(batch_metrics, variables, jax.tree.map(lambda x: x[0], data))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    totals, _ = jax.lax.scan(body, zeros, data)
    return totals

  return evaluate


def make_batch_eval_fn(
  model: nn.Module, task: Task, preprocess: Callable[[jax.Array], jax.Array]
) -> Callable:
  """Returns `evaluate_batch(totals, variables, batch) -> (totals, outputs)`, jitted once, for evaluation
  batches the host streams in: `totals` plus the batch's metric sums (masked), and the model's outputs.

  The sums stay on the device from batch to batch, so a pass over a split never waits for the host; the
  first `totals` are `evaluate_batch.zeros(variables, batch)`.
  """

  def batch_metrics(variables: dict[str, Any], batch: Batch):
    outputs, _ = apply_model(model, variables, preprocess(batch["input"]), train=False)
    return task.eval_metrics(outputs, batch), outputs

  @jax.jit
  def evaluate_batch(totals: dict[str, jax.Array], variables: dict[str, Any], batch: Batch):
    metrics, outputs = batch_metrics(variables, batch)
    return jax.tree.map(jnp.add, totals, metrics), outputs

  def zeros(variables: dict[str, Any], batch: Batch) -> dict[str, jax.Array]:
    shapes, _ = jax.eval_shape(batch_metrics, variables, batch)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  evaluate_batch.zeros = zeros
  return evaluate_batch


def make_predict_fn(model: nn.Module, preprocess: Callable[[jax.Array], jax.Array]) -> Callable:
  """Returns `predict(variables, data) -> outputs (num_batches, B, ...)`, batches stacked as in evaluation."""

  @jax.jit
  def predict(variables: dict[str, Any], data: Data) -> jax.Array:
    def body(_, batch):
      return None, apply_model(model, variables, preprocess(batch["input"]), train=False)[0]

    return jax.lax.scan(body, None, data)[1]

  return predict
