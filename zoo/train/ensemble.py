"""Many models in one compiled step: `jax.vmap` over the training state.

- `ensemble = N`: N models that differ only in seed (seed, seed + 1, ...): their own initialisation, data
  order, dropout and augmentation. Member i is the model `seed + i` alone would give.
- `sweep = {KEY: (v1, v2, ...)}`: one model per value of one numeric field that the optimiser, schedule,
  loss or penalty reads (same seed). The members' optimisers, schedules and losses are chosen by member
  index with `jax.lax.switch`; under `vmap` a switch computes every branch, so a sweep of V values computes
  V optimiser updates and losses per member: cheap next to the forward and backward passes, which are
  vmapped once.

The run directory holds the stacked state's checkpoints (a killed run resumes) and the ensemble's metrics;
`members/<i>_<label>/` holds each member as an ordinary run (config.json, model.json, metrics.jsonl and a
checkpoint written at the end): `zoo.train.restore.load_run` and `train.py --workdir` take it as it is.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zoo import config as config_lib
from zoo import optim
from zoo.optim import create_schedule
from zoo.registry import ZooError
from zoo.tasks import create_task
from zoo.train import loop, precision
from zoo.train import parallel as parallel_lib
from zoo.train.checkpoint import Checkpointer
from zoo.train.state import count_params, init_train_state
from zoo.train.steps import _make_update, compile_step, gather_fn, make_eval_fn, make_predict_fn, model_input
from zoo.train.writers import MetricWriter

log = logging.getLogger(__name__)

SWEEPABLE_SECTIONS = ("optimizer.", "schedule.", "task.kwargs.", "regularization.")


def is_ensemble(config: config_lib.Config) -> bool:
  return config.ensemble != 1 or bool(config.sweep)


def member_configs(config: config_lib.Config) -> tuple[list[config_lib.Config], list[str]]:
  """The members' configs (each an ordinary single-model config) and their labels."""
  if config.ensemble < 1:
    raise ZooError(f"ensemble={config.ensemble} must be >= 1")
  if config.ensemble > 1 and config.sweep:
    raise ZooError("set ensemble or sweep, not both")
  base = dataclasses.replace(copy.deepcopy(config), ensemble=1, sweep={})
  if not config.sweep:
    seeds = [config.seed + i for i in range(config.ensemble)]
    return [dataclasses.replace(copy.deepcopy(base), seed=s) for s in seeds], [f"seed{s}" for s in seeds]
  if len(config.sweep) != 1:
    raise ZooError(f"sweep takes one key, got {sorted(config.sweep)}; sweep one field at a time")
  ((key, values),) = config.sweep.items()
  if not key.startswith(SWEEPABLE_SECTIONS):
    raise ZooError(
      f"sweep key {key!r}: a sweep varies a numeric field that the optimiser, schedule, loss or penalty "
      f"reads (keys under {', '.join(s.rstrip('.') for s in SWEEPABLE_SECTIONS)}); train other fields as "
      "separate runs"
    )
  values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
  if len(values) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
    raise ZooError(f"sweep {key!r} needs at least two numbers, got {values!r}")
  members = []
  for value in values:
    member = copy.deepcopy(base)
    config_lib.apply_override(member, f"{key}={value!r}")
    members.append(member)
  return members, [f"{key.rsplit('.', 1)[-1]}={v:g}" for v in values]


@dataclasses.dataclass(frozen=True)
class _Parts:
  """Each member's optimiser, schedule, task and penalty; `at(index)` the ones of a traced member index."""

  txs: list[Any]
  schedules: list[Any]
  tasks: list[Any]
  penalties: list[Any]

  def at(self, index: jax.Array):
    if len(self.txs) == 1:
      return self.txs[0], self.schedules[0], self.tasks[0], self.penalties[0]
    txs, schedules, penalties = self.txs, self.schedules, self.penalties

    def update(grads, state, params=None, **extra):
      return jax.lax.switch(index, [functools.partial(t.update, **extra) for t in txs], grads, state, params)

    tx = optax.GradientTransformationExtraArgs(
      lambda params: jax.lax.switch(index, [t.init for t in txs], params), update
    )
    schedule = lambda count: jax.lax.switch(index, schedules, count)
    penalty = None
    if any(p is not None for p in penalties):
      zero = lambda params: jnp.zeros((), jnp.float32)
      penalty = lambda params: jax.lax.switch(index, [p or zero for p in penalties], params)
    return tx, schedule, _SwitchedTask(self.tasks, index), penalty


class _SwitchedTask:
  """A task whose loss is member `index`'s (the members' tasks differ only in numbers)."""

  def __init__(self, tasks: list[Any], index: jax.Array):
    self._tasks, self._index = tasks, index

  def __getattr__(self, name: str) -> Any:
    return getattr(self._tasks[0], name)

  def loss(self, outputs, batch):
    return jax.lax.switch(self._index, [t.loss for t in self._tasks], outputs, batch)


def _parts(configs: list[config_lib.Config], exp: loop.Experiment, sweep: bool) -> _Parts:
  """Builds every member's optimiser etc. (the same objects for an ensemble of seeds)."""
  if not sweep:
    return _Parts([exp.tx], [exp.schedule], [exp.task], [loop.penalty_fn(configs[0].regularization)])
  txs, schedules, tasks, penalties = [], [], [], []
  for c in configs:
    schedule = create_schedule(c.schedule, c.optimizer.learning_rate, exp.total_steps, exp.steps_per_epoch)
    task = create_task(c.task.name, **c.task.kwargs)
    txs.append(loop._optimizer(c, task, schedule))
    schedules.append(schedule)
    tasks.append(task)
    penalties.append(loop.penalty_fn(c.regularization))
  return _Parts(txs, schedules, tasks, penalties)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What an ensemble or sweep run is built from (the trainer below and benchmarks/train_step.py)."""

  config: config_lib.Config
  configs: list[config_lib.Config]
  labels: list[str]
  exp: loop.Experiment  # of member 0: the model and data every member shares
  par: parallel_lib.Parallel
  parts: _Parts

  @classmethod
  def of(cls, config: config_lib.Config, dataset=None) -> Setup:
    configs, labels = member_configs(config)
    exp = loop.build(configs[0], dataset)
    par = parallel_lib.create(config.parallel)
    par.check_batch_size(exp.config.data.batch_size)
    _check_supported(config, exp, par)
    if config.precision == "float16":
      raise ZooError("ensembles and sweeps support precision float32 and bfloat16, not float16")
    parts = _parts(configs, exp, sweep=bool(config.sweep))
    params = jax.eval_shape(lambda: exp.model.init(jax.random.key(0), _example(exp), train=False)["params"])
    first = jax.tree.structure(jax.eval_shape(parts.txs[0].init, params))
    for i, tx in enumerate(parts.txs[1:], 1):  # switch branches must keep one state structure
      if jax.tree.structure(jax.eval_shape(tx.init, params)) != first:
        raise ZooError(
          f"sweep value {labels[i]} changes the optimiser's state (e.g. a zero turning an option off); "
          f"sweep values that keep it"
        )
    return cls(config, configs, labels, exp, par, parts)

  def rngs(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each member's (init, data, dropout) keys, stacked: those its own run would use."""
    keys = [jax.random.split(jax.random.key(c.seed), 3) for c in self.configs]
    return tuple(jnp.stack([k[j] for k in keys]) for j in range(3))

  def initial_state(self, init_rngs: jax.Array):
    """The members' first states, stacked on a leading axis and laid out over the devices."""
    example = _example(self.exp)

    def init(rng, i):
      tx, *_ = self.parts.at(i)
      return init_train_state(self.exp.model, tx, example, rng)

    index = jnp.arange(len(self.configs))
    abstract = jax.eval_shape(jax.vmap(init), init_rngs, index)
    return jax.jit(jax.vmap(init), out_shardings=self.par.state_shardings(abstract))(init_rngs, index)

  def make_step(self):
    """`step(states, data, perms, rngs, index)`: every member's update in one compiled, vmapped step."""
    exp, cfg = self.exp, self.exp.config
    spe = exp.steps_per_epoch
    compute_dtype = precision.compute_dtype(self.config.precision)
    gather = gather_fn(cfg.data.batch_size, spe, self.par)

    def member_step(state, data, perm, rng, i):
      tx, schedule, task, penalty = self.parts.at(i)
      update = _make_update(
        exp.model, tx, task, schedule, steps_per_epoch=spe, preprocess=exp.preprocess, augment=exp.augment,
        penalty=penalty, averaging=None, update_count=functools.partial(optim.update_count, cfg.optimizer),
        skipped_updates=functools.partial(optim.skipped_updates, cfg.optimizer), compute_dtype=compute_dtype,
      )  # fmt: skip
      return update(state, gather(state.step, data, perm), rng)

    step = jax.vmap(member_step, in_axes=(0, None, 0, 0, 0))
    return compile_step(step, self.par, compiler_options=loop.compiler_options(self.config))


def _check_supported(config: config_lib.Config, exp: loop.Experiment, par: parallel_lib.Parallel) -> None:
  unsupported = {
    "a dataset streamed from disk": exp.streaming,
    "parallel='pmap'": par.mode == "pmap",
    "several processes": par.multiprocess,
    "early_stopping.patience / restore_best": config.early_stopping.patience is not None
    or config.early_stopping.restore_best,
    "reduce_on_plateau": config.reduce_on_plateau.patience is not None,
    "averaging (EMA / SWA)": config.averaging.ema_decay is not None
    or config.averaging.swa_start_epoch is not None,
    "a dataset with a shared context (graph)": exp.dataset.context is not None,
  }
  bad = [what for what, present in unsupported.items() if present]
  if bad:
    raise ZooError(
      f"ensembles and sweeps do not support {', '.join(bad)}; train the members as separate runs"
    )


def train_ensemble(
  config: config_lib.Config, workdir: str | Path, *, progress: bool = True, dataset=None
) -> dict[str, Any]:
  """Trains the ensemble or sweep `config` names in `workdir`; returns each member's and the ensemble's
  final metrics (see the module docstring)."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  setup = Setup.of(config, dataset)
  configs, labels, exp, par = setup.configs, setup.labels, setup.exp, setup.par
  n = len(configs)
  cfg, ds = exp.config, exp.dataset
  init_rngs, data_rngs, dropout_rngs = setup.rngs()
  index = jnp.arange(n)
  state = setup.initial_state(init_rngs)

  checkpointer = Checkpointer(workdir / "checkpoints", keep=cfg.keep_checkpoints)
  start_step = checkpointer.latest_step() or 0
  if start_step:
    state = checkpointer.restore_or_explain(
      state, start_step, f"the ensemble checkpoint of step {start_step}", "Use a new --workdir."
    )
    log.info("resumed from the checkpoint of step %d in %s", start_step, checkpointer.directory)
  loop.write_config(workdir, config)
  writer = MetricWriter(workdir, resume_step=start_step)
  member_dirs = [workdir / "members" / f"{i}_{label}" for i, label in enumerate(labels)]
  log.info(
    "%s: %d members (%s) of %s parameters, %d steps (%d per epoch) on %d device(s)",
    cfg.model.name,
    n,
    ", ".join(labels),
    f"{count_params(state.params) // n:,}",
    exp.total_steps,
    exp.steps_per_epoch,
    par.num_devices,
  )

  spe = exp.steps_per_epoch
  train_step = par.synced(setup.make_step())
  evaluate = par.synced(
    jax.jit(jax.vmap(make_eval_fn(exp.model, exp.task, exp.preprocess), in_axes=(0, None)))
  )
  predict = par.synced(
    jax.jit(jax.vmap(make_predict_fn(exp.model, exp.preprocess, exp.task), in_axes=(0, None)))
  )
  n_train = len(ds.x_train)
  train_data = par.put_replicated({"input": ds.x_train, "label": ds.y_train})
  split_batches = functools.partial(
    loop.eval_batches, batch_size=cfg.data.eval_batch_size, multiple=par.num_devices
  )
  splits = {"test": par.shard_eval(split_batches(ds.x_test, ds.y_test))}
  if exp.validation is not None:
    splits = {"validation": par.shard_eval(split_batches(*exp.validation)), **splits}
  permutations = jax.jit(jax.vmap(loop.epoch_permutation, in_axes=(0, None, None)), static_argnums=2)

  pending: list[tuple[int, Any]] = []
  history = [_member_history(d, start_step) for d in member_dirs]  # per member: train and evaluation records
  bar = loop.progress_bar(exp.total_steps, start_step, progress)
  interval_start = time.perf_counter()
  last_saved = start_step

  def flush(step: int) -> None:
    nonlocal interval_start
    if not pending:
      return
    steps, values = loop.take_pending(pending)
    for s, v in zip(steps, values, strict=True):
      bad = [labels[i] for i in range(n) if not math.isfinite(float(v["loss"][i]))]
      if bad and cfg.stop_on_nonfinite and not cfg.optimizer.skip_nonfinite:
        checkpointer.wait()
        raise loop.NonFiniteLossError(
          f"the training loss of member(s) {', '.join(bad)} became non-finite at step {s}; the last good "
          f"checkpoint (step {last_saved}) is kept in {checkpointer.directory}"
        )
    now = time.perf_counter()
    for i in range(n):
      member = {k: float(np.mean([v[k][i] for v in values])) for k in values[0]}
      history[i].append({"step": step, "split": "train", **member})
    mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
    mean["steps_per_sec"] = len(values) / max(now - interval_start, 1e-9)
    interval_start = now
    writer.write(step, "train", mean)
    bar.set_postfix(loss=f"{mean['loss']:.4f}")

  def evaluate_all(step: int) -> dict[str, Any]:
    variables = state.variables()
    results = {}
    for name, data in splits.items():
      sums = parallel_lib.to_host(evaluate(variables, data))
      members = [loop._summarise(exp.task, jax.tree.map(lambda a, i=i: a[i], sums)) for i in range(n)]
      for i, m in enumerate(members):
        history[i].append({"step": step, "split": name, "epoch": step / spe, **m})
      combined = {f"member_mean_{k}": float(np.mean([m[k] for m in members])) for k in members[0]}
      labels_ = ds.y_test if name == "test" else exp.validation[1]
      combined.update(_ensemble_metrics(exp.task, parallel_lib.to_host(predict(variables, data)), labels_))
      writer.write(step, name, {"epoch": step / spe, **combined})
      log.info("step %d (epoch %g): %s %s", step, step / spe, name, loop._format(combined))
      results[name] = {"members": members, "ensemble": combined}
    return results

  perms = None
  evaluations: dict[str, Any] = {}
  stop = loop.StopSignals(enabled=not par.multiprocess)  # SIGTERM / SIGINT: save, then stop (as loop's)
  try:
    for step in range(start_step, exp.total_steps):
      if perms is None or step % spe == 0:
        perms = permutations(data_rngs, step // spe, n_train)
      state, metrics = train_step(state, train_data, perms, dropout_rngs, index)
      pending.append((step + 1, metrics))
      bar.update(1)
      done = step + 1
      if done % cfg.log_every_steps == 0:
        flush(done)
      is_last = done == exp.total_steps
      if (done % spe == 0 and (done // spe) % cfg.eval_every_epochs == 0) or is_last:
        flush(done)
        evaluations = evaluate_all(done)
        checkpointer.save(done, state)
        last_saved = done
      elif done % cfg.checkpoint_every_steps == 0:
        flush(done)
        checkpointer.save(done, state)
        last_saved = done
      if stop.signum is not None:  # A Python bool: no device round trip.
        flush(done)
        if last_saved != done:
          checkpointer.save(done, state)
        checkpointer.wait()
        raise loop.TrainingInterrupted(done, checkpointer.directory, stop.signum)
    flush(exp.total_steps)
    if not evaluations:  # already finished: evaluate the restored state
      evaluations = evaluate_all(int(parallel_lib.to_host(state.step)[0]))
    writer.plot()
  finally:
    stop.restore()
    bar.close()
    checkpointer.close()
    writer.close()
  final_step = int(parallel_lib.to_host(state.step)[0])
  _export_members(state, configs, member_dirs, history, exp, final_step)
  result = {
    "step": final_step,
    "members": [
      {"label": label, "workdir": str(d), **{k: v["members"][i] for k, v in evaluations.items()}}
      for i, (label, d) in enumerate(zip(labels, member_dirs, strict=True))
    ],
    "test": evaluations["test"]["ensemble"],
  }
  (workdir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
  result["state"] = state
  return result


def _member_history(directory: Path, upto: int) -> list[dict[str, Any]]:
  """A member's records up to step `upto` from an earlier (resumed) part of the run."""
  path = directory / "metrics.jsonl"
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if record.get("step", 0) <= upto:
      records.append(record)
  return records


def _example(exp: loop.Experiment) -> jax.Array:
  return model_input(
    {"input": jnp.asarray(exp.preprocess(exp.dataset.x_train[: exp.config.data.batch_size]))}
  )


def _ensemble_metrics(task, outputs: Any, labels: np.ndarray) -> dict[str, float]:
  """The ensemble's averaged-prediction metrics, for classifiers (outputs: logits (N, num_batches, B, K)):
  the accuracy and NLL of the members' mean class probabilities."""
  if not isinstance(outputs, np.ndarray) or outputs.ndim != 4 or np.asarray(labels).ndim != 1:
    return {}
  logits = outputs.reshape(outputs.shape[0], -1, outputs.shape[-1])[:, : len(labels)].astype(np.float64)
  logits -= logits.max(-1, keepdims=True)
  probs = np.exp(logits)
  probs /= probs.sum(-1, keepdims=True)
  mean = probs.mean(0)
  labels = np.asarray(labels)
  return {
    "ensemble_accuracy": float(np.mean(mean.argmax(-1) == labels)),
    "ensemble_nll": float(-np.mean(np.log(np.maximum(mean[np.arange(len(labels)), labels], 1e-12)))),
  }


def _export_members(state, configs, member_dirs, history, exp: loop.Experiment, step: int) -> None:
  """Each member as an ordinary run directory: its config, model card, metrics and a checkpoint."""
  host = jax.device_get(state)
  for i, (member_config, directory) in enumerate(zip(configs, member_dirs, strict=True)):
    directory.mkdir(parents=True, exist_ok=True)
    loop.write_config(directory, member_config)
    loop._write_model_card(directory, dataclasses.replace(exp, config=member_config))
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history[i]))
    member = jax.tree.map(lambda a, i=i: np.asarray(a[i]), host)
    checkpointer = Checkpointer(directory / "checkpoints", keep=1)
    try:
      if checkpointer.latest_step() != step:
        checkpointer.save(step, member)
    finally:
      checkpointer.close()
