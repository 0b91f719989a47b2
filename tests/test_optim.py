"""zoo.optim: every optimiser trains and matches optax; masks, clipping, schedule values, errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo.config import OptimizerConfig, ScheduleConfig
from zoo.optim import (
  OPTIMIZERS,
  create_optimizer,
  create_schedule,
  list_optimizers,
  list_schedules,
  weight_decay_mask,
)
from zoo.registry import ZooError


def _params():
  kernel = jax.random.normal(jax.random.key(0), (4, 3))
  return {"dense": {"kernel": kernel, "bias": jnp.ones((3,))}, "norm": {"scale": jnp.full((3,), 2.0)}}


def _run(tx, params, steps=5):
  """The updates `tx` makes from random gradients over `steps` steps, the parameters moving each step."""
  state = tx.init(params)
  updates_seen = []
  for i in range(steps):
    grads = jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.key(i + 1), p.shape), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    updates_seen.append(updates)
  return updates_seen


def _assert_same_updates(tx, reference, params=None):
  params = _params() if params is None else params
  for got, want in zip(_run(tx, params), _run(reference, params), strict=True):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, want)


# ---------------------------------------------------------------------------------------------------
# Optimisers.


def test_registries_list_the_basics():
  assert {"sgd", "momentum", "nesterov", "adam", "adamw"} <= set(list_optimizers())
  assert {"constant", "cosine", "warmup_cosine", "step", "exponential", "linear"} <= set(list_schedules())
  assert list_optimizers("adam*") == ["adam", "adamw"]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_decreases_a_regression_loss(name):
  x = jax.random.normal(jax.random.key(0), (64, 4))
  y = x @ jnp.array([[1.0], [-2.0], [0.5], [3.0]]) + 0.7
  params = {"kernel": jnp.zeros((4, 1)), "bias": jnp.zeros((1,))}
  loss_fn = lambda p: jnp.mean((x @ p["kernel"] + p["bias"][None, :] - y) ** 2)
  # Adagrad's steps shrink as 1/sqrt(t); LAMB's and Adafactor's scale with the (here zero) parameters' size.
  learning_rate = {"adagrad": 0.5, "lamb": 0.5, "adafactor": 0.5}.get(name, 0.05)
  config = OptimizerConfig(name=name, learning_rate=learning_rate, weight_decay=1e-4, grad_clip_norm=10.0)
  tx = create_optimizer(config, optax.constant_schedule(config.learning_rate))

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  state = tx.init(params)
  first = None
  for _ in range(50):
    params, state, loss = step(params, state)
    first = loss if first is None else first
  assert float(loss_fn(params)) < 0.1 * float(first)


def test_adam_with_weight_decay_is_optax_adamw():
  schedule = optax.cosine_decay_schedule(0.1, 10)
  config = OptimizerConfig(name="adam", weight_decay=0.05, weight_decay_mask="no_bias_no_norm")
  reference = optax.adamw(schedule, weight_decay=0.05, mask=weight_decay_mask("no_bias_no_norm"))
  _assert_same_updates(create_optimizer(config, schedule), reference)
  config.name = "adamw"
  _assert_same_updates(create_optimizer(config, schedule), reference)


def test_adam_without_weight_decay_is_optax_adam_and_adamw_defaults_to_1e_4():
  schedule = optax.constant_schedule(0.01)
  _assert_same_updates(create_optimizer(OptimizerConfig(name="adam"), schedule), optax.adam(schedule))
  config = OptimizerConfig(name="adamw", weight_decay=0.0, weight_decay_mask="all", kwargs={"b2": 0.99})
  _assert_same_updates(create_optimizer(config, schedule), optax.adamw(schedule, b2=0.99))


@pytest.mark.parametrize(
  "name, kwargs, reference",
  [
    ("sgd", {}, dict()),
    ("momentum", {}, dict(momentum=0.9)),
    ("momentum", {"momentum": 0.5}, dict(momentum=0.5)),
    ("nesterov", {}, dict(momentum=0.9, nesterov=True)),
  ],
)
def test_sgd_family_is_optax_sgd(name, kwargs, reference):
  schedule = optax.linear_schedule(0.1, 0.01, 5)
  tx = create_optimizer(OptimizerConfig(name=name, kwargs=kwargs), schedule)
  _assert_same_updates(tx, optax.sgd(schedule, **reference))


def test_mask_spares_biases_and_norm_scales():
  params = _params()
  assert weight_decay_mask("no_bias_no_norm")(params) == {
    "dense": {"kernel": True, "bias": False},
    "norm": {"scale": False},
  }
  assert all(jax.tree.leaves(weight_decay_mask("all")(params)))


@pytest.mark.parametrize("mask, decays_bias", [("no_bias_no_norm", False), ("all", True)])
def test_decoupled_decay_shrinks_only_masked_params(mask, decays_bias):
  params = _params()
  config = OptimizerConfig(name="sgd", weight_decay=0.5, weight_decay_mask=mask)
  tx = create_optimizer(config, optax.constant_schedule(0.1))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  # With zero gradients the update is -learning_rate * weight_decay * param where decayed, else 0.
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.05 * params["dense"]["kernel"], rtol=1e-6)
  for got, p in (
    (updates["dense"]["bias"], params["dense"]["bias"]),
    (updates["norm"]["scale"], params["norm"]["scale"]),
  ):
    np.testing.assert_allclose(got, -0.05 * p if decays_bias else 0.0, rtol=1e-6)


def test_clipping_bounds_the_global_norm():
  params = _params()
  big = jax.tree.map(lambda p: 100.0 * p, params)
  small = jax.tree.map(lambda p: 1e-3 * p, params)
  schedule = optax.constant_schedule(1.0)
  clipped = create_optimizer(OptimizerConfig(name="sgd", grad_clip_norm=1.0), schedule)
  unclipped = create_optimizer(OptimizerConfig(name="sgd"), schedule)
  norm = lambda tx, g: float(optax.tree.norm(tx.update(g, tx.init(params), params)[0]))
  assert norm(clipped, big) == pytest.approx(1.0, rel=1e-5)
  assert norm(unclipped, big) > 100.0
  assert norm(clipped, small) == pytest.approx(float(optax.tree.norm(small)), rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# Schedules.


def _values(name, kwargs, steps, total_steps=100, steps_per_epoch=10, learning_rate=1.0):
  schedule = create_schedule(
    ScheduleConfig(name=name, kwargs=kwargs), learning_rate, total_steps, steps_per_epoch
  )
  return [float(schedule(s)) for s in steps]


def _close(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_constant_and_linear():
  _close(_values("constant", {}, [0, 50, 1000], learning_rate=0.3), [0.3, 0.3, 0.3])
  _close(_values("linear", {"alpha": 0.1}, [0, 50, 100]), [1.0, 0.55, 0.1])


def test_cosine_start_middle_end():
  _close(_values("cosine", {}, [0, 50, 100], learning_rate=2.0), [2.0, 1.0, 0.0])
  _close(_values("cosine", {"alpha": 0.1}, [0, 50, 100]), [1.0, 0.55, 0.1])


def test_warmup_cosine_ramps_then_decays_over_the_rest():
  values = _values("warmup_cosine", {"warmup_epochs": 1}, [0, 5, 10, 60, 110], total_steps=110)
  _close(values, [0.0, 0.5, 1.0, 0.5, 0.0])


def test_step_multiplies_at_each_boundary():
  values = _values("step", {"boundaries_epochs": (2, 4)}, [0, 19, 20, 39, 40, 99])
  _close(values, [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
  values = _values("step", {"every_steps": 30, "factor": 0.5}, [29, 30, 59, 60, 90])
  _close(values, [1.0, 0.5, 0.5, 0.25, 0.125])


def test_exponential_decays_once_per_epoch_with_transition_epochs():
  kwargs = {"decay_rate": 0.5, "transition_epochs": 1}
  _close(_values("exponential", kwargs, [0, 5, 10, 20]), [1.0, math.sqrt(0.5), 0.5, 0.25])
  _close(_values("exponential", {**kwargs, "staircase": True}, [5, 10, 15, 20]), [1.0, 0.5, 0.5, 0.25])
  _close(_values("exponential", {"decay_rate": 0.9}, [0, 1, 2]), [1.0, 0.9, 0.81])


def test_epochs_convert_to_steps_rounding_half_up_and_elementwise():
  # 1.5 epochs of 5 steps is 7.5 -> 8, and 3 epochs -> 15: the rate drops at steps 8 and 15.
  values = _values("step", {"boundaries_epochs": [1.5, 3]}, [7, 8, 14, 15], steps_per_epoch=5)
  _close(values, [1.0, 0.1, 0.1, 0.01])
  # 0.5 epochs of 5 steps is 2.5 -> 3 warmup steps (Python's round would give 2).
  _close(_values("constant", {"warmup_epochs": 0.5}, [0, 2, 3], steps_per_epoch=5), [0.0, 2 / 3, 1.0])


def test_generic_warmup_keeps_the_schedule_on_absolute_steps():
  cosine = lambda s: 0.5 * (1 + math.cos(math.pi * s / 100))
  values = _values("cosine", {"warmup_steps": 10}, [0, 5, 10, 50, 100])
  _close(values, [0.0, 0.5 * cosine(10), cosine(10), 0.5, 0.0])
  values = _values("step", {"warmup_steps": 10, "boundaries_steps": (20,)}, [0, 5, 10, 19, 20])
  _close(values, [0.0, 0.5, 1.0, 1.0, 0.1])


def test_warmup_longer_than_the_run_is_cut_to_leave_one_step():
  _close(_values("warmup_cosine", {"warmup_steps": 500}, [0, 33, 99, 100]), [0.0, 1 / 3, 1.0, 0.0])
  _close(_values("constant", {"warmup_epochs": 50}, [0, 33, 99]), [0.0, 1 / 3, 1.0])


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"warmup_steps": -1}, "must be >= 0"),
    ({"warmup_steps": 5, "warmup_epochs": 1}, "both warmup_epochs and warmup_steps"),
    ({"warmup_epochs": "one"}, "schedule.kwargs.warmup_epochs"),
  ],
)
def test_bad_warmup_is_a_zoo_error(kwargs, match):
  with pytest.raises(ZooError, match=match):
    _values("cosine", kwargs, [0])


# ---------------------------------------------------------------------------------------------------
# Errors.


def test_unknown_names_suggest_close_matches():
  with pytest.raises(ZooError, match="unknown optimizer 'adamm'; did you mean: adam"):
    create_optimizer(OptimizerConfig(name="adamm"), optax.constant_schedule(1.0))
  with pytest.raises(ZooError, match="unknown schedule 'cosin'; did you mean: cosine"):
    _values("cosin", {}, [0])
  with pytest.raises(
    ZooError, match="unknown optimizer.weight_decay_mask 'no_bias'; did you mean: no_bias_no_norm"
  ):
    create_optimizer(OptimizerConfig(weight_decay_mask="no_bias"), optax.constant_schedule(1.0))


@pytest.mark.parametrize(
  "config, match",
  [
    (OptimizerConfig(name="momentum", kwargs={"momentun": 0.9}), "'momentun'; did you mean: momentum"),
    (OptimizerConfig(name="adam", kwargs={"zzz": 1}), "'zzz'; accepted: b1, b2, eps, eps_root"),
    (OptimizerConfig(name="adam", kwargs={"b1": "high"}), "optimizer.kwargs.b1"),
    (OptimizerConfig(name="adam", kwargs={"learning_rate": 0.1}), "'learning_rate' comes from the config"),
    (OptimizerConfig(weight_decay=-1.0), "weight_decay must be >= 0"),
    (OptimizerConfig(grad_clip_norm=0.0), "grad_clip_norm must be > 0"),
  ],
)
def test_bad_optimizer_kwargs_are_zoo_errors(config, match):
  with pytest.raises(ZooError, match=match):
    create_optimizer(config, optax.constant_schedule(1.0))


@pytest.mark.parametrize(
  "name, kwargs, match",
  [
    ("cosine", {"alpah": 0.1}, "'alpah'; did you mean: alpha"),
    ("exponential", {}, "needs an argument 'decay_rate'"),
    ("step", {}, "needs boundaries_steps"),
    ("step", {"boundaries_steps": (20, 10)}, "positive and increasing"),
    ("step", {"boundaries_steps": (10,), "every_steps": 5}, "not both"),
  ],
)
def test_bad_schedule_kwargs_are_zoo_errors(name, kwargs, match):
  with pytest.raises(ZooError, match=match):
    _values(name, kwargs, [0])
