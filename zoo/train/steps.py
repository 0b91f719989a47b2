"""The compiled training and evaluation steps: on splits held on the device, or on batches streamed in."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from zoo.config import AveragingConfig
from zoo.registry import ZooError
from zoo.tasks import Task
from zoo.train import averaging as averaging_lib
from zoo.train import parallel as parallel_lib
from zoo.train import precision as precision_lib
from zoo.train.parallel import Parallel
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


def apply_model(model: nn.Module, state_vars: dict[str, Any], x: Any, *, train: bool, rngs=None):
  """Runs the model; in training returns the updated non-parameter collections too. `rngs`: a key for
  'dropout', or a dict of keys by stream name."""
  mutable = [k for k in state_vars if k != "params"] if train else []
  if rngs is not None and not isinstance(rngs, dict):
    rngs = {"dropout": rngs}
  if mutable:
    return model.apply(state_vars, x, train=train, rngs=rngs, mutable=mutable)
  return model.apply(state_vars, x, train=train, rngs=rngs), {}


def model_input(batch: Batch) -> Any:
  """What the model is given for a (preprocessed) batch: its inputs, or, for a dataset with a shared
  `context` (a graph), the context with the inputs as its 'index' (the nodes the batch is about)."""
  if "context" in batch:
    return {**batch["context"], "index": batch["input"]}
  return batch["input"]


def train_rngs(rng: jax.Array, streams: tuple[str, ...]) -> dict[str, jax.Array]:
  """One training step's keys: `rng` for 'dropout' and one derived key per extra stream."""
  return {"dropout": rng, **{name: jax.random.fold_in(rng, i + 1) for i, name in enumerate(streams)}}


def eval_rngs(streams: tuple[str, ...], batch_index: jax.Array) -> dict[str, jax.Array] | None:
  """Evaluation's keys for the task's extra streams: fixed, one per batch, so that a split's metrics are
  the same at every evaluation; None when the task has none."""
  if not streams:
    return None
  key = jax.random.fold_in(jax.random.key(0), batch_index)
  return {name: jax.random.fold_in(key, i) for i, name in enumerate(streams)}


def player_gradients(loss_fn: Callable, params: Any, players: tuple[str, ...]):
  """(grads, aux) where each player's gradient is that of its own loss with respect to its own parameter
  subtree: one forward pass (`loss_fn(params) -> ({player: loss}, aux)`) and one backward pass per player."""
  if set(params) != set(players):
    raise ZooError(
      f"the task's players {list(players)} must be the model's top-level parameter subtrees, which are "
      f"{sorted(params)}"
    )

  def stacked(params):
    losses, aux = loss_fn(params)
    return jnp.stack([losses[p] for p in players]), aux

  _, vjp, aux = jax.vjp(stacked, params, has_aux=True)
  eye = jnp.eye(len(players), dtype=jnp.float32)
  return {p: vjp(eye[i])[0][p] for i, p in enumerate(players)}, aux


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
  axis_name: str | None = None,
  compute_dtype: Any = jnp.float32,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
  """`update(state, batch, rng) -> (state, metrics)`: one training step on a raw batch (not jitted); what
  every train step below shares. Under `jax.pmap`, `axis_name` names the device axis: gradients, metrics
  and the model's running statistics are averaged over it.

  With a `compute_dtype` other than float32 the model runs on parameters and inputs cast to it (the
  float32 parameters and optimiser state are what is updated; the model's outputs are cast back to float32
  for the loss). A state with a `loss_scale` (float16) scales the loss, unscales the gradients, and skips
  the update of a step whose gradients overflowed (the scale then shrinks)."""
  low_precision = jnp.dtype(compute_dtype) != jnp.float32

  def update(state: TrainState, batch: Batch, rng: jax.Array):
    step_rng, augment_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    inputs = batch["input"]
    if augment is not None:
      inputs = augment(inputs, augment_rng)
    batch = dict(batch, input=preprocess(inputs))
    if axis_name is not None:  # pmap: this device's rows of the global batch, augmented as on one device
      batch = device_rows(batch, axis_name)
      step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
    rngs = train_rngs(step_rng, task.rng_streams)

    inputs = model_input(batch)
    if low_precision:
      inputs = precision_lib.cast_floating(inputs, compute_dtype)
    loss_scale = state.loss_scale or None

    def loss_fn(params):
      variables = {"params": precision_lib.cast_floating(params, compute_dtype) if low_precision else params}
      variables.update(state.model_state)
      outputs, new_model_state = apply_model(model, variables, inputs, train=True, rngs=rngs)
      loss, metrics = task.loss(precision_lib.to_float32(outputs), batch)
      if penalty is not None:  # Logged apart: metrics["loss"] stays the task's loss.
        metrics = dict(metrics, penalty=penalty(params))
        loss = jax.tree.map(lambda value: value + metrics["penalty"], loss)  # each player's loss, if several
      if loss_scale is not None:
        loss = loss_scale.scale_loss(loss)
      return loss, (metrics, precision_lib.to_float32(new_model_state))

    if task.players:
      grads, (metrics, new_model_state) = player_gradients(loss_fn, state.params, task.players)
    else:
      (_, (metrics, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if loss_scale is not None:
      grads = loss_scale.unscale(grads)
    if axis_name is not None:  # pmap: each device saw its part of the batch.
      grads, metrics, new_model_state = jax.lax.pmean((grads, metrics, new_model_state), axis_name)
    # Reduce-on-plateau's scale multiplies the whole update, i.e. the rate (decoupled decay included).
    updates, opt_state = tx.update(grads, state.opt_state, state.params, lr_scale=state.lr_scale)
    params = optax.apply_updates(state.params, updates)
    count = update_count(state.opt_state)
    rate = schedule(state.step if count is None else count) * state.lr_scale
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), learning_rate=rate)
    skipped = skipped_updates(opt_state)
    if skipped is not None:
      metrics["skipped_updates"] = skipped.astype(jnp.float32)
    if loss_scale is not None:  # float16: an update whose gradients overflowed is skipped
      finite = precision_lib.all_finite(grads)
      params, opt_state, new_model_state = precision_lib.select_tree(
        finite, (params, opt_state, dict(new_model_state)), (state.params, state.opt_state, state.model_state)
      )
      metrics = dict(metrics, loss_scale=loss_scale.scale)
      state = state.replace(loss_scale=loss_scale.adjust(finite))
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


def compile_step(
  step: Callable,
  parallel: Parallel | None = None,
  pmap_in_axes: tuple = (0,),
  compiler_options: dict[str, Any] | None = None,
) -> Callable:
  """`step` compiled once with its first argument (the state) donated; `.traces()` counts its compilations.

  With `parallel` in a mesh mode the step's outputs keep the state's shardings (so that donation reuses
  its buffers) and the metrics are replicated; in mode `pmap` it is `jax.pmap`ped over the local devices
  (`pmap_in_axes`: which arguments are per device). `compiler_options` go to XLA (jit modes).
  """
  jit = functools.partial(jax.jit, donate_argnums=0, compiler_options=compiler_options)
  traces = []

  def traced(*args):
    traces.append(1)  # A Python side effect: runs only while tracing.
    return step(*args)

  if parallel is not None and parallel.mode == "pmap":
    devices = list(parallel.mesh.devices.flat)
    pmapped = jax.pmap(traced, parallel_lib.AXIS, in_axes=pmap_in_axes, donate_argnums=0, devices=devices)

    def compiled(*args):
      state, metrics = pmapped(*args)
      return state, jax.tree.map(lambda m: m[0], metrics)  # equal on every device (averaged)

    compiled.lower = pmapped.lower
  elif parallel is not None and parallel.mesh is not None:
    jitted = {}

    def compiled(state, *args):
      if "fn" not in jitted:  # The output shardings are the state's own, known at the first call.
        shardings = jax.tree.map(lambda x: x.sharding, state)
        jitted["fn"] = jit(traced, out_shardings=(shardings, parallel.replicated))
      return jitted["fn"](state, *args)

    compiled.lower = lambda *args: jit(traced).lower(*args)
    compiled.trace = lambda *args: jit(traced).trace(*args)  # its jaxpr, e.g. to count FLOPs
  else:
    compiled = jit(traced)
  compiled.traces = lambda: len(traces)
  return compiled


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
  parallel: Parallel | None = None,
  compute_dtype: Any = jnp.float32,
  compiler_options: dict[str, Any] | None = None,
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

  `parallel` spreads the step over the devices (zoo/train/parallel.py): the gathered batch is sharded over
  the mesh; under pmap `state` is one copy per device and each device trains on its rows of the batch
  (augmented as on one device).
  """
  pmapped = parallel is not None and parallel.mode == "pmap"
  update = _make_update(
    model, tx, task, schedule, steps_per_epoch=steps_per_epoch, preprocess=preprocess, augment=augment,
    penalty=penalty, averaging=averaging, update_count=update_count, skipped_updates=skipped_updates,
    axis_name=parallel_lib.AXIS if pmapped else None, compute_dtype=compute_dtype,
  )  # fmt: skip
  gather = gather_fn(batch_size, steps_per_epoch, parallel)

  def train_step(state: TrainState, data: Data, perm: jax.Array, rng: jax.Array):
    return update(state, gather(state.step, data, perm), rng)

  return compile_step(train_step, parallel, (0, None, None, None), compiler_options)


def gather_fn(batch_size: int, steps_per_epoch: int, parallel: Parallel | None = None) -> Callable:
  """`gather(step, data, perm) -> batch`: step `s`'s batch, examples `perm[(s % steps_per_epoch) * B:][:B]`
  of `data` (a shared context, a graph, goes whole into every batch), sharded over the devices."""

  def gather(step: jax.Array, data: Data, perm: jax.Array):
    idx = jax.lax.dynamic_slice_in_dim(perm, (step % steps_per_epoch) * batch_size, batch_size)
    batch = {k: v[idx] for k, v in data.items() if k != "context"}
    if parallel is not None:
      batch = parallel.shard_batch(batch)
    return batch if "context" not in data else {**batch, "context": data["context"]}

  return gather


def device_rows(batch: Batch, axis_name: str) -> Batch:
  """Under pmap: this device's equal share of a batch's rows (a shared context stays whole)."""
  n, device = jax.lax.axis_size(axis_name), jax.lax.axis_index(axis_name)

  def rows(x):
    size = x.shape[0] // n
    return jax.lax.dynamic_slice_in_dim(x, device * size, size)

  return {k: v if k == "context" else rows(v) for k, v in batch.items()}


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
  parallel: Parallel | None = None,
  compute_dtype: Any = jnp.float32,
  compiler_options: dict[str, Any] | None = None,
) -> Callable:
  """Returns `train_step(state, batch, rng) -> (state, metrics)` for batches the host streams in (a dataset
  too large for the device), jitted once, state donated; `batch` is {"input": (B, ...), "label": (B,)}.

  The same step as `make_train_step`'s once its batch is gathered: augmentation (which may change the
  image size), normalisation, the update, the averages, and the randomness `fold_in(rng, state.step)`.
  `steps_per_epoch` serves the averages (SWA collects at epoch ends). With `parallel` (not pmap) the batch
  comes sharded over the devices (a multi-process run's processes feed their own rows of it).
  """
  return compile_step(
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
      compute_dtype=compute_dtype,
    ),  # fmt: skip
    parallel,
    compiler_options=compiler_options,
  )


def _stacked_with_context(data: Data) -> tuple[Data, Any]:
  """A split's stacked batches and its shared context (None without one)."""
  return {k: v for k, v in data.items() if k != "context"}, data.get("context")


def make_eval_fn(
  model: nn.Module, task: Task, preprocess: Callable[[jax.Array], jax.Array]
) -> Callable[[dict[str, Any], Data], dict[str, jax.Array]]:
  """Returns `evaluate(variables, data) -> metric sums`, one compiled call over a whole split.

  `variables` are the model's ({"params": ..., "batch_stats": ...}): `state.variables()`, or averaged ones.

  `data` holds batches stacked on a leading axis, (num_batches, B, ...), with a `mask` marking padding,
  and the dataset's shared `context` (a graph) if it has one.
  """

  def batch_metrics(variables: dict[str, Any], batch: Data, index: jax.Array) -> dict[str, jax.Array]:
    batch = dict(batch, input=preprocess(batch["input"]))
    rngs = eval_rngs(task.rng_streams, index)
    outputs, _ = apply_model(model, variables, model_input(batch), train=False, rngs=rngs)
    return task.eval_metrics(precision_lib.to_float32(outputs), batch)

  @jax.jit
  def evaluate(variables: dict[str, Any], data: Data) -> dict[str, jax.Array]:
    stacked, context = _stacked_with_context(data)
    with_context = (lambda b: dict(b, context=context)) if context is not None else (lambda b: b)

    def body(totals, batch_and_index):
      batch, index = batch_and_index
      return jax.tree.map(jnp.add, totals, batch_metrics(variables, with_context(batch), index)), None

    first = with_context(jax.tree.map(lambda x: x[0], stacked))
    shapes = jax.eval_shape(batch_metrics, variables, first, jnp.zeros((), jnp.int32))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    num_batches = len(stacked["input"])
    totals, _ = jax.lax.scan(body, zeros, (stacked, jnp.arange(num_batches)))
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


def make_predict_fn(model: nn.Module, preprocess: Callable[[jax.Array], jax.Array], task: Task) -> Callable:
  """Returns `predict(variables, data) -> task.predictions (num_batches, B, ...)`, batches stacked as in
  evaluation (with the split's `context`, if any), the task's `rng_streams` keyed as in evaluation."""

  @jax.jit
  def predict(variables: dict[str, Any], data: Data) -> jax.Array:
    stacked, context = _stacked_with_context(data)

    def body(_, batch_and_index):
      batch, index = batch_and_index
      batch = dict(batch, input=preprocess(batch["input"]))
      if context is not None:
        batch["context"] = context
      rngs = eval_rngs(task.rng_streams, index)
      outputs, _ = apply_model(model, variables, model_input(batch), train=False, rngs=rngs)
      return None, task.predictions(outputs, batch)

    return jax.lax.scan(body, None, (stacked, jnp.arange(len(stacked["input"]))))[1]

  return predict
