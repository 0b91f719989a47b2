"""Optimisers and learning-rate schedules by name, built only from optax pieces.

An optimiser is `optax.chain(clip_by_global_norm, <named optimiser>)`; most named optimisers are
`chain(direction, decoupled weight decay under a mask, scale by -learning_rate(step))`, which for Adam is
exactly optax.adamw (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"). Adding one is
one registered function; its keyword arguments are `optimizer.kwargs`, checked against its signature:

  @register_optimizer
  def lion(learning_rate, weight_decay, mask, b1: float = 0.9, b2: float = 0.99):
    return _decoupled(optax.scale_by_lion(b1, b2), learning_rate, weight_decay, mask)

A schedule is `fn(learning_rate, total_steps, **kwargs) -> optax.Schedule`. Durations in `schedule.kwargs`
are given as `<name>_steps` or `<name>_epochs`; the latter are converted to steps once, here. Every
duration counts from the start of training. Any schedule accepts `warmup_steps` (or `warmup_epochs`):
one that does not take it itself gets a linear ramp from 0 to its own value at `warmup_steps`, after
which it is unchanged (so its boundaries and decay length stay where they were). `warmup_cosine` takes
it itself and, like optax, spreads the cosine over the steps after the warmup. A warmup longer than the
run is cut to total_steps - 1, so that short runs of a config (`steps=3`) still work.
"""

from __future__ import annotations

import functools
import inspect
import math
import typing
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from zoo.config import OptimizerConfig, ScheduleConfig, check_type
from zoo.registry import Registry, ZooError, call_with_checked_kwargs, close_matches

OPTIMIZERS: Registry = Registry("optimizer")
SCHEDULES: Registry = Registry("schedule")
register_optimizer = OPTIMIZERS.register  # `@register_optimizer` or `@register_optimizer(name=...)`
register_schedule = SCHEDULES.register

Mask = Callable[[Any], Any]  # params -> pytree of bools: True where weight decay applies


def list_optimizers(pattern: str = "*") -> list[str]:
  return OPTIMIZERS.list(pattern)


def list_schedules(pattern: str = "*") -> list[str]:
  return SCHEDULES.list(pattern)


# ---------------------------------------------------------------------------------------------------
# Weight-decay masks.


def _decay_all(params: Any) -> Any:
  return jax.tree.map(lambda _: True, params)


def _decay_kernels_only(params: Any) -> Any:
  # Kernels (dense, conv, embeddings) have ndim > 1; biases and norm scales/offsets are 1-D, and
  # decaying them only hurts (a norm scale decayed to 0 switches its channel off).
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


_MASKS: dict[str, Mask] = {"all": _decay_all, "no_bias_no_norm": _decay_kernels_only}


def weight_decay_mask(kind: str) -> Mask:
  """The mask `optimizer.weight_decay_mask` names: 'all' or 'no_bias_no_norm' (kernels only)."""
  if kind not in _MASKS:
    matches = close_matches(kind, list(_MASKS))
    hint = f"did you mean: {', '.join(matches)}?" if matches else f"known: {', '.join(_MASKS)}"
    raise ZooError(f"unknown optimizer.weight_decay_mask {kind!r}; {hint}")
  return _MASKS[kind]


# ---------------------------------------------------------------------------------------------------
# Optimisers: fn(learning_rate: optax.Schedule, weight_decay: float, mask, **kwargs).


def _decoupled(
  direction: optax.GradientTransformation, learning_rate: optax.Schedule, weight_decay: float, mask: Mask
) -> optax.GradientTransformation:
  """direction, then `weight_decay * params` (masked) added, then scaled by -learning_rate(step)."""
  decay = optax.add_decayed_weights(weight_decay, mask) if weight_decay else optax.identity()
  return optax.chain(direction, decay, optax.scale_by_learning_rate(learning_rate))


@register_optimizer
def sgd(learning_rate: optax.Schedule, weight_decay: float, mask: Mask) -> optax.GradientTransformation:
  """Plain SGD; its decoupled weight decay equals an L2 penalty of weight_decay / 2 on the loss."""
  return _decoupled(optax.identity(), learning_rate, weight_decay, mask)


@register_optimizer
def momentum(
  learning_rate: optax.Schedule,
  weight_decay: float,
  mask: Mask,
  momentum: float = 0.9,
  nesterov: bool = False,
) -> optax.GradientTransformation:
  """SGD with heavy-ball momentum (as optax.sgd and PyTorch: no dampening); weight decay is SGDW's."""
  return _decoupled(optax.trace(momentum, nesterov), learning_rate, weight_decay, mask)


@register_optimizer
def nesterov(
  learning_rate: optax.Schedule, weight_decay: float, mask: Mask, momentum: float = 0.9
) -> optax.GradientTransformation:
  """SGD with Nesterov momentum (Sutskever et al. 2013), as optax.sgd(nesterov=True)."""
  return _decoupled(optax.trace(momentum, nesterov=True), learning_rate, weight_decay, mask)


@register_optimizer
def adam(
  learning_rate: optax.Schedule,
  weight_decay: float,
  mask: Mask,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
) -> optax.GradientTransformation:
  """Adam (Kingma & Ba 2015). With optimizer.weight_decay > 0 it is AdamW, identical to `adamw`."""
  return _decoupled(optax.scale_by_adam(b1, b2, eps, eps_root), learning_rate, weight_decay, mask)


@register_optimizer
def adamw(
  learning_rate: optax.Schedule,
  weight_decay: float,
  mask: Mask,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
) -> optax.GradientTransformation:
  """AdamW (Loshchilov & Hutter 2019) = `adam` with optimizer.weight_decay; 0 there means optax's 1e-4."""
  return adam(learning_rate, weight_decay or 1e-4, mask, b1, b2, eps, eps_root)


def create_optimizer(config: OptimizerConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
  """`optax.chain(clip_by_global_norm, <config.name>)`, the rate read from `schedule` at each step."""
  fn = OPTIMIZERS.get(config.name)
  mask = weight_decay_mask(config.weight_decay_mask)
  if config.weight_decay < 0:
    raise ZooError(f"optimizer.weight_decay must be >= 0, got {config.weight_decay}")
  clip = config.grad_clip_norm
  if clip is not None and clip <= 0:
    raise ZooError(f"optimizer.grad_clip_norm must be > 0 (or None for no clipping), got {clip}")
  tx = _call("optimizer", config.name, fn, (schedule, config.weight_decay, mask), config.kwargs)
  return optax.chain(*([optax.clip_by_global_norm(clip)] if clip else []), tx)


# ---------------------------------------------------------------------------------------------------
# Schedules: fn(learning_rate: float, total_steps: int, **kwargs) -> optax.Schedule.


@register_schedule
def constant(learning_rate: float, total_steps: int) -> optax.Schedule:
  return optax.constant_schedule(learning_rate)


@register_schedule
def cosine(learning_rate: float, total_steps: int, alpha: float = 0.0) -> optax.Schedule:
  """Cosine decay (Loshchilov & Hutter 2017, no restarts) to alpha * learning_rate at total_steps."""
  return optax.cosine_decay_schedule(learning_rate, total_steps, alpha)


@register_schedule
def warmup_cosine(
  learning_rate: float, total_steps: int, warmup_steps: int = 0, alpha: float = 0.0
) -> optax.Schedule:
  """Linear from 0 to learning_rate over warmup_steps, then cosine over the rest to alpha * learning_rate."""
  end_value = alpha * learning_rate
  return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps, end_value)


@register_schedule
def step(
  learning_rate: float,
  total_steps: int,
  boundaries_steps: tuple[int, ...] = (),
  factor: float = 0.1,
  every_steps: int | None = None,
) -> optax.Schedule:
  """Multiplied by `factor` at each of boundaries_steps (MultiStepLR), or every `every_steps` (StepLR)."""
  if every_steps is not None:
    if boundaries_steps or every_steps <= 0:
      raise ZooError("schedule 'step': give boundaries_steps or a positive every_steps, not both")
    boundaries_steps = tuple(range(every_steps, total_steps, every_steps))
  if not boundaries_steps:
    raise ZooError("schedule 'step' needs boundaries_steps/_epochs or every_steps/_epochs")
  if boundaries_steps[0] <= 0 or any(
    a >= b for a, b in zip(boundaries_steps, boundaries_steps[1:], strict=False)
  ):
    raise ZooError(f"schedule 'step': boundaries {boundaries_steps} (steps) must be positive and increasing")
  return optax.piecewise_constant_schedule(learning_rate, {b: factor for b in boundaries_steps})


@register_schedule
def exponential(
  learning_rate: float,
  total_steps: int,
  decay_rate: float,
  transition_steps: int = 1,
  staircase: bool = False,
) -> optax.Schedule:
  """Times decay_rate every transition_steps (transition_epochs=1: ExponentialLR); stepwise if staircase."""
  return optax.exponential_decay(learning_rate, transition_steps, decay_rate, staircase=staircase)


@register_schedule
def linear(learning_rate: float, total_steps: int, alpha: float = 0.0) -> optax.Schedule:
  """Linear from learning_rate to alpha * learning_rate at total_steps."""
  return optax.linear_schedule(learning_rate, alpha * learning_rate, total_steps)


def create_schedule(
  config: ScheduleConfig, learning_rate: float, total_steps: int, steps_per_epoch: int
) -> optax.Schedule:
  """The schedule `config.name` for a run of total_steps, its `_epochs` durations converted to steps."""
  fn = SCHEDULES.get(config.name)
  kwargs = _epochs_to_steps(config.kwargs, steps_per_epoch)
  warmup = 0
  if "warmup_steps" in kwargs:
    warmup = check_type(kwargs["warmup_steps"], int, "schedule.kwargs.warmup_steps")
    if warmup < 0:
      raise ZooError(f"schedule warmup_steps must be >= 0, got {warmup}")
    # A run shorter than its warmup (a smoke run, `steps=3`) keeps one step after it rather than failing.
    warmup = kwargs["warmup_steps"] = min(warmup, max(total_steps - 1, 0))
    if "warmup_steps" in inspect.signature(fn).parameters:
      warmup = 0  # The schedule warms up itself.
    else:
      del kwargs["warmup_steps"]
  schedule = _call("schedule", config.name, fn, (learning_rate, total_steps), kwargs)
  if not warmup:
    return schedule
  # The schedule keeps counting from step 0, so the ramp ends at the value it has there.
  ramp = optax.linear_schedule(0.0, float(schedule(warmup)), warmup)
  return optax.join_schedules([ramp, lambda count: schedule(count + warmup)], [warmup])


def _epochs_to_steps(kwargs: dict[str, Any], steps_per_epoch: int) -> dict[str, Any]:
  def to_steps(key: str, epochs: Any) -> Any:
    if isinstance(epochs, (list, tuple)):
      return tuple(to_steps(key, e) for e in epochs)
    if epochs is None:
      return None
    epochs = check_type(epochs, float, f"schedule.kwargs.{key}")
    return math.floor(epochs * steps_per_epoch + 0.5)  # Half up, not Python's round-half-to-even.

  out = {}
  for key, value in kwargs.items():
    if key.endswith("_epochs"):
      steps_key = key.removesuffix("_epochs") + "_steps"
      if steps_key in kwargs:
        raise ZooError(f"schedule.kwargs sets both {key} and {steps_key}; give one")
      key, value = steps_key, to_steps(key, value)
    out[key] = value
  return out


def _call(kind: str, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
  """fn(*args, **kwargs), kwargs' names and types checked against fn's signature (else ZooError)."""
  for key in list(inspect.signature(fn).parameters)[: len(args)]:
    if key in kwargs:
      raise ZooError(f"{kind} {name!r}: {key!r} comes from the config, not from {kind}.kwargs")
  try:
    hints = typing.get_type_hints(fn)
  except NameError:  # Annotations naming what this module cannot see: check names, not types.
    hints = {}
  kwargs = {k: check_type(v, hints[k], f"{kind}.kwargs.{k}") if k in hints else v for k, v in kwargs.items()}
  bound = functools.partial(fn, *args)
  for p in inspect.signature(bound).parameters.values():
    if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in kwargs:
      raise ZooError(f"{kind} {name!r} needs an argument {p.name!r}: set {kind}.kwargs.{p.name}=...")
  return call_with_checked_kwargs(kind, name, bound, kwargs)
