"""Weight penalties (L1, L2, elastic net) and max-norm constraints (Srivastava et al. 2014) on chosen params.

Parameters are chosen by their '/'-joined path in the params tree ('Dense_0/kernel', 'Conv_1/kernel',
'block1/Dense_0/bias') against comma-separated shell patterns: '*kernel' (the default: every dense, conv
and embedding kernel, never a bias or a norm scale) or 'Dense_*/kernel,Conv_*/kernel'.

Intended wiring (the trainer does this; nothing here knows about steps or configs):

  # a penalty is part of the loss, so it is differentiated with it and its gradient reaches every optimiser:
  loss = task_loss + penalty(params, l1=1e-5, l2=1e-4, pattern="*kernel")
  # a constraint is applied to the weights after each step, so it is the LAST transformation of the chain:
  tx = optax.chain(create_optimizer(...), max_norm(3.0, pattern="*kernel"))
  updates, opt_state = tx.update(grads, opt_state, params)  # params are required by max_norm

An L2 penalty in the loss equals decoupled weight decay (optimizer.weight_decay) only for plain SGD; for
Adam-like optimisers the penalty's gradient is rescaled per coordinate, which is why AdamW decouples it
(Loshchilov & Hutter 2019). Both are offered; they are different regularisers.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from zoo.registry import ZooError

Params = Any
Mask = Callable[[Params], Any]


def _patterns(pattern: str) -> list[str]:
  patterns = [p.strip() for p in pattern.split(",") if p.strip()]
  if not patterns:
    raise ZooError(f"empty parameter pattern {pattern!r}; give shell patterns such as '*kernel'")
  return patterns


def param_path(key_path: Any) -> str:
  """The '/'-joined path of a leaf, as `jax.tree_util.tree_map_with_path` gives it: 'Dense_0/kernel'."""
  return jax.tree_util.keystr(key_path, simple=True, separator="/")


def param_mask(pattern: str) -> Mask:
  """A function params -> pytree of bools: True where the leaf's path matches one of the patterns.

  Args:
    pattern: comma-separated shell (fnmatch, case-sensitive) patterns, e.g. '*kernel' or
      'Dense_*/kernel,Conv_*/kernel'. The pattern must match the whole path ('kernel' alone matches
      only a top-level leaf named kernel; '*kernel' matches every kernel).

  The result has the structure of params, so it can be given to `optax.masked` or
  `optax.add_decayed_weights(mask=...)` as well as used here.
  """
  patterns = _patterns(pattern)

  def mask(params: Params) -> Any:
    return jax.tree_util.tree_map_with_path(
      lambda path, _: any(fnmatch.fnmatchcase(param_path(path), p) for p in patterns), params
    )

  return mask


def _selected(params: Params, pattern: str, what: str) -> list[jax.Array]:
  """The leaves of params matched by pattern; a pattern that matches nothing is a user error (a typo)."""
  leaves = jax.tree.leaves(param_mask(pattern)(params))
  chosen = [p for p, m in zip(jax.tree.leaves(params), leaves, strict=True) if m]
  if not chosen:
    paths = [param_path(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)]
    shown = ", ".join(paths[:8]) + (", ..." if len(paths) > 8 else "")
    raise ZooError(f"{what} pattern {pattern!r} matches no parameter; the parameters are: {shown}")
  return chosen


def penalty(params: Params, l1: float = 0.0, l2: float = 0.0, pattern: str = "*kernel") -> jax.Array:
  """l1 * sum |w| + (l2 / 2) * sum w^2 over the parameters matched by `pattern`: a scalar to add to the loss.

  Args:
    params: the params tree (the 'params' collection).
    l1: the lasso coefficient (Tibshirani 1996); its gradient is l1 * sign(w).
    l2: the ridge coefficient with the 1/2 convention, so that its gradient is l2 * w: classic weight
      decay, the same coefficient as SGD's weight_decay (Keras' l2(c) is c * sum w^2, i.e. l2 = 2c here).
    pattern: which parameters (see param_mask); the default '*kernel' leaves biases and norms alone.

  Both nonzero is the elastic net (Zou & Hastie 2005). Sums are taken in float32 whatever the params' dtype.
  """
  if l1 < 0 or l2 < 0:
    raise ZooError(f"penalty coefficients must be >= 0, got l1={l1}, l2={l2}")
  total = jnp.zeros((), jnp.float32)
  if not (l1 or l2):
    return total
  for w in _selected(params, pattern, "penalty"):
    w = jnp.asarray(w, jnp.float32)
    if l1:
      total += l1 * jnp.sum(jnp.abs(w))
    if l2:
      total += 0.5 * l2 * jnp.sum(jnp.square(w))
  return total


class MaxNormState(NamedTuple):
  """max_norm keeps no state."""


def _fan_in_axes(ndim: int, axis: int | tuple[int, ...] | None) -> tuple[int, ...]:
  if axis is None:
    # The incoming weights of one output unit: all axes but the last (Dense (in, out) -> (0,);
    # Conv (h, w, in, out) -> (0, 1, 2)). A 1-D leaf is one vector.
    return tuple(range(ndim - 1)) if ndim > 1 else tuple(range(ndim))
  return (axis,) if isinstance(axis, int) else tuple(axis)


def max_norm(
  max_value: float = 3.0, pattern: str = "*kernel", axis: int | tuple[int, ...] | None = None
) -> optax.GradientTransformation:
  """A transformation that keeps each unit's incoming-weight vector within L2 norm `max_value`.

  Put it LAST in the chain: it rewrites the final update so that `optax.apply_updates(params, updates)`
  gives the new weights with every too-long vector rescaled onto the ball of radius max_value (a
  projection, as in Srivastava et al. 2014 section 5.1 and Keras' MaxNorm(3)); vectors already within the
  ball get exactly the update they had. Leaves not matched by `pattern` are untouched.

  Args:
    max_value: the radius c; Srivastava et al. found 3-4 good with dropout.
    pattern: which parameters (see param_mask).
    axis: the axes the norm is taken over. None (the default) means all axes but the last, the fan-in of
      one output unit: axis 0 of a Dense kernel (in, out), axes (0, 1, 2) of a Conv kernel
      (h, w, in, out). An int or tuple is used as given (Keras' `axis`).

  The update needs `params`: `tx.update(grads, state, params)`.
  """
  if max_value <= 0:
    raise ZooError(f"max_norm max_value must be > 0, got {max_value}")
  mask_fn = param_mask(pattern)

  def init(params: Params) -> MaxNormState:
    del params
    return MaxNormState()

  def update(updates: Any, state: MaxNormState, params: Params | None = None) -> tuple[Any, MaxNormState]:
    if params is None:
      raise ValueError(
        "max_norm needs the current params: call tx.update(grads, opt_state, params), and put max_norm "
        "last in the optax.chain so that the update it sees is the final one"
      )
    _selected(params, pattern, "max_norm")

    def constrain(u: jax.Array, p: jax.Array, selected: bool) -> jax.Array:
      if not selected:
        return u
      new = p + u
      norms = jnp.sqrt(
        jnp.sum(jnp.square(new.astype(jnp.float32)), _fan_in_axes(new.ndim, axis), keepdims=True)
      )
      too_long = norms > max_value
      # The guard keeps the division finite where the norm is 0 (not selected by too_long anyway).
      scale = max_value / jnp.where(too_long, norms, 1.0)
      # Where nothing is rescaled, the original update passes unchanged (p + (new - p) would round).
      return jnp.where(too_long, (new * scale).astype(p.dtype) - p, u)

    return jax.tree.map(constrain, updates, params, mask_fn(params)), state

  return optax.GradientTransformation(init, update)
