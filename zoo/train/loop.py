"""The training loop: `train_and_evaluate(config, workdir)`, used by train.py and notebooks alike."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zoo import config as config_lib
from zoo import optim, regularizers
from zoo.data import Dataset, ImageFolder, create_augmentation, load_dataset, normalization_stats
from zoo.models import create_model, list_models, model_fields
from zoo.optim import create_optimizer, create_schedule
from zoo.registry import ZooError
from zoo.tasks import create_task
from zoo.train import averaging, precision, streaming
from zoo.train import parallel as parallel_lib
from zoo.train.checkpoint import Checkpointer
from zoo.train.early_stopping import BestTracker, PlateauScaler
from zoo.train.state import count_params, create_train_state
from zoo.train.steps import (
  make_batch_train_step,
  make_eval_fn,
  make_predict_fn,
  make_train_step,
  model_input,
  normalizer,
)
from zoo.train.writers import MetricWriter

log = logging.getLogger(__name__)


class NonFiniteLossError(ZooError):
  """The training loss (or the gradient) became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
  """SIGTERM or SIGINT stopped the run between two steps, once the state of the last one was checkpointed.

  A KeyboardInterrupt, as Ctrl-C in a notebook raises: `except Exception` does not swallow it.
  """

  def __init__(self, step: int, directory: Path, signum: int):
    self.step, self.directory, self.signum = step, directory, signum
    super().__init__(
      f"interrupted at step {step}: checkpoint saved in {directory}; rerun the same command to resume"
    )

  @property
  def exit_code(self) -> int:
    """The shell's code for a process ended by the signal: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + self.signum


class StopSignals:
  """SIGTERM and SIGINT, while installed, only record that the run should stop: the loop checks `signum`
  between steps and saves a checkpoint before it stops. A second signal changes nothing (the save under way
  finishes). Installed only in the main thread (Python delivers signals there alone); `restore` puts the
  previous handlers back."""

  def __init__(self, enabled: bool = True):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}
    if enabled and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        signal.signal(sig, self._record)
        # None: a handler not set from Python, which cannot be put back; the default is the closest.
        self._previous[sig] = signal.SIG_DFL if previous is None else previous

  def _record(self, signum: int, frame: Any) -> None:
    if self.signum is None:  # Only a flag: nothing here can run in the middle of a save.
      self.signum = signum

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before the first step (also handy in notebooks and benchmarks)."""

  config: config_lib.Config
  dataset: Dataset | ImageFolder  # an ImageFolder is streamed from disk (zoo/train/streaming.py)
  model: Any
  task: Any
  tx: Any
  schedule: Any
  steps_per_epoch: int
  total_steps: int
  mean: np.ndarray
  std: np.ndarray
  augment: Any = None
  validation: tuple[np.ndarray, np.ndarray] | None = None  # (inputs, labels) carved from the training split
  model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # as the model was built

  @property
  def preprocess(self):
    if not self.streaming and (self.dataset.tokens or self.dataset.context is not None):
      return lambda x: x  # Token ids and indices into a context go to the model as they are.
    return normalizer(self.mean, self.std)

  @property
  def streaming(self) -> bool:
    return streaming.is_streaming(self.dataset)


def build(config: config_lib.Config, dataset: Dataset | ImageFolder | None = None) -> Experiment:
  """Builds the dataset, model, task, schedule and optimiser that `config` names."""
  if not 0 <= config.seed < 2**32:  # NumPy's generators (data order, validation split) take these only.
    raise ZooError(f"config key 'seed' must be in [0, 2**32), got {config.seed}")
  dataset = dataset or load_dataset(config.data.name, data_dir=config.data.data_dir, **config.data.kwargs)
  stream = streaming.is_streaming(dataset)
  if stream:
    dataset, validation = streaming.prepare(config, dataset), None
  else:
    dataset = dataclasses.replace(
      dataset,
      x_train=dataset.x_train[: config.data.max_train_examples],
      y_train=dataset.y_train[: config.data.max_train_examples],
      x_test=dataset.x_test[: config.data.max_test_examples],
      y_test=dataset.y_test[: config.data.max_test_examples],
      **(
        {}
        if dataset.x_val is None
        else dict(
          x_val=dataset.x_val[: config.data.max_test_examples],
          y_val=dataset.y_val[: config.data.max_test_examples],
        )
      ),
    )
    if dataset.x_val is not None:  # The dataset's own validation split.
      if config.data.validation_split:
        raise ZooError(
          f"dataset {config.data.name!r} has its own validation split; data.validation_split must be 0"
        )
      validation = (dataset.x_val, dataset.y_val)
    else:
      dataset, validation = _carve_validation(dataset, config.data.validation_split, config.seed)
  model_kwargs = dict(config.model.kwargs)
  fields = model_fields(config.model.name)
  if "num_classes" in fields:
    model_kwargs.setdefault("num_classes", dataset.num_classes)
  if "vocab_size" in fields and not stream and dataset.vocab is not None:
    model_kwargs.setdefault("vocab_size", len(dataset.vocab))
  dtype = precision.compute_dtype(config.precision)
  # Low precision: the model computes in `dtype` (its parameters stay float32); not part of model_kwargs,
  # which rebuild the model for inference (zoo.train.restore) in float32.
  extra = {"dtype": dtype} if config.precision != "float32" and "dtype" in fields else {}
  model = create_model(config.model.name, **model_kwargs, **extra)
  task = create_task(config.task.name, **config.task.kwargs)
  n_train = dataset.num_examples(dataset.train_split) if stream else len(dataset.x_train)
  batch_size = config.data.batch_size
  if not 0 < batch_size <= n_train:
    raise ZooError(f"data.batch_size={batch_size} must be between 1 and the training set's size ({n_train})")
  steps_per_epoch = n_train // batch_size  # The remainder is dropped: every step has a full batch.
  total_steps = config.steps if config.steps is not None else config.epochs * steps_per_epoch
  if total_steps <= 0:
    raise ZooError(f"nothing to train: epochs={config.epochs}, steps={config.steps}")
  schedule = create_schedule(config.schedule, config.optimizer.learning_rate, total_steps, steps_per_epoch)
  averaging.check(config.averaging)
  if config.averaging.swa_lr is not None:  # The schedule counts optimiser updates.
    start = config.averaging.swa_start_epoch * steps_per_epoch // config.optimizer.accumulate_steps
    schedule = averaging.swa_schedule(schedule, start, config.averaging.swa_lr)
  tx = _optimizer(config, task, schedule)
  augment = create_augmentation(config.data.augment)
  if stream:
    mean, std = streaming.normalization(dataset, config.data.normalization)
    streaming.check_augmentation(dataset, augment, batch_size)
  elif dataset.tokens or dataset.context is not None:
    if augment is not None:
      what = "token ids" if dataset.tokens else "indices into its context"
      raise ZooError(f"dataset {config.data.name!r} holds {what}: data.augment does not apply to them")
    mean, std = normalization_stats(dataset.x_train, "none", dataset.pixel_max)  # Unused: tokens stay ids.
  else:
    mean, std = normalization_stats(dataset.x_train, config.data.normalization, dataset.pixel_max)
  return Experiment(
    config, dataset, model, task, tx, schedule, steps_per_epoch, total_steps, mean, std, augment, validation,
    model_kwargs,
  )  # fmt: skip


def _optimizer(config: config_lib.Config, task, schedule):
  """The configured optimiser; for a task of several players (a GAN), one instance of it per player's
  parameter subtree, each with its own state."""
  if not task.players:
    return create_optimizer(config.optimizer, schedule)
  if config.optimizer.accumulate_steps != 1 or config.optimizer.skip_nonfinite:
    raise ZooError(
      f"task {config.task.name!r} trains {len(task.players)} players with their own optimisers; "
      "optimizer.accumulate_steps and optimizer.skip_nonfinite are not supported with it"
    )
  txs = {player: create_optimizer(config.optimizer, schedule) for player in task.players}
  return optax.partition(txs, lambda params: {k: k for k in params})


def _device_context(dataset, par: parallel_lib.Parallel) -> dict[str, jax.Array] | None:
  """The dataset's shared context (a graph) on the devices, once for every split; None without one."""
  context = getattr(dataset, "context", None)
  return None if context is None else par.put_replicated(dict(context))


def _with_context(data: dict[str, Any], context: dict[str, jax.Array] | None) -> dict[str, Any]:
  """A split's arrays plus the shared context, if there is one."""
  return data if context is None else {**data, "context": context}


def _carve_validation(dataset: Dataset, fraction: float, seed: int):
  """Splits `fraction` of the training examples off as a validation split (seeded by `seed`)."""
  if fraction == 0:
    return dataset, None
  n = len(dataset.x_train)
  n_val = round(fraction * n)
  if not 0 < n_val < n:
    raise ZooError(f"data.validation_split={fraction} leaves no training or no validation examples (of {n})")
  perm = np.random.default_rng(seed).permutation(n)
  val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
  carved = dataclasses.replace(dataset, x_train=dataset.x_train[train], y_train=dataset.y_train[train])
  return carved, (dataset.x_train[val], dataset.y_train[val])


def epoch_permutation(data_rng: jax.Array, epoch: int | jax.Array, n: int) -> jax.Array:
  """The order of the training examples in `epoch`: a function of (seed, epoch) only."""
  return jax.random.permutation(jax.random.fold_in(data_rng, epoch), n)


def eval_batches(x: np.ndarray, y: np.ndarray, batch_size: int, multiple: int = 1) -> dict[str, np.ndarray]:
  """A split padded to whole batches and stacked as (num_batches, B, ...), with a mask for the padding;
  B is a multiple of `multiple` (the number of devices that share each batch)."""
  n = len(x)
  batch_size = -(-min(batch_size, n) // multiple) * multiple
  num_batches = math.ceil(n / batch_size)
  pad = num_batches * batch_size - n
  mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
  y = np.concatenate([y, np.zeros((pad, *y.shape[1:]), y.dtype)])
  stack = lambda a: a.reshape(num_batches, batch_size, *a.shape[1:])
  return {"input": stack(x), "label": stack(y), "mask": stack(mask)}


def _process_batches(
  par,
  host_train: dict[str, np.ndarray],
  batch_size: int,
  steps_per_epoch: int,
  data_rng: jax.Array,
  start_step: int,
):
  """The training batches of a multi-process run from `start_step` on: every process draws the same epoch
  permutation and feeds its own rows of each global batch (`jax.make_array_from_process_local_data`)."""
  n = len(host_train["input"])
  rows = par.process_rows(batch_size)
  perm = None
  step = start_step
  while True:
    if perm is None or step % steps_per_epoch == 0:
      perm = np.asarray(jax.device_get(epoch_permutation(data_rng, step // steps_per_epoch, n)))
    offset = (step % steps_per_epoch) * batch_size
    idx = perm[offset : offset + batch_size][rows]
    yield par.put_process_batch({k: v[idx] for k, v in host_train.items()})
    step += 1


def take_pending(pending: list[tuple[int, Any]]) -> tuple[tuple[int, ...], tuple[Any, ...]]:
  """The logged steps and their metrics still on the device, read in one transfer; `pending` is emptied."""
  steps, values = zip(*pending, strict=True)
  pending.clear()
  return steps, parallel_lib.to_host(values)


def _summarise(task, totals: dict[str, Any]) -> dict[str, float]:
  totals = parallel_lib.to_host(totals)
  count = float(totals.pop("count"))
  return task.summarize({k: float(v) / count for k, v in totals.items()})


def train_and_evaluate(
  config: config_lib.Config, workdir: str | Path, *, progress: bool = True, dataset: Dataset | None = None
) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns the final metrics.

  `workdir` receives config.json, metrics.jsonl, TensorBoard events (tensorboard/), curves.png and
  checkpoints/. Progress goes to a tqdm bar (`progress=False` hides it) and to `logging`.
  """
  if config.task.name == "continual":  # A sequence of tasks: its own trainer (zoo/train/continual.py).
    from zoo.train.continual import train_continual

    return train_continual(config, workdir, progress=progress, dataset=dataset)
  from zoo.train import ensemble

  if ensemble.is_ensemble(config):  # Several models in one vmapped step (zoo/train/ensemble.py).
    return ensemble.train_ensemble(config, workdir, progress=progress, dataset=dataset)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  exp = build(config, dataset)
  cfg, ds = exp.config, exp.dataset

  par = parallel_lib.create(cfg.parallel)
  par.check_batch_size(cfg.data.batch_size)
  if par.mode == "pmap" and exp.streaming:
    raise ZooError("parallel='pmap' needs the dataset in memory; stream it with parallel='data'")
  host_fed = exp.streaming or par.multiprocess  # batches built on the host, each process its own rows
  if par.multiprocess and exp.streaming:
    raise ZooError("a dataset streamed from disk trains in one process; several processes need it in memory")
  if par.multiprocess and cfg.averaging.swa_start_epoch is not None:
    raise ZooError("averaging.swa_start_epoch (SWA) is not supported in a run of several processes")
  primary = jax.process_index() == 0  # the process that writes the run's files (all write checkpoints)
  rng = jax.random.key(cfg.seed)
  init_rng, data_rng, dropout_rng = jax.random.split(rng, 3)
  context = None if exp.streaming else _device_context(ds, par)
  state = initial_state(exp, par, init_rng, context)

  checkpointer = Checkpointer(workdir / "checkpoints", keep=cfg.keep_checkpoints)
  # The newest checkpoint that verifies against its checksums; damaged ones are set aside with a warning.
  start_step, state = checkpointer.restore_latest(
    state, f"Use a new --workdir, or the config the run started with ({workdir / 'config.json'})."
  )
  if start_step:
    log.info("resumed from the checkpoint of step %d in %s", start_step, checkpointer.directory)
  state = par.to_devices(state)  # pmap: a copy per device
  if primary:
    write_config(workdir, cfg)
    _write_model_card(workdir, exp)
  # Every process replays its own history (early stopping); only the primary's is the run's.
  logdir = workdir if primary else workdir / "processes" / str(jax.process_index())
  logdir.mkdir(parents=True, exist_ok=True)
  writer = MetricWriter(logdir, resume_step=start_step)
  log.info(
    "%s: %s parameters, %d steps (%d per epoch) on %d device(s), parallel=%s",
    cfg.model.name,
    f"{count_params(state.params):,}",
    exp.total_steps,
    exp.steps_per_epoch,
    par.num_devices,
    par.mode,
  )

  spe = exp.steps_per_epoch
  split_batches = functools.partial(
    eval_batches, batch_size=cfg.data.eval_batch_size, multiple=1 if par.multiprocess else par.num_devices
  )
  if exp.streaming:  # Batches decoded from disk on the host; evaluation streams its split too.
    train_step = make_step(exp, par, host_fed=True)
    evaluate, predict = streaming.make_eval_fns(exp.model, exp.task, exp.preprocess)
    test_data = streaming.EvalSplit.of(ds, ds.eval_split, cfg.data.eval_batch_size)
    test_labels = test_data.labels
    eval_variables = _eval_variables_fn(exp, None, None)
  else:  # Whole splits in memory: on the device, where the train step gathers its batch.
    n_train = len(ds.x_train)
    host_train = {"input": ds.x_train, "label": ds.y_train}
    train_data = None if host_fed else _with_context(par.put_replicated(host_train), context)
    test_data = _with_context(par.shard_eval(split_batches(ds.x_test, ds.y_test)), context)
    test_labels = ds.y_test
    train_step = make_step(exp, par, host_fed)  # several processes: each feeds its rows of every batch
    evaluate = make_eval_fn(exp.model, exp.task, exp.preprocess)
    predict = make_predict_fn(exp.model, exp.preprocess, exp.task)
    eval_variables = _eval_variables_fn(exp, train_data, epoch_permutation(data_rng, 0, n_train))
  # Several CPU devices: each call completes before the next is dispatched (parallel.Parallel.serialize).
  train_step, evaluate, predict = par.synced(train_step), par.synced(evaluate), par.synced(predict)
  eval_variables = par.synced(eval_variables)
  splits = {"test": test_data}
  if exp.validation is not None:
    validation = _with_context(par.shard_eval(split_batches(*exp.validation)), context)
    splits = {"validation": validation, **splits}
  watched = "validation" if "validation" in splits else "test"
  tracker = BestTracker(cfg.early_stopping, watched)
  tracker.replay(writer.history)
  plateau = PlateauScaler(cfg.reduce_on_plateau, watched) if cfg.reduce_on_plateau.patience else None
  if plateau is not None:
    plateau.replay(writer.history)  # Its scale is also in the checkpointed state; this restores its count.
  keep_best = cfg.early_stopping.patience is not None or cfg.early_stopping.restore_best
  best_checkpointer = Checkpointer(workdir / "best_checkpoint", keep=1) if keep_best else None

  # With optimizer.skip_nonfinite the optimiser skips such updates itself (and counts them).
  stop_on_nonfinite = cfg.stop_on_nonfinite and not cfg.optimizer.skip_nonfinite
  pending: list[tuple[int, Any]] = []  # Metrics still on the device, read in one go at each log step.
  last_saved = start_step
  test_metrics: dict[str, float] = {}
  bar = progress_bar(exp.total_steps, start_step, progress)
  interval_start = last_plot = time.perf_counter()

  def flush(step: int) -> None:
    """Reads the pending metrics (the device keeps running), logs their mean, checks they are finite."""
    nonlocal interval_start
    if not pending:
      return
    steps, values = take_pending(pending)
    for s, v in zip(steps, values, strict=True):
      if stop_on_nonfinite and (what := _nonfinite(v)):
        checkpointer.wait()
        raise NonFiniteLossError(_nonfinite_message(what, v, s, last_saved, checkpointer.directory))
    mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
    if "skipped_updates" in mean:  # A running count: its latest value, not its mean over the interval.
      mean["skipped_updates"] = float(values[-1]["skipped_updates"])
    now = time.perf_counter()
    mean["steps_per_sec"] = len(values) / max(now - interval_start, 1e-9)
    interval_start = now
    writer.write(step, "train", mean)
    bar.set_postfix(
      loss=f"{mean['loss']:.4f}", **({"acc": f"{mean['accuracy']:.4f}"} if "accuracy" in mean else {})
    )

  def save(step: int) -> None:
    nonlocal last_saved
    flush(step)  # With stop_on_nonfinite, a state whose loss was not finite is never checkpointed.
    if step != last_saved:
      checkpointer.save(step, par.from_devices(state))
      last_saved = step

  def stop_here(step: int) -> None:
    """Ends the run on a signal once the state of `step` is checkpointed; a rerun resumes from it."""
    save(step)
    checkpointer.wait()
    raise TrainingInterrupted(step, checkpointer.directory, stop.signum)

  perm = None
  train_batches = None  # The stream of a dataset streamed from disk, from start_step on.
  stopped_early = tracker.should_stop  # A rerun of a run that stopped early does not train on.
  step = start_step - 1  # The step under way (0-based), for an out-of-memory error's message.
  # Several processes would have to agree on the step to stop at: they keep the signals' default actions.
  stop = StopSignals(enabled=not par.multiprocess)
  try:
    if exp.streaming:
      train_batches = streaming.train_batches(ds, cfg.data.batch_size, seed=cfg.seed, start_step=start_step)
    elif host_fed:
      train_batches = _process_batches(par, host_train, cfg.data.batch_size, spe, data_rng, start_step)
    for step in range(start_step, exp.total_steps if not stopped_early else start_step):
      if train_batches is None:
        epoch = step // spe
        if perm is None or step % spe == 0:
          perm = epoch_permutation(data_rng, epoch, n_train)
        state, metrics = train_step(state, train_data, perm, dropout_rng)
      else:
        state, metrics = train_step(state, par.put_batch(next(train_batches)), dropout_rng)
      pending.append((step + 1, metrics))
      bar.update(1)
      done = step + 1
      if done % cfg.log_every_steps == 0:
        flush(done)
      end_of_epoch = done % spe == 0
      is_last = done == exp.total_steps
      if (end_of_epoch and (done // spe) % cfg.eval_every_epochs == 0) or is_last:
        flush(done)
        variables = eval_variables(par.from_devices(state))
        evaluations = {name: _summarise(exp.task, evaluate(variables, data)) for name, data in splits.items()}
        for name, values in evaluations.items():
          writer.write(done, name, {"epoch": done / spe, **values})
          log.info("step %d (epoch %g): %s %s", done, done / spe, name, _format(values))
        test_metrics = evaluations["test"]
        if tracker.update(done, evaluations[watched]) and best_checkpointer is not None:
          best_checkpointer.save(done, par.from_devices(state))
        stopped_early = tracker.should_stop
        if plateau is not None:
          plateau.update(done, evaluations[watched])
          if plateau.scale != float(parallel_lib.to_host(par.from_devices(state).lr_scale)):
            log.info(
              "step %d: %s %s on a plateau; learning rate x%g",
              done,
              watched,
              plateau.config.metric,
              plateau.scale,
            )
            scale = jnp.asarray(plateau.scale, jnp.float32)
            state = par.to_devices(par.from_devices(state).replace(lr_scale=scale))
        if is_last or time.perf_counter() - last_plot > 60:  # A plot costs about a second.
          writer.plot()
          last_plot = time.perf_counter()
        save(done)
        if stopped_early:
          log.info(
            "early stopping at step %d: %s %s has not improved for %d evaluations (best %.4f at step %d)",
            done,
            watched,
            cfg.early_stopping.metric,
            tracker.since_best,
            tracker.best,
            tracker.best_step,
          )
          break
      elif done % cfg.checkpoint_every_steps == 0:
        save(done)
      if stop.signum is not None:  # A Python bool: no device round trip.
        stop_here(done)
    state = par.from_devices(state)
    last_step = int(parallel_lib.to_host(state.step))
    flush(last_step)
    if stop.signum is not None:  # The signal came during the last evaluation, or before a finished run.
      stop_here(last_step)
    checkpointer.wait()  # A failed last save (a full disk) is reported before the final evaluation.
    if train_batches is not None:
      train_batches.close()  # Its decoding threads stop; the evaluations below stream their own.
    if cfg.early_stopping.restore_best and tracker.best_step not in (None, last_step):
      best_checkpointer.wait()
      state = best_checkpointer.restore(state, tracker.best_step)
      log.info(
        "restored the parameters of step %d (best %s %s %.4f)",
        tracker.best_step,
        watched,
        cfg.early_stopping.metric,
        tracker.best,
      )
      test_metrics = {}
    if not test_metrics:  # Restored, or already finished: evaluate the final parameters.
      test_metrics = _summarise(exp.task, evaluate(eval_variables(state), test_data))
    outputs = parallel_lib.to_host(predict(eval_variables(state), test_data))
    n_test = len(test_labels)
    outputs = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n_test], outputs)
    report = {}
    if primary:
      report = exp.task.write_report(outputs, test_labels, workdir)
      samples_rng = jax.random.fold_in(rng, 1 << 20)
      report.update(exp.task.write_samples(exp.model, eval_variables(state), workdir, samples_rng) or {})
  except jax.errors.JaxRuntimeError as e:
    if _out_of_memory(e):
      raise ZooError(_out_of_memory_message(cfg, step + 1, e, last_saved, checkpointer.directory)) from e
    raise
  finally:
    stop.restore()
    if train_batches is not None:
      train_batches.close()
    bar.close()
    checkpointer.close()
    if best_checkpointer is not None:
      best_checkpointer.close()
    writer.close()
  result = {
    "step": int(parallel_lib.to_host(state.step)),
    "stopped_early": bool(stopped_early),
    "report": report,
    "best": {"split": watched, "step": tracker.best_step, cfg.early_stopping.metric: tracker.best},
    "test": test_metrics,
    "train": next((r for r in reversed(writer.history) if r["split"] == "train"), {}),
  }
  skipped = optim.skipped_updates(cfg.optimizer, state.opt_state)
  if skipped is not None:
    result["skipped_updates"] = int(parallel_lib.to_host(skipped))
    if result["skipped_updates"]:
      log.warning("%d updates were skipped for non-finite gradients", result["skipped_updates"])
  if primary:
    path = workdir / "result.json"
    path.with_suffix(".json.tmp").write_text(json.dumps(result, indent=2) + "\n")
    path.with_suffix(".json.tmp").replace(path)  # Whole or absent, whenever the run is killed.
  result["state"] = state
  return result


def _nonfinite(metrics: dict[str, Any]) -> str | None:
  """Which of a step's loss and gradient norm is NaN or infinite, if one is. A non-finite gradient with a
  finite loss has already spoilt the parameters of that step: they must not be checkpointed either."""
  if not math.isfinite(float(metrics["loss"])):
    return "loss"
  # float16 loss scaling skips the update of a step whose gradients overflowed: that is not a failure.
  if (
    "grad_norm" in metrics and "loss_scale" not in metrics and not math.isfinite(float(metrics["grad_norm"]))
  ):
    return "gradient norm"
  return None


def _nonfinite_message(
  what: str, metrics: dict[str, Any], step: int, last_saved: int, directory: Path
) -> str:
  value = float(metrics["loss" if what == "loss" else "grad_norm"])
  if last_saved:
    kept = (
      f"the last good checkpoint is step {last_saved}, in {directory} (a rerun resumes from it, and diverges "
      f"again unless the config changes)"
    )
  else:
    kept = f"there is no last good checkpoint: none was written before it (in {directory})"
  name = "training loss" if what == "loss" else "gradient norm"
  return (
    f"the {name} became {value} at step {step}; the run stopped and {kept}. Try a lower "
    f"optimizer.learning_rate, gradient clipping (optimizer.grad_clip_norm=1.0), or "
    f"optimizer.skip_nonfinite=True to skip (and count) such updates."
  )


def _out_of_memory(error: BaseException) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _out_of_memory_message(
  cfg: config_lib.Config, step: int, error: BaseException, last_saved: int, directory: Path
) -> str:
  """What to set when a step does not fit in the device's memory: each option with its config key."""
  batch, accumulate = cfg.data.batch_size, cfg.optimizer.accumulate_steps
  options = []
  if batch > 1:
    options.append(
      f"a smaller batch with gradient accumulation, which keeps the {batch * accumulate} examples per update "
      f"(--config.data.batch_size={batch // 2} --config.optimizer.accumulate_steps={accumulate * 2}; now "
      f"{batch} and {accumulate})"
    )
  if "remat" not in model_fields(cfg.model.name):
    with_remat = [name for name in list_models() if "remat" in model_fields(name)]
    options.append(
      f"rematerialisation (model.kwargs.remat=True recomputes activations in the backward pass; "
      f"{cfg.model.name} has no such option, models such as {', '.join(with_remat[:4])} have)"
    )
  elif not cfg.model.kwargs.get("remat"):
    options.append("rematerialisation (--config.model.kwargs.remat=True: activations recomputed, not stored)")
  if cfg.precision == "float32":
    options.append("bfloat16 compute (--config.precision=bfloat16)")
  options.append(
    f"if it failed in an evaluation, a smaller --config.data.eval_batch_size (now {cfg.data.eval_batch_size})"
  )
  kept = (
    f"the last checkpoint is step {last_saved}, in {directory}" if last_saved else "no checkpoint was written"
  )
  first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
  return f"the device ran out of memory at step {step} ({first}); {kept}. To fit, try: {'; '.join(options)}."


def initial_state(exp: Experiment, par: parallel_lib.Parallel, init_rng: jax.Array, context=None):
  """The run's first TrainState (before any checkpoint is restored), laid out over the devices."""
  cfg, ds = exp.config, exp.dataset
  if exp.streaming:
    example = jnp.asarray(exp.preprocess(streaming.example_batch(ds, cfg.data.batch_size)))
  else:
    first_batch = jnp.asarray(exp.preprocess(ds.x_train[: cfg.data.batch_size]))
    example = model_input(_with_context({"input": first_batch}, context))
  averaging_on = cfg.averaging.ema_decay is not None or cfg.averaging.swa_start_epoch is not None
  loss_scale = None
  if cfg.precision == "float16":  # bfloat16 has float32's range and needs none
    if exp.task.players:
      raise ZooError(f"precision='float16' (loss scaling) is not supported by task {cfg.task.name!r}")
    loss_scale = precision.DynamicLossScale.create()
  return create_train_state(
    exp.model, exp.tx, example, init_rng, cfg.averaging if averaging_on else None, par.state_shardings,
    loss_scale=loss_scale,
  )  # fmt: skip


def make_step(exp: Experiment, par: parallel_lib.Parallel, host_fed: bool = False):
  """The run's compiled train step with every option of its config: `step(state, data, perm, rng)` over
  splits on the device, or with `host_fed` `step(state, batch, rng)` over batches the host feeds."""
  cfg = exp.config
  averaging_on = cfg.averaging.ema_decay is not None or cfg.averaging.swa_start_epoch is not None
  options = dict(
    steps_per_epoch=exp.steps_per_epoch,
    preprocess=exp.preprocess,
    augment=exp.augment,
    penalty=penalty_fn(cfg.regularization),
    averaging=cfg.averaging if averaging_on else None,
    update_count=functools.partial(optim.update_count, cfg.optimizer),
    skipped_updates=functools.partial(optim.skipped_updates, cfg.optimizer),
    parallel=par,
    compute_dtype=precision.compute_dtype(cfg.precision),
    compiler_options=compiler_options(cfg),
  )
  if host_fed:
    return make_batch_train_step(exp.model, exp.tx, exp.task, exp.schedule, **options)
  return make_train_step(exp.model, exp.tx, exp.task, exp.schedule, batch_size=cfg.data.batch_size, **options)


def _eval_variables_fn(exp: Experiment, train_data: dict[str, jax.Array] | None, perm: jax.Array | None):
  """`eval_variables(state)`: the variables evaluation uses: the EMA's, the SWA mean's (with BatchNorm
  statistics recomputed over training batches in `perm`'s order) once it has a member, else the state's.
  `train_data` and `perm` serve SWA only (refused for streamed datasets, which pass None)."""
  cfg = exp.config.averaging
  if cfg.swa_start_epoch is None:
    return lambda state: state.averages["ema"] if "ema" in state.averages else state.variables()
  num_batches = min(cfg.swa_bn_batches or exp.steps_per_epoch, exp.steps_per_epoch)
  recompute = averaging.make_batch_stats_fn(
    exp.model, exp.preprocess, exp.config.data.batch_size, num_batches
  )

  def eval_variables(state):
    if int(state.averages["swa_count"]) == 0:
      return state.variables()
    return recompute({"params": state.averages["swa"], **state.model_state}, train_data, perm)

  return eval_variables


def compiler_options(cfg: config_lib.Config) -> dict[str, str] | None:
  """XLA options the step needs: with `model.kwargs.remat` on CPU, keep rematerialisation's barriers (XLA's
  CPU pipeline removes them early, and then merges the recomputation back into the forward pass: no memory
  saved; see README, Memory)."""
  if cfg.model.kwargs.get("remat") and jax.default_backend() == "cpu":
    return {"xla_disable_hlo_passes": "cse_barrier_expander"}
  return None


def penalty_fn(reg: config_lib.RegularizationConfig):
  if not (reg.l1 or reg.l2):
    return None
  return functools.partial(regularizers.penalty, l1=reg.l1, l2=reg.l2, pattern=reg.pattern)


def _format(metrics: dict[str, float]) -> str:
  return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def write_config(workdir: Path, cfg: config_lib.Config) -> None:
  """config.json in `workdir` (atomically), warning when it differs from the one saved there."""
  path = workdir / "config.json"
  if path.exists():
    try:
      old = json.loads(path.read_text())
    except json.JSONDecodeError:
      old = None
    new = config_lib.to_dict(cfg)
    if old is not None and json.loads(json.dumps(new)) != old:
      changed = [k for k in new if json.loads(json.dumps(new[k])) != old.get(k)]
      log.warning("the config differs from the one saved in %s (sections: %s)", path, ", ".join(changed))
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(config_lib.to_json(cfg) + "\n")
  tmp.replace(path)


def _write_model_card(workdir: Path, exp: Experiment) -> None:
  """model.json: what rebuilds the trained model without its dataset (zoo.train.restore): the registered
  name, the keyword arguments it was built with (incl. those taken from the data: num_classes,
  vocab_size), the token vocabulary and the input normalisation."""
  ds = exp.dataset
  vocab = getattr(ds, "vocab", None)
  card = {
    "model": exp.config.model.name,
    "kwargs": exp.model_kwargs,
    "vocab": None if vocab is None else (vocab if isinstance(vocab, str) else list(vocab)),
    "mean": np.asarray(exp.mean, np.float32).tolist(),
    "std": np.asarray(exp.std, np.float32).tolist(),
    "tokens": bool(getattr(ds, "tokens", False)),
  }
  path = workdir / "model.json"
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(card, default=str) + "\n")
  tmp.replace(path)


def progress_bar(total: int, initial: int, enabled: bool):
  from tqdm.auto import tqdm

  return tqdm(
    total=total, initial=initial, unit="step", disable=not enabled, dynamic_ncols=True, mininterval=0.5
  )
