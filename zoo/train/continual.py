"""Continual learning over a sequence of class splits (split-MNIST): elastic weight consolidation
(Kirkpatrick et al. 2017), progressive networks (Rusu et al. 2016), and plain fine-tuning as the baseline.

The setting is task-incremental (multi-head): task t is a classification among the classes of split t, the
model has one K-way head per task (K = the largest split's size) and evaluation is told the task. This is
the setting of the progressive-networks paper and of most split-MNIST EWC results.

- finetune: one network (a registered model with `num_classes`, e.g. 'mlp', whose T*K outputs are read as
  T heads of K), trained on each task in turn: what it forgets is the baseline.
- ewc: the same network; after task t the diagonal Fisher F_t of task t's log-likelihood at the trained
  parameters theta*_t is stored, and training task t' > t adds lambda/2 sum_t sum_i F_t,i (theta_i -
  theta*_t,i)^2 ('separate': one penalty per earlier task, as the paper does). 'online' keeps one Fisher,
  F <- gamma F + F_t, anchored at the newest parameters (Schwarz et al. 2018's online EWC).
- progressive: a model with a `num_columns` field (e.g. 'progressive_mlp'); task t adds column t, which
  reads the frozen earlier columns through lateral connections. Only column t's parameters are
  differentiated and updated, so the earlier tasks' outputs stay exactly as they were.

Each task starts a fresh optimiser state (and so restarts the schedule, which spans the longest task).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zoo import config as config_lib
from zoo import optim, regularizers
from zoo.config import check_type
from zoo.data import Dataset, load_dataset, normalization_stats
from zoo.models import create_model, model_fields
from zoo.optim import create_optimizer, create_schedule
from zoo.registry import ZooError, close_matches
from zoo.train.checkpoint import Checkpointer
from zoo.train.loop import NonFiniteLossError, progress_bar, write_config
from zoo.train.steps import normalizer
from zoo.train.writers import MetricWriter

log = logging.getLogger(__name__)

METHODS = ("ewc", "progressive", "finetune")
FISHER_KINDS = ("true", "empirical")
EWC_MODES = ("separate", "online")
SPLIT_MNIST = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
SETTING = "task-incremental"


@dataclasses.dataclass(frozen=True)
class ContinualOptions:
  """The keys of `task.kwargs` for task.name = 'continual' (checked by `continual_options`).

  method: 'ewc' | 'progressive' | 'finetune'.
  ewc_lambda: the EWC penalty's weight lambda (method 'ewc' only).
  fisher_samples: training examples of the finished task over which the Fisher is averaged (at most all).
  fisher: 'true' (the paper's: the label of each example is sampled from the model's predictive
    distribution, so the average is an unbiased estimate of the Fisher information) or 'empirical' (the
    dataset's labels: the "empirical Fisher", the mean squared gradient of the training loss).
  ewc_mode: 'separate' (one penalty per earlier task) or 'online' (one accumulated penalty).
  ewc_gamma: online EWC's decay of the accumulated Fisher (1 = plain sum).
  epochs_per_task: passes over each task's training examples (config.steps, when set, replaces it: the
    total number of steps, shared out over the tasks).
  splits: the classes of each task, in the order the tasks come.
  """

  method: str = "ewc"
  ewc_lambda: float = 1000.0
  fisher_samples: int = 1024
  fisher: str = "true"
  ewc_mode: str = "separate"
  ewc_gamma: float = 1.0
  epochs_per_task: int = 1
  splits: tuple[tuple[int, ...], ...] = SPLIT_MNIST

  @property
  def num_tasks(self) -> int:
    return len(self.splits)

  @property
  def head_size(self) -> int:
    """K: the width of each task's head (the largest split's size; smaller splits mask the rest)."""
    return max(len(s) for s in self.splits)


def continual_options(**kwargs: Any) -> ContinualOptions:
  """The options of task 'continual', checked: an unknown key or a bad value raises ZooError naming it."""
  hints = typing.get_type_hints(ContinualOptions)
  for key in kwargs:
    if key not in hints:
      matches = close_matches(key, list(hints))
      hint = f"did you mean: {', '.join(matches)}?" if matches else f"accepted: {', '.join(hints)}"
      raise ZooError(f"task 'continual' takes no argument {key!r}; {hint}")
  values = {key: check_type(value, hints[key], f"task.kwargs.{key}") for key, value in kwargs.items()}
  opts = ContinualOptions(**values)
  for key, choices in (("method", METHODS), ("fisher", FISHER_KINDS), ("ewc_mode", EWC_MODES)):
    if getattr(opts, key) not in choices:
      raise ZooError(f"task.kwargs.{key} must be one of {', '.join(choices)}; got {getattr(opts, key)!r}")
  if not (math.isfinite(opts.ewc_lambda) and opts.ewc_lambda >= 0):
    raise ZooError(f"task.kwargs.ewc_lambda must be finite and >= 0, got {opts.ewc_lambda}")
  if not 0 <= opts.ewc_gamma <= 1:
    raise ZooError(f"task.kwargs.ewc_gamma must be in [0, 1], got {opts.ewc_gamma}")
  for key in ("fisher_samples", "epochs_per_task"):
    if getattr(opts, key) < 1:
      raise ZooError(f"task.kwargs.{key} must be at least 1, got {getattr(opts, key)}")
  if not opts.splits or any(len(s) < 2 for s in opts.splits):
    raise ZooError(f"task.kwargs.splits must be one or more tasks of 2+ classes each, got {opts.splits}")
  for s in opts.splits:
    if len(set(s)) != len(s) or min(s) < 0:
      raise ZooError(f"task.kwargs.splits: the task {list(s)} repeats a class or holds a negative one")
  return opts


def continual_metrics(accuracy: np.ndarray) -> dict[str, float | None]:
  """Average accuracy and backward transfer of an accuracy matrix R (R[i, j]: task j after training task i).

  With T tasks: average accuracy = mean_j R[T-1, j]; BWT = mean_{j < T-1} (R[T-1, j] - R[j, j]) (Lopez-Paz
  & Ranzato 2017): negative when learning later tasks made earlier ones worse (forgetting). None with one
  task.
  """
  r = np.asarray(accuracy, np.float64)
  last = r.shape[0] - 1
  bwt = float(np.mean(r[last, :last] - np.diag(r)[:last])) if last else None
  return {"average_accuracy": float(np.mean(r[last, : last + 1])), "bwt": bwt}


# ---------------------------------------------------------------------------------------------------
# EWC pieces.


def sample_labels(logits: jax.Array, key: jax.Array) -> jax.Array:
  """One label per row of logits (B, K), drawn from softmax(logits): the true Fisher's labels."""
  return jax.random.categorical(key, logits, axis=-1)


def fisher_diagonal(
  log_likelihood: Callable[[Any, jax.Array, jax.Array], jax.Array],
  params: Any,
  inputs: jax.Array,
  labels: jax.Array,
  weights: jax.Array | None = None,
  *,
  chunk: int = 64,
) -> Any:
  """The diagonal Fisher sum_m w_m g_m^2 / sum_m w_m, g_m = d log p(labels_m | inputs_m) / d params.

  `log_likelihood(params, x, y)` takes one example (no batch axis). Per-example gradients come from a vmap
  over `chunk` examples at a time (a scan over chunks keeps only one chunk's gradients in memory);
  `weights` (M,) (default: ones) mark the examples that count, so padding weighs 0.
  """
  m = len(labels)
  weights = jnp.ones((m,), jnp.float32) if weights is None else weights.astype(jnp.float32)
  chunk = min(chunk, m)
  pad = -m % chunk
  padded = lambda a: jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
  stack = lambda a: padded(a).reshape(-1, chunk, *a.shape[1:])  # (M / chunk, chunk, ...)
  per_example = jax.vmap(jax.grad(log_likelihood), in_axes=(None, 0, 0))

  def body(total, batch):
    x, y, w = batch
    grads = per_example(params, x, y)
    return jax.tree.map(lambda t, g: t + jnp.einsum("m,m...->...", w, jnp.square(g)), total, grads), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  total, _ = jax.lax.scan(body, zeros, (stack(inputs), stack(labels), stack(weights)))
  return jax.tree.map(lambda t: t / jnp.maximum(weights.sum(), 1.0), total)


def ewc_penalty(params: Any, fisher: Any, anchor: Any, ewc_lambda: float) -> jax.Array:
  """lambda/2 sum_s sum_i F_s,i (theta_i - theta*_s,i)^2; `fisher` and `anchor` are params-shaped trees
  with a leading axis s over the stored penalties (one per earlier task, or one for online EWC)."""
  terms = jax.tree.map(lambda p, f, a: jnp.sum(f * jnp.square(p[None] - a)), params, fisher, anchor)
  return 0.5 * ewc_lambda * sum(jax.tree.leaves(terms))


# ---------------------------------------------------------------------------------------------------
# Data: one dataset, split into tasks.


@dataclasses.dataclass
class TaskSplits:
  """The examples and task-local labels of each task (host arrays).

  train_index[t] / test_index[t]: indices into the dataset's split of the examples whose class is in task
  t's split; train_labels[t] / test_labels[t] (N,) int32: each example's position in split t (0 elsewhere).
  class_mask (T, K): which of the K head outputs task t uses.
  """

  train_index: list[np.ndarray]
  test_index: list[np.ndarray]
  train_labels: np.ndarray
  test_labels: np.ndarray
  class_mask: np.ndarray


def split_tasks(y_train: np.ndarray, y_test: np.ndarray, splits: tuple[tuple[int, ...], ...]) -> TaskSplits:
  """Splits a dataset's examples into the tasks that `splits` name (an example may serve several tasks)."""
  num_tasks, head_size = len(splits), max(len(s) for s in splits)
  largest = max(max(max(s) for s in splits), int(y_train.max(initial=0)), int(y_test.max(initial=0)))
  index: dict[str, list[np.ndarray]] = {"training": [], "test": []}
  labels = {
    "training": np.zeros((num_tasks, len(y_train)), np.int32),
    "test": np.zeros((num_tasks, len(y_test)), np.int32),
  }
  class_mask = np.zeros((num_tasks, head_size), bool)
  for t, classes in enumerate(splits):
    local = np.full(largest + 1, -1, np.int32)  # class -> its position in the split, -1 outside
    local[list(classes)] = np.arange(len(classes))
    for split, y in (("training", y_train), ("test", y_test)):
      found = np.flatnonzero(local[y] >= 0)
      if len(found) == 0:
        raise ZooError(f"task {t} (classes {list(classes)}) has no {split} examples in this dataset")
      index[split].append(found)
      labels[split][t, found] = local[y[found]]
    class_mask[t, : len(classes)] = True
  return TaskSplits(index["training"], index["test"], labels["training"], labels["test"], class_mask)


def task_steps(n_train: list[int], batch_size: int, epochs: int, total_steps: int | None) -> list[int]:
  """Steps per task: `epochs` passes of n_train[t] // batch_size steps, or `total_steps` shared out evenly
  (the first tasks take the remainder)."""
  if total_steps is None:
    return [epochs * (n // batch_size) for n in n_train]
  share, rest = divmod(total_steps, len(n_train))
  return [share + (t < rest) for t in range(len(n_train))]


def task_order(
  index: np.ndarray, steps: int, batch_size: int, length: int, rng: np.random.Generator
) -> np.ndarray:
  """The training examples of `steps` batches, (length,) int32 (padded with 0 past steps * batch_size):
  each epoch a fresh permutation of `index`, its last partial batch dropped (as the main loop's epochs)."""
  per_epoch = len(index) // batch_size
  epochs = math.ceil(steps / per_epoch) if steps else 0
  order = [rng.permutation(index)[: per_epoch * batch_size] for _ in range(epochs)]
  order = np.concatenate([*order, np.zeros((0,), np.int64)])[: steps * batch_size]
  return np.concatenate([order, np.zeros(length - len(order), np.int64)]).astype(np.int32)


def _eval_index(index: np.ndarray, batch_size: int, length: int) -> tuple[np.ndarray, np.ndarray]:
  """`index` padded to `length` and cut into batches: (indices, mask), each (length / batch_size, batch)."""
  mask = np.zeros(length, np.float32)
  mask[: len(index)] = 1
  padded = np.concatenate([index, np.zeros(length - len(index), index.dtype)]).astype(np.int32)
  return padded.reshape(-1, batch_size), mask.reshape(-1, batch_size)


# ---------------------------------------------------------------------------------------------------
# The trainer.


def _check_supported(config: config_lib.Config) -> None:
  """Refuses the options of the main loop that this trainer does not implement, rather than ignoring them."""
  unsupported = {
    "data.augment": config.data.augment != {},
    "data.validation_split": config.data.validation_split != 0,
    "early_stopping": config.early_stopping != config_lib.EarlyStoppingConfig(),
    "reduce_on_plateau": config.reduce_on_plateau != config_lib.PlateauConfig(),
    "averaging": config.averaging != config_lib.AveragingConfig(),
  }
  bad = [key for key, is_set in unsupported.items() if is_set]
  if bad:
    raise ZooError(f"task 'continual' does not support {', '.join(bad)}; leave them at their defaults")


def _dataset(config: config_lib.Config, dataset: Dataset | None) -> Dataset:
  ds = dataset or load_dataset(config.data.name, data_dir=config.data.data_dir, **config.data.kwargs)
  if not isinstance(ds, Dataset) or ds.tokens or ds.is_regression or ds.y_train.ndim != 1:
    raise ZooError(
      f"task 'continual' needs a classification dataset held in memory (images or features with integer "
      f"labels); {config.data.name!r} is not one"
    )
  return dataclasses.replace(
    ds,
    x_train=ds.x_train[: config.data.max_train_examples],
    y_train=ds.y_train[: config.data.max_train_examples],
    x_test=ds.x_test[: config.data.max_test_examples],
    y_test=ds.y_test[: config.data.max_test_examples],
  )


class _Models:
  """The model of each stage: one shared network, or a progressive net with t + 1 columns for task t."""

  def __init__(self, config: config_lib.Config, opts: ContinualOptions):
    name, kwargs = config.model.name, dict(config.model.kwargs)
    fields = model_fields(name)
    self.progressive = opts.method == "progressive"
    for key in ("num_classes", "num_columns"):
      if key in kwargs:
        raise ZooError(f"model.kwargs.{key} is set by task 'continual' from its splits; remove it")
    if "num_classes" not in fields:
      raise ZooError(f"task 'continual' needs a classifier with a num_classes field; model {name!r} has none")
    if self.progressive != ("num_columns" in fields):
      raise ZooError(
        f"method {opts.method!r} with model {name!r}: method 'progressive' needs a model with a num_columns "
        f"field (e.g. 'progressive_mlp'), methods 'ewc' and 'finetune' one network (e.g. 'mlp')"
      )
    self.name, self.kwargs, self.opts = name, kwargs, opts
    self._cache: dict[int, Any] = {}

  def get(self, task: int) -> Any:
    """The model in use while learning `task` (and for evaluating it afterwards)."""
    key = task if self.progressive else 0
    if key not in self._cache:
      if self.progressive:
        extra = dict(num_columns=task + 1, num_classes=self.opts.head_size)
      else:  # T heads of K outputs: one output layer with T * K units.
        extra = dict(num_classes=self.opts.num_tasks * self.opts.head_size)
      self._cache[key] = create_model(self.name, **self.kwargs, **extra)
    return self._cache[key]


def _counting_jit(fn: Callable, **kw: Any) -> Callable:
  """`jax.jit(fn, **kw)` whose `.traces()` counts its compilations (a Python side effect runs on tracing)."""
  traces = []

  def traced(*args):
    traces.append(1)
    return fn(*args)

  jitted = jax.jit(traced, **kw)
  jitted.traces = lambda: len(traces)
  return jitted


def make_task_logits(preprocess: Callable, class_mask: jax.Array) -> Callable:
  """`task_logits(model, params, x, task, rng=None) -> (B, K)`: the head of task `task` (a traced int), its
  unused classes (class_mask (T, K) False) masked to -inf; `rng` given: training mode, with dropout."""
  head_size = class_mask.shape[1]

  def task_logits(model, params, x, task, rng=None):
    rngs = {"dropout": rng} if rng is not None else None
    out = model.apply({"params": params}, preprocess(x), train=rng is not None, rngs=rngs)
    heads = out.reshape(out.shape[0], -1, head_size)  # (B, T, K): an MLP's T * K outputs, or the columns'
    head = jax.lax.dynamic_index_in_dim(heads, task, axis=1, keepdims=False)  # (B, K)
    return jnp.where(class_mask[task][None, :], head, -jnp.inf)

  return task_logits


def consolidate(
  ewc: dict[str, Any], fisher: Any, params: Any, *, slot: int, decay: float = 0.0
) -> dict[str, Any]:
  """EWC's memory after a task: penalty `slot` gets Fisher decay * F_slot + `fisher`, anchored at `params`.

  'separate' EWC writes task t into its own slot t (decay irrelevant: the slot is empty); online EWC
  accumulates into slot 0 with decay gamma and moves the anchor to the newest parameters.
  """
  return {
    "fisher": jax.tree.map(lambda s, f: s.at[slot].set(decay * s[slot] + f), ewc["fisher"], fisher),
    "anchor": jax.tree.map(lambda s, p: s.at[slot].set(p), ewc["anchor"], params),
  }


class _TrainLog:
  """Training metrics of one task: kept on the device, read and written in one go at each log step."""

  def __init__(
    self, writer: MetricWriter, bar: Any, task: int, stop_on_nonfinite: bool, kept: Path, ewc: bool
  ):
    self.writer, self.bar, self.task, self.stop_on_nonfinite = writer, bar, task, stop_on_nonfinite
    self.kept, self.ewc = kept, ewc
    self.pending: list[tuple[int, Any]] = []
    self.start = time.perf_counter()

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self.pending.append((step, metrics))
    self.bar.update(1)

  def flush(self) -> None:
    """Reads the pending metrics, checks the loss is finite, writes their mean."""
    if not self.pending:
      return
    steps, values = zip(*self.pending, strict=True)
    values = jax.device_get(values)
    self.pending.clear()
    for s, v in zip(steps, values, strict=True):
      if self.stop_on_nonfinite and not math.isfinite(float(v["loss"])):
        raise NonFiniteLossError(
          f"the training loss became {float(v['loss'])} at step {s} (task {self.task}); the checkpoint after "
          f"the last finished task is kept in {self.kept}. Try a lower optimizer.learning_rate"
          f"{' or task.kwargs.ewc_lambda' if self.ewc else ''}."
        )
    now = time.perf_counter()
    mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
    mean["steps_per_sec"] = len(values) / max(now - self.start, 1e-9)
    self.start = now
    self.writer.write(steps[-1], "train", {"task": self.task, **mean})
    self.bar.set_postfix(task=self.task, loss=f"{mean['loss']:.4f}")


def make_train_step(
  model: Any,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  task_logits: Callable,
  *,
  batch_size: int,
  ewc_lambda: float,
  regularization: config_lib.RegularizationConfig,
  update_count: Callable[[Any], jax.Array | None] = lambda opt_state: None,
) -> Callable:
  """`train_step(carry, frozen, ewc, data, task, rng) -> (carry, metrics)`, jitted, carry donated.

  carry: {"params": the trained parameters, "opt_state", "step": the step within the task}. frozen: the
  parameters read but not trained (a progressive net's earlier columns; {} otherwise). ewc: {"fisher",
  "anchor"} stacked per stored penalty, or None. data: {"x": (N, ...) the whole training split, "y": (N,)
  the task's labels, "order": the task's example indices, batch s at [s * B, (s + 1) * B)}. task: the task's
  index (int32, traced: every task of one shape shares the compiled step). `update_count(opt_state)`: the
  optimiser's own count of updates where it differs from the step (gradient accumulation), for the logged
  learning rate.
  """
  reg = regularization

  def train_step(carry, frozen, ewc, data, task, rng):
    i = carry["step"]
    idx = jax.lax.dynamic_slice_in_dim(data["order"], i * batch_size, batch_size)
    x, y = data["x"][idx], data["y"][idx]

    def loss_fn(trainable):
      params = {**frozen, **trainable}
      logits = task_logits(model, params, x, task, jax.random.fold_in(rng, i))
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      metrics = {"loss": loss, "accuracy": (logits.argmax(-1) == y).mean()}
      total = loss
      if ewc is not None:  # Logged apart: metrics["loss"] stays the task's loss.
        metrics["ewc_penalty"] = ewc_penalty(params, ewc["fisher"], ewc["anchor"], ewc_lambda)
        total = total + metrics["ewc_penalty"]
      if reg.l1 or reg.l2:
        metrics["penalty"] = regularizers.penalty(trainable, l1=reg.l1, l2=reg.l2, pattern=reg.pattern)
        total = total + metrics["penalty"]
      return total, metrics

    grads, metrics = jax.grad(loss_fn, has_aux=True)(carry["params"])
    updates, opt_state = tx.update(grads, carry["opt_state"], carry["params"])
    params = optax.apply_updates(carry["params"], updates)
    count = update_count(carry["opt_state"])
    rate = schedule(i if count is None else count)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), learning_rate=rate)
    return {"params": params, "opt_state": opt_state, "step": i + 1}, metrics

  return _counting_jit(train_step, donate_argnums=0)


def make_eval_fn(model: Any, task_logits: Callable) -> Callable:
  """`evaluate(params, x, labels, index, mask, task) -> [correct, loss sum, count]`: one compiled pass over
  the examples `index` (num_batches, B) of `x` (mask marks the padding), on task `task`'s head."""

  @jax.jit
  def evaluate(params, x, labels, index, mask, task):
    def body(totals, batch):
      idx, m = batch
      logits = task_logits(model, params, x[idx], task)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx])
      correct = (logits.argmax(-1) == labels[idx]).astype(jnp.float32)
      return totals + jnp.stack([(correct * m).sum(), (losses * m).sum(), m.sum()]), None

    return jax.lax.scan(body, jnp.zeros(3, jnp.float32), (index, mask))[0]

  return evaluate


def make_fisher_fn(model: Any, task_logits: Callable, fisher: str) -> Callable:
  """`fisher(params, x, labels, index, weights, task, key)`: task `task`'s diagonal Fisher over the examples
  `index` of `x` (weights: 1, or 0 for padding); labels sampled from the model ('true') or `labels`
  ('empirical')."""

  @jax.jit
  def fisher_fn(params, x, labels, index, weights, task, key):
    x, y = x[index], labels[index]
    if fisher == "true":  # Labels drawn from the model's own predictions: the Fisher information.
      y = sample_labels(task_logits(model, params, x, task), key)

    def log_likelihood(p, xi, yi):
      return jax.nn.log_softmax(task_logits(model, p, xi[None], task)[0])[yi]

    return fisher_diagonal(log_likelihood, params, x, y, weights)

  return fisher_fn


def train_continual(
  config: config_lib.Config, workdir: str | Path, *, progress: bool = True, dataset: Dataset | None = None
) -> dict[str, Any]:
  """Trains the tasks of `config.task.kwargs.splits` in sequence; returns the accuracy matrix and summary.

  After each task t the model is evaluated on the test examples of tasks 0..t (R[t][j]), and the state is
  checkpointed (checkpoint t + 1 = t + 1 tasks done), so a rerun in `workdir` resumes after the last
  finished task. `workdir` receives config.json, metrics.jsonl (train records per log interval, with the
  task; one 'test/task{j}' record per evaluation), result.json (the accuracy matrix, average accuracy and
  backward transfer), accuracy_matrix.png, TensorBoard events and checkpoints/.

  Reads config.model, data (name, data_dir, kwargs, batch_size, eval_batch_size, normalization,
  max_*_examples), optimizer, schedule, regularization, task.kwargs (see ContinualOptions), seed, steps,
  log_every_steps, keep_checkpoints, stop_on_nonfinite; `epochs` is replaced by task.kwargs.epochs_per_task.

  Args:
    config: the experiment; config.task.name is 'continual'.
    workdir: where the run writes and resumes.
    progress: show a tqdm bar.
    dataset: use this dataset instead of loading config.data.name (tests).
  """
  opts = continual_options(**config.task.kwargs)
  _check_supported(config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  ds = _dataset(config, dataset)
  largest = max(max(s) for s in opts.splits)
  if largest >= ds.num_classes:
    raise ZooError(
      f"task.kwargs.splits name class {largest}, but {ds.name!r} has classes 0..{ds.num_classes - 1}"
    )
  tasks = split_tasks(ds.y_train, ds.y_test, opts.splits)
  num_tasks, batch_size = opts.num_tasks, config.data.batch_size
  n_train = [len(i) for i in tasks.train_index]
  if not 1 <= batch_size <= min(n_train):
    raise ZooError(
      f"data.batch_size={batch_size} must be between 1 and the smallest task's number of training "
      f"examples ({min(n_train)})"
    )
  steps = task_steps(n_train, batch_size, opts.epochs_per_task, config.steps)
  if sum(steps) <= 0:
    raise ZooError(f"nothing to train: steps={config.steps}")
  max_steps = max(steps)
  schedule = create_schedule(
    config.schedule, config.optimizer.learning_rate, max_steps, max(n // batch_size for n in n_train)
  )
  tx = create_optimizer(config.optimizer, schedule)
  models = _Models(config, opts)
  mean, std = normalization_stats(ds.x_train, config.data.normalization, ds.pixel_max)
  task_logits = make_task_logits(normalizer(mean, std), jax.device_put(tasks.class_mask))
  ewc_on = opts.method == "ewc"

  init_rng, dropout_rng, fisher_rng = jax.random.split(jax.random.key(config.seed), 3)
  example = jax.device_put(ds.x_train[:1])

  # Every initial parameter at once: the shared network's, or all T columns of the progressive net (column
  # t's parameters do not depend on how many columns follow it, so task t takes its column from here).
  full_model = models.get(num_tasks - 1)
  variables = jax.jit(lambda key: full_model.init({"params": key, "dropout": key}, example, train=False))(
    init_rng
  )
  if set(variables) != {"params"}:
    raise ZooError(
      f"task 'continual' trains models whose only variables are parameters; model {config.model.name!r} "
      f"also keeps {', '.join(sorted(set(variables) - {'params'}))} (e.g. batch norm statistics)"
    )
  initial_params = variables["params"]

  def initial_record(tasks_done: int) -> dict[str, Any]:
    """The checkpointed record (what a resumed run needs at a task boundary), as a fresh run starts it, or
    shaped as it is after `tasks_done` tasks (the target a checkpoint is restored into)."""
    if models.progressive:
      params = {_column(c): initial_params[_column(c)] for c in range(tasks_done)}
    else:
      params = initial_params
    # Host arrays where nothing is computed on them; device_put rather than jnp.zeros (no compilation).
    record = {
      "params": params,
      "accuracy": np.full((num_tasks, num_tasks), np.nan, np.float32),
      "loss": np.full((num_tasks, num_tasks), np.nan, np.float32),
      "step": np.zeros((), np.int32),
    }
    if ewc_on:
      slots = num_tasks if opts.ewc_mode == "separate" else 1
      stacked = lambda: jax.tree.map(lambda p: jax.device_put(np.zeros((slots, *p.shape), p.dtype)), params)
      record["ewc"] = {"fisher": stacked(), "anchor": stacked()}
    return record

  checkpointer = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
  tasks_done = checkpointer.latest_step() or 0
  record = initial_record(tasks_done)
  if tasks_done:
    what = f"the checkpoint after task {tasks_done - 1}"
    record = checkpointer.restore_or_explain(record, tasks_done, what, "Use a new workdir.")
    log.info("resumed after task %d from %s", tasks_done - 1, checkpointer.directory)
  write_config(workdir, config)
  writer = MetricWriter(workdir, resume_step=int(record["step"]))

  # Whole splits on the device once; each task reads them through its index arrays.
  x_train, x_test = jax.device_put(ds.x_train), jax.device_put(ds.x_test)  # device_put: no compilation
  train_labels, test_labels = (
    list(jax.device_put(list(labels))) for labels in (tasks.train_labels, tasks.test_labels)
  )
  largest_test = max(len(i) for i in tasks.test_index)
  eval_batch = min(config.data.eval_batch_size, largest_test)
  eval_index = [
    _eval_index(i, eval_batch, eval_batch * math.ceil(largest_test / eval_batch)) for i in tasks.test_index
  ]
  # One compiled step per model (a progressive net has one per task; the shared network one in all).
  step_fns = {}
  eval_fns = {}
  fisher_fn = make_fisher_fn(models.get(0), task_logits, opts.fisher) if ewc_on else None

  def evaluate(task: int, params: dict[str, Any]) -> tuple[float, float]:
    """(accuracy, loss) on task `task`'s test examples."""
    model = models.get(task)
    if models.progressive:  # Task j's column reads columns <= j only: the network as it was after task j.
      params = {_column(c): params[_column(c)] for c in range(task + 1)}
    if id(model) not in eval_fns:
      eval_fns[id(model)] = make_eval_fn(model, task_logits)
    index, mask = eval_index[task]
    totals = eval_fns[id(model)](
      params, x_test, test_labels[task], index, mask, jax.device_put(np.int32(task))
    )
    correct, loss, count = (float(v) for v in jax.device_get(totals))
    return correct / count, loss / count

  stop_on_nonfinite = config.stop_on_nonfinite and not config.optimizer.skip_nonfinite
  global_step = int(record["step"])
  bar = progress_bar(sum(steps), sum(steps[:tasks_done]), progress)
  params = record["params"]
  accuracy, losses = np.array(record["accuracy"]), np.array(record["loss"])
  try:
    for t in range(tasks_done, num_tasks):
      model, task_id = models.get(t), jax.device_put(np.int32(t))
      if models.progressive:  # A new column learns; the earlier ones are read only.
        trainable, frozen = {_column(t): initial_params.pop(_column(t))}, dict(params)
      else:  # A copy: the step donates its carry, and `params` is in the record being saved.
        trainable, frozen = _copy(params), {}
      order = task_order(
        tasks.train_index[t],
        steps[t],
        batch_size,
        max_steps * batch_size,
        np.random.default_rng([config.seed, t]),
      )
      data = {"x": x_train, "y": train_labels[t], "order": jax.device_put(order)}
      # tx.init op by op: its zeros are compiled once per shape, where jit would compile once per column.
      carry = {"params": trainable, "opt_state": tx.init(trainable), "step": jax.device_put(np.int32(0))}
      if id(model) not in step_fns:
        step_fns[id(model)] = make_train_step(
          model, tx, schedule, task_logits, batch_size=batch_size, ewc_lambda=opts.ewc_lambda,
          regularization=config.regularization,
          update_count=functools.partial(optim.update_count, config.optimizer),
        )  # fmt: skip
      train_step, ewc, task_rng = step_fns[id(model)], record.get("ewc"), jax.random.fold_in(dropout_rng, t)
      train_log = _TrainLog(writer, bar, t, stop_on_nonfinite, checkpointer.directory, ewc_on)
      for i in range(steps[t]):
        carry, metrics = train_step(carry, frozen, ewc, data, task_id, task_rng)
        global_step += 1
        train_log.add(global_step, metrics)
        if (i + 1) % config.log_every_steps == 0:
          train_log.flush()
      train_log.flush()
      params = {**frozen, **carry["params"]}

      if ewc_on and t < num_tasks - 1:  # Task t's Fisher at its parameters, which become the anchor.
        n = min(opts.fisher_samples, n_train[t])
        index = np.zeros(opts.fisher_samples, np.int32)  # One shape for every task: one compilation.
        index[:n] = np.random.default_rng([config.seed, t, 1]).choice(tasks.train_index[t], n, replace=False)
        weights = (np.arange(opts.fisher_samples) < n).astype(np.float32)
        fisher = fisher_fn(
          params, x_train, train_labels[t], index, weights, task_id, jax.random.fold_in(fisher_rng, t)
        )
        if opts.ewc_mode == "separate":
          record["ewc"] = _consolidate(ewc, fisher, params, slot=t)
        else:
          record["ewc"] = _consolidate(ewc, fisher, params, slot=0, decay=opts.ewc_gamma)

      for j in range(t + 1):
        accuracy[t, j], losses[t, j] = evaluate(j, params)
        writer.write(
          global_step,
          f"test/task{j}",
          {"task": j, "after_task": t, "accuracy": accuracy[t, j], "loss": losses[t, j]},
        )
      log.info(
        "after task %d (classes %s): accuracy %s", t, list(opts.splits[t]), _format_row(accuracy[t, : t + 1])
      )
      record.update(params=params, accuracy=accuracy.copy(), loss=losses.copy(), step=np.int32(global_step))
      checkpointer.save(t + 1, record)
  finally:
    bar.close()
    checkpointer.close()
    writer.close()

  summary = continual_metrics(accuracy)
  result = {
    "method": opts.method,
    "setting": SETTING,
    "splits": [list(s) for s in opts.splits],
    "step": global_step,
    "accuracy_matrix": _matrix(accuracy),
    "loss_matrix": _matrix(losses),
    **{k: _round(v) for k, v in summary.items()},
    # The main loop's keys: the mean over the tasks after the last one.
    "test": {"accuracy": _round(summary["average_accuracy"]), "loss": _round(np.mean(losses[-1]))},
    "num_params": sum(int(x.size) for x in jax.tree.leaves(params)),
  }
  (workdir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
  plot_accuracy_matrix(
    accuracy, workdir / "accuracy_matrix.png", title=f"{opts.method}: {_format_summary(summary)}"
  )
  # Not in result.json: the final parameters, and how often the train steps were compiled.
  result["params"] = params
  result["train_step_traces"] = sum(f.traces() for f in step_fns.values())
  return result


_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))  # New buffers, in one compiled call.
_consolidate = jax.jit(consolidate)


def _column(k: int) -> str:
  return f"column_{k}"  # zoo.models.progressive's naming (models are not imported by name here).


def _matrix(m: np.ndarray) -> list[list[float | None]]:
  return [[None if math.isnan(v) else _round(v) for v in row] for row in m]


def _round(v: float | None) -> float | None:
  """Six decimals: the float32 matrix's noise (0.949999988 for 0.95) stays out of result.json."""
  return None if v is None else round(float(v), 6)


def _format_row(row: np.ndarray) -> str:
  return " ".join(f"{v:.4f}" for v in row)


def _format_summary(summary: dict[str, float | None]) -> str:
  bwt = "n/a" if summary["bwt"] is None else f"{summary['bwt']:+.4f}"
  return f"average accuracy {summary['average_accuracy']:.4f}, BWT {bwt}"


def plot_accuracy_matrix(accuracy: np.ndarray, path: str | Path, title: str = "") -> Path:
  """The accuracy matrix as a heat map (rows: after training task i; columns: task j), and each task's
  accuracy along the sequence."""
  import matplotlib

  matplotlib.use("Agg", force=False)
  import matplotlib.pyplot as plt

  r = np.asarray(accuracy, np.float64)
  n = r.shape[0]
  fig, (left, right) = plt.subplots(1, 2, figsize=(4 + 0.5 * n + 4, 3.2 + 0.3 * n))
  low = min(0.5, float(np.nanmin(r))) if not np.all(np.isnan(r)) else 0.5  # 0.5: chance for 2 classes
  image = left.imshow(np.ma.masked_invalid(r), vmin=low, vmax=1.0, cmap="viridis")
  for i in range(n):
    for j in range(n):
      if not math.isnan(r[i, j]):
        left.text(
          j,
          i,
          f"{r[i, j]:.3f}",
          ha="center",
          va="center",
          fontsize=7,
          color="w" if r[i, j] < (low + 1) / 2 else "k",
        )
  left.set_xlabel("evaluated on task j")
  left.set_ylabel("after training task i")
  left.set_xticks(range(n))
  left.set_yticks(range(n))
  fig.colorbar(image, ax=left, fraction=0.046)
  for j in range(n):
    rows = [i for i in range(n) if not math.isnan(r[i, j])]
    right.plot(rows, r[rows, j], "o-", label=f"task {j}", markersize=3)
  right.set_xlabel("after training task i")
  right.set_ylabel("test accuracy")
  right.set_xticks(range(n))
  right.grid(alpha=0.3)
  right.legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return Path(path)
