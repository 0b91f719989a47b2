"""Weight averaging: an exponential moving average of the weights (Polyak & Juditsky 1992) and stochastic
weight averaging (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and Better
Generalization"), with BatchNorm statistics recomputed for the averaged weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from zoo.config import AveragingConfig
from zoo.registry import ZooError


def check(cfg: AveragingConfig) -> None:
  if cfg.ema_decay is not None and not 0 < cfg.ema_decay < 1:
    raise ZooError(f"averaging.ema_decay must be between 0 and 1 (e.g. 0.999), got {cfg.ema_decay}")
  if cfg.swa_start_epoch is not None and cfg.swa_start_epoch < 0:
    raise ZooError(f"averaging.swa_start_epoch must be >= 0, got {cfg.swa_start_epoch}")
  if cfg.ema_decay is not None and cfg.swa_start_epoch is not None:
    raise ZooError("averaging: choose one of ema_decay and swa_start_epoch, not both")
  if cfg.swa_start_epoch is None and (cfg.swa_lr is not None or cfg.swa_bn_batches is not None):
    raise ZooError("averaging.swa_lr and swa_bn_batches need averaging.swa_start_epoch")
  if cfg.swa_bn_batches is not None and cfg.swa_bn_batches < 1:
    raise ZooError(f"averaging.swa_bn_batches must be >= 1, got {cfg.swa_bn_batches}")


def init_averages(cfg: AveragingConfig, variables: dict[str, Any]) -> dict[str, Any]:
  """The averages a train state carries: {} when averaging is off."""
  if cfg.ema_decay is not None:
    return {"ema": variables}
  if cfg.swa_start_epoch is not None:
    return {"swa": variables["params"], "swa_count": jnp.zeros((), jnp.int32)}
  return {}


def update_averages(
  cfg: AveragingConfig,
  averages: dict[str, Any],
  variables: dict[str, Any],
  step: jax.Array,
  steps_per_epoch: int,
) -> dict[str, Any]:
  """The averages after training step `step` (counted from 1) produced `variables`; inside the train step."""
  if "ema" in averages:
    decay = jnp.asarray(cfg.ema_decay, jnp.float32)
    if cfg.ema_warmup:
      t = step.astype(jnp.float32)
      decay = jnp.minimum(decay, (1 + t) / (10 + t))
    # incremental_update(new, old, s) = s * new + (1 - s) * old, leaf by leaf.
    return {"ema": optax.incremental_update(variables, averages["ema"], 1 - decay)}
  if "swa" in averages:
    # After swa_start_epoch epochs of ordinary training, the weights at the end of every epoch join the mean.
    collect = (step % steps_per_epoch == 0) & (step // steps_per_epoch > cfg.swa_start_epoch)
    n = averages["swa_count"]

    def add(swa):
      return jax.tree.map(lambda a, w: a + (w - a) / (n + 1).astype(a.dtype), swa, variables["params"])

    swa = jax.lax.cond(collect, add, lambda swa: swa, averages["swa"])
    return {"swa": swa, "swa_count": n + collect.astype(jnp.int32)}
  return averages


def swa_schedule(schedule: optax.Schedule, start_count: int, swa_lr: float) -> optax.Schedule:
  """`schedule` until `start_count`, then the constant SWA rate."""
  return lambda count: jnp.where(count >= start_count, jnp.asarray(swa_lr, jnp.float32), schedule(count))


def is_batch_norm_statistic(path: tuple[Any, ...]) -> bool:
  """A BatchNorm running mean or variance: `batch_stats/.../{mean,var}` (flax.linen.BatchNorm's names)."""
  keys = [getattr(k, "key", k) for k in path]
  return keys[0] == "batch_stats" and keys[-1] in ("mean", "var")


def make_batch_stats_fn(
  model: nn.Module, preprocess: Callable[[jax.Array], jax.Array], batch_size: int, num_batches: int
) -> Callable[[dict[str, Any], dict[str, jax.Array], jax.Array], dict[str, Any]]:
  """Returns `recompute(variables, train_data, perm) -> variables` with each BatchNorm's running mean and
  variance replaced by the mean of its batch statistics over `num_batches` training batches (taken in
  `perm`'s order), as torch.optim.swa_utils.update_bn does for averaged weights.

  The model's BatchNorm update is running <- m running + (1 - m) batch for a momentum m the trainer need
  not know: starting each batch from running = 0 gives (1 - m) batch, and one probe from running = 1 gives
  m. Other collections (e.g. a spectral norm's power-iteration vector) are left as they are.
  """

  def run(variables, batch_input, fill):
    stats = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.full_like(v, fill) if is_batch_norm_statistic(p) else v,
      {k: v for k, v in variables.items() if k != "params"},
    )
    # Training mode, dropout included, as torch's update_bn runs it; a fixed key keeps it a function.
    rngs = {"dropout": jax.random.key(0)}
    _, new = model.apply(
      {"params": variables["params"], **stats}, batch_input, train=True, rngs=rngs, mutable=list(stats)
    )
    return new

  @jax.jit
  def recompute(variables, train_data, perm):
    if not any(is_batch_norm_statistic(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables)):
      return variables

    def batch(i):
      idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
      return preprocess(train_data["input"][idx])

    first = batch(0)
    zero = run(variables, first, 0.0)
    momentum = jax.tree.map(jnp.subtract, run(variables, first, 1.0), zero)

    def body(total, i):
      return jax.tree.map(jnp.add, total, run(variables, batch(i), 0.0)), None

    total, _ = jax.lax.scan(body, zero, jnp.arange(1, num_batches))
    mean = jax.tree.map(lambda t, m: t / (num_batches * (1 - m)), total, momentum)
    return jax.tree_util.tree_map_with_path(
      lambda p, v, new: new if is_batch_norm_statistic(p) else v,
      variables,
      {"params": variables["params"], **mean},
    )

  return recompute
