"""Optimisers and learning-rate schedules by name, built only from optax pieces.

An optimiser is `optax.chain(<gradient options>, <named optimiser>)` (clipping by value and by global norm,
per-tensor normalisation; optionally accumulated over micro-batches and skipping non-finite gradients, see
create_optimizer); most named optimisers are `chain(direction, decoupled weight decay under a mask, scale
by -learning_rate(step))`, which for Adam is exactly optax.adamw (Loshchilov & Hutter 2019, "Decoupled
Weight Decay Regularization"). Each equals optax's optimiser of that name at the same weight decay
(adamw and nadamw take optimizer.weight_decay = 0 as optax's 1e-4); lamb and lars put the decay where optax
does (inside the trust ratio), adafactor multiplies it by the rate. Adding one is one registered
function; its keyword arguments are `optimizer.kwargs`, checked against its signature:

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
from zoo.regularizers import max_norm

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


@register_optimizer
def adagrad(
  learning_rate: optax.Schedule,
  weight_decay: float,
  mask: Mask,
  initial_accumulator_value: float = 0.1,
  eps: float = 1e-7,
) -> optax.GradientTransformation:
  """Adagrad (Duchi et al. 2011), as optax.adagrad: g / sqrt(sum of g^2 so far + eps)."""
  return _decoupled(optax.scale_by_rss(initial_accumulator_value, eps), learning_rate, weight_decay, mask)


@register_optimizer
def rmsprop(
  learning_rate: optax.Schedule,
  weight_decay: float,
  mask: Mask,
  decay: float = 0.9,
  eps: float = 1e-8,
  initial_scale: float = 0.0,
  eps_in_sqrt: bool = True,
  centered: bool = False,
  momentum: float | None = None,
  nesterov: bool = False,
  bias_correction: bool = False,
) -> optax.GradientTransformation:
  """RMSProp (Hinton 2012; centered: Graves 2013), as optax.rmsprop; momentum, when set, follows the rate."""
  scale = optax.scale_by_stddev if centered else optax.scale_by_rms
  direction = scale(decay, eps, initial_scale, eps_in_sqrt, bias_correction)
  decay_tx = optax.add_decayed_weights(weight_decay, mask) if weight_decay else optax.identity()
  # optax keeps momentum of the already rate-scaled step (so a schedule change is smoothed), as here.
  trace = optax.trace(momentum, nesterov) if momentum is not None else optax.identity()
  return optax.chain(direction, decay_tx, optax.scale_by_learning_rate(learning_rate), trace)


@register_optimizer
def nadam(
  learning_rate: optax.Schedule,
  weight_decay: float,
  mask: Mask,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
) -> optax.GradientTransformation:
  """NAdam (Dozat 2016), as optax.nadam; with optimizer.weight_decay > 0 it is NAdamW."""
  direction = optax.scale_by_adam(b1, b2, eps, eps_root, nesterov=True)
  return _decoupled(direction, learning_rate, weight_decay, mask)


@register_optimizer
def nadamw(
  learning_rate: optax.Schedule,
  weight_decay: float,
  mask: Mask,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
) -> optax.GradientTransformation:
  """NAdamW = `nadam` with optimizer.weight_decay; 0 there means optax.nadamw's 1e-4 (as `adamw`)."""
  return nadam(learning_rate, weight_decay or 1e-4, mask, b1, b2, eps, eps_root)


@register_optimizer
def lamb(
  learning_rate: optax.Schedule,
  weight_decay: float,
  mask: Mask,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-6,
  eps_root: float = 0.0,
) -> optax.GradientTransformation:
  """LAMB (You et al. 2020), as optax.lamb: the Adam step plus decay, rescaled per tensor by |p| / |step|."""
  decay = optax.add_decayed_weights(weight_decay, mask) if weight_decay else optax.identity()
  # The decay goes inside the trust ratio (the paper's r_t + lambda x_t), so it cannot be _decoupled.
  return optax.chain(
    optax.scale_by_adam(b1, b2, eps, eps_root),
    decay,
    optax.scale_by_trust_ratio(),
    optax.scale_by_learning_rate(learning_rate),
  )


@register_optimizer
def lars(
  learning_rate: optax.Schedule,
  weight_decay: float,
  mask: Mask,
  momentum: float = 0.9,
  nesterov: bool = False,
  trust_coefficient: float = 0.001,
  eps: float = 0.0,
  trust_ratio_mask: str = "all",
) -> optax.GradientTransformation:
  """LARS (You et al. 2017), as optax.lars: g + decay, times trust_coefficient |p| / |g + decay| per tensor.

  trust_ratio_mask names the tensors that get the trust ratio, like optimizer.weight_decay_mask ('all' as
  optax; 'no_bias_no_norm' as in many large-batch recipes, which also leave biases and norms alone).
  """
  decay = optax.add_decayed_weights(weight_decay, mask) if weight_decay else optax.identity()
  trust = optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps)
  return optax.chain(
    decay,
    optax.masked(trust, weight_decay_mask(trust_ratio_mask)),
    optax.scale_by_learning_rate(learning_rate),
    optax.trace(momentum, nesterov),
  )


@register_optimizer
def lion(
  learning_rate: optax.Schedule, weight_decay: float, mask: Mask, b1: float = 0.9, b2: float = 0.99
) -> optax.GradientTransformation:
  """Lion (Chen et al. 2023), as optax.lion; its decay is optimizer.weight_decay (optax's default: 1e-3)."""
  return _decoupled(optax.scale_by_lion(b1, b2), learning_rate, weight_decay, mask)


@register_optimizer
def adafactor(
  learning_rate: optax.Schedule,
  weight_decay: float,
  mask: Mask,
  min_dim_size_to_factor: int = 128,
  decay_rate: float = 0.8,
  decay_offset: int = 0,
  multiply_by_parameter_scale: bool = True,
  clipping_threshold: float | None = 1.0,
  momentum: float | None = None,
  eps: float = 1e-30,
  factored: bool = True,
) -> optax.GradientTransformation:
  """Adafactor (Shazeer & Stern 2018), as optax.adafactor with the rate from the schedule.

  optax adds its weight_decay_rate after the rate; here the decay is multiplied by the rate like every other
  optimiser's (it is optax's with weight_decay_rate = weight_decay * learning_rate(step)).
  """
  tx = [optax.scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps)]
  if clipping_threshold is not None:
    tx.append(optax.clip_by_block_rms(clipping_threshold))
  tx.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
  if multiply_by_parameter_scale:
    tx.append(optax.scale_by_param_block_rms())
  if momentum is not None:
    tx.append(optax.ema(momentum, debias=False))
  if weight_decay:
    tx.append(optax.add_decayed_weights(lambda count: weight_decay * learning_rate(count), mask))
  tx.append(optax.scale(-1.0))
  return optax.chain(*tx)


# Gradients: per-tensor normalisation, and how create_optimizer wraps the named optimiser.


def normalize_per_tensor() -> optax.GradientTransformation:
  """Each gradient tensor divided by its own L2 norm (a zero tensor stays zero), so every step has norm 1."""

  def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
    del params

    def normalize(g: jax.Array) -> jax.Array:
      norm = jnp.sqrt(jnp.sum(jnp.square(g)))
      return g / jnp.where(norm > 0, norm, 1.0).astype(g.dtype)

    return jax.tree.map(normalize, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class LrScaleState(typing.NamedTuple):
  pass


def scale_by_lr_scale() -> optax.GradientTransformationExtraArgs:
  """Multiplies the updates by the `lr_scale` extra argument of `update` (1 when absent): reduce-on-plateau's
  factor on the learning rate, which lives in the train state, not in the schedule."""

  def update(updates: Any, state: LrScaleState, params: Any = None, *, lr_scale: Any = None, **extra):
    del params, extra
    if lr_scale is None:
      return updates, state
    return jax.tree.map(lambda u: u * jnp.asarray(lr_scale, u.dtype), updates), state

  return optax.GradientTransformationExtraArgs(lambda params: LrScaleState(), update)


class LookaheadState(typing.NamedTuple):
  inner: Any
  slow: Any  # the slow weights
  steps_since_sync: jax.Array


def lookahead(
  inner: optax.GradientTransformation, sync_period: int = 5, slow_step_size: float = 0.5
) -> optax.GradientTransformationExtraArgs:
  """Lookahead (Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step back") around `inner`.

  `inner` moves the fast weights (the params); every `sync_period`-th update the slow weights take a step
  of `slow_step_size` towards them, phi <- phi + alpha (theta - phi), and the fast weights restart from the
  slow ones. The update rule is optax.lookahead's; unlike it, the slow weights are kept in this state, so
  the params stay one plain tree (for the model, penalties, checkpoints) and equal the slow weights right
  after each synchronisation. Extra arguments of `update` reach `inner`.
  """
  if not isinstance(sync_period, int) or sync_period < 1:
    raise ZooError(f"optimizer.lookahead_steps must be an integer >= 1, got {sync_period!r}")
  if not 0 < slow_step_size <= 1:
    raise ZooError(f"optimizer.lookahead_alpha must be in (0, 1], got {slow_step_size}")
  inner = optax.with_extra_args_support(inner)

  def init(params: Any) -> LookaheadState:
    return LookaheadState(inner.init(params), params, jnp.zeros((), jnp.int32))

  def update(updates: Any, state: LookaheadState, params: Any = None, **extra_args):
    if params is None:
      raise ValueError("lookahead needs the current params: tx.update(grads, opt_state, params)")
    updates, inner_state = inner.update(updates, state.inner, params, **extra_args)
    sync = state.steps_since_sync == sync_period - 1
    # On a synchronisation step: theta' = theta + u, phi <- phi + alpha (theta' - phi), theta <- phi.
    diff = jax.tree.map(lambda p, u, s: p + u - s, params, updates, state.slow)
    slow = jax.tree.map(lambda s, d: jnp.where(sync, s + slow_step_size * d, s), state.slow, diff)
    updates = jax.tree.map(lambda u, d: jnp.where(sync, u - (1 - slow_step_size) * d, u), updates, diff)
    return updates, LookaheadState(inner_state, slow, (state.steps_since_sync + 1) % sync_period)

  return optax.GradientTransformationExtraArgs(init, update)


# apply_if_finite gives up and applies the update after this many non-finite ones in a row: by then the run
# is lost anyway (and the training loss, checked by the loop, is not finite either).
MAX_CONSECUTIVE_NONFINITE = 1000


def create_optimizer(config: OptimizerConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
  """<config.name> after the gradient options, the rate read from `schedule` at each step.

  The chain is clip_by_value -> clip_by_global_norm -> per-tensor normalisation -> optimiser -> the
  plateau scale (`tx.update(..., lr_scale=s)`) -> max-norm projection, each present only when its option
  is set (the scale always; without `lr_scale` it is the identity). With lookahead_steps = k the chain is
  the fast optimiser of Lookahead. With accumulate_steps = k > 1 it is wrapped in optax.MultiSteps: k calls
  average their gradients, the first k - 1 return zero updates and the k-th applies the chain to the mean
  (so clipping sees the mean gradient, as a k times larger batch would give, and lookahead counts
  updates, not micro-batches). With skip_nonfinite the whole is wrapped in optax.apply_if_finite: a call
  whose gradients hold NaN or inf returns zero updates, leaves the state (and so the accumulated
  micro-batches) alone, and is counted in state.total_notfinite.
  """
  fn = OPTIMIZERS.get(config.name)
  mask = weight_decay_mask(config.weight_decay_mask)
  if config.weight_decay < 0:
    raise ZooError(f"optimizer.weight_decay must be >= 0, got {config.weight_decay}")
  clip = config.grad_clip_norm
  if clip is not None and clip <= 0:
    raise ZooError(f"optimizer.grad_clip_norm must be > 0 (or None for no clipping), got {clip}")
  clip_value = config.grad_clip_value
  if clip_value is not None and clip_value <= 0:
    raise ZooError(f"optimizer.grad_clip_value must be > 0 (or None for no clipping), got {clip_value}")
  accumulate = config.accumulate_steps
  if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
    raise ZooError(f"optimizer.accumulate_steps must be an integer >= 1, got {accumulate!r}")
  tx = _call("optimizer", config.name, fn, (schedule, config.weight_decay, mask), config.kwargs)
  tx = optax.chain(
    *([optax.clip(clip_value)] if clip_value else []),
    *([optax.clip_by_global_norm(clip)] if clip else []),
    *([normalize_per_tensor()] if config.normalize_gradients else []),
    tx,
    scale_by_lr_scale(),
    # Last: it needs the final update to project the updated weights.
    *([max_norm(config.max_norm, pattern=config.max_norm_pattern)] if config.max_norm is not None else []),
  )
  if config.lookahead_steps is not None:
    tx = lookahead(tx, config.lookahead_steps, config.lookahead_alpha)
  if accumulate > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accumulate).gradient_transformation()
  if config.skip_nonfinite:
    tx = optax.apply_if_finite(tx, max_consecutive_errors=MAX_CONSECUTIVE_NONFINITE)
  return tx


def update_count(config: OptimizerConfig, opt_state: Any) -> jax.Array | None:
  """How many updates the optimiser has applied (micro-batches of accumulate_steps count once), read from
  its state; None when it equals the train step."""
  if config.accumulate_steps == 1:
    return None
  state = opt_state.inner_state if config.skip_nonfinite else opt_state
  return state.gradient_step


def skipped_updates(config: OptimizerConfig, opt_state: Any) -> jax.Array | None:
  """With skip_nonfinite: how many updates were skipped for non-finite gradients so far."""
  return opt_state.total_notfinite if config.skip_nonfinite else None


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


@register_schedule
def sgdr(
  learning_rate: float, total_steps: int, period_steps: int, period_mult: int = 1, alpha: float = 0.0
) -> optax.Schedule:
  """Cosine with warm restarts (SGDR, Loshchilov & Hutter 2017; PyTorch's CosineAnnealingWarmRestarts).

  Cosine from learning_rate to alpha * learning_rate over period_steps (T_0), then back to learning_rate
  and again over period_mult times as long (T_mult, an integer as in the paper and PyTorch), and so on.
  Written with jnp rather than optax.sgdr_schedule, which evaluates one cosine per period at every step.
  """
  if period_steps <= 0 or period_mult < 1:
    raise ZooError(
      f"schedule 'sgdr': needs period_steps > 0 and period_mult >= 1, got {period_steps}, {period_mult}"
    )
  floor = alpha * learning_rate
  if period_mult == 1:
    starts = lengths = None
  else:  # Few periods (lengths grow geometrically): their starts, past the end of the run.
    starts_list, lengths_list = [0], [period_steps]
    while starts_list[-1] <= total_steps:
      starts_list.append(starts_list[-1] + lengths_list[-1])
      lengths_list.append(lengths_list[-1] * period_mult)
    starts, lengths = jnp.array(starts_list), jnp.array(lengths_list, jnp.float32)

  def schedule(count: Any) -> jax.Array:
    count = jnp.asarray(count)
    if starts is None:
      t_cur, t_i = count % period_steps, period_steps
    else:
      i = jnp.sum(count >= starts[1:])
      t_cur, t_i = count - starts[i], lengths[i]
    frac = jnp.minimum(t_cur / t_i, 1.0)
    return floor + (learning_rate - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

  return schedule


@register_schedule
def one_cycle(
  learning_rate: float,
  total_steps: int,
  form: str = "cosine",
  pct_start: float = 0.3,
  div_factor: float = 25.0,
  final_div_factor: float = 1e4,
) -> optax.Schedule:
  """One-cycle (Smith & Topin 2019): up from learning_rate / div_factor to learning_rate, then down.

  The peak is at step int(pct_start * total_steps) and the end, at total_steps, is
  learning_rate / (div_factor * final_div_factor) (the start divided by final_div_factor, as in PyTorch's
  OneCycleLR). form='cosine' is optax.cosine_onecycle_schedule (cosine annealing in both phases, PyTorch's
  default; PyTorch puts the peak and end one step earlier); form='linear' is Smith's triangular cycle,
  linear in both phases (PyTorch's anneal_strategy='linear').
  """
  if form not in ("cosine", "linear"):
    raise ZooError(f"schedule 'one_cycle': form must be 'cosine' or 'linear', got {form!r}")
  if not 0.0 < pct_start < 1.0 or div_factor <= 0 or final_div_factor <= 0:
    raise ZooError(
      "schedule 'one_cycle': needs 0 < pct_start < 1 and positive div_factor, final_div_factor; got "
      f"{pct_start}, {div_factor}, {final_div_factor}"
    )
  total_steps = max(total_steps, 2)
  # At least one step up and one down, so that the shortest runs still have a cycle.
  peak = min(max(int(pct_start * total_steps), 1), total_steps - 1)
  scales = {peak: div_factor, total_steps: 1.0 / (div_factor * final_div_factor)}
  return optax.piecewise_interpolate_schedule(form, learning_rate / div_factor, scales)


@register_schedule
def polynomial(
  learning_rate: float,
  total_steps: int,
  power: float = 1.0,
  alpha: float = 0.0,
  transition_begin_steps: int = 0,
) -> optax.Schedule:
  """learning_rate until transition_begin_steps, then polynomial decay of `power` to alpha * learning_rate
  at total_steps (optax.polynomial_schedule; PyTorch's PolynomialLR has alpha = 0 and power = 1)."""
  if not 0 <= transition_begin_steps < max(total_steps, 1):
    raise ZooError(
      f"schedule 'polynomial': transition_begin_steps must be in [0, {total_steps}), "
      f"got {transition_begin_steps}"
    )
  return optax.polynomial_schedule(
    learning_rate, alpha * learning_rate, power, total_steps - transition_begin_steps, transition_begin_steps
  )


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
    steps = epochs * steps_per_epoch + 0.5  # Half up, not Python's round-half-to-even.
    if not math.isfinite(steps) or abs(steps) >= 2**62:
      raise ZooError(f"schedule.kwargs.{key}={epochs} is too many epochs ({steps_per_epoch} steps each)")
    return math.floor(steps)

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
