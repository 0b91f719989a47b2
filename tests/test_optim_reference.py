"""zoo.optim against independent NumPy versions of each update rule and schedule (papers' and optax's)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo import optim
from zoo.config import OptimizerConfig, ScheduleConfig
from zoo.optim import OPTIMIZERS, create_optimizer, create_schedule
from zoo.registry import ZooError

STEPS = 5
WD = 0.05


def _lr(t):
  """The rate at step t (0-based) in every optimiser test: it changes each step, so misplacing it shows."""
  return 0.1 / (1.0 + 0.5 * t)


def _params():
  rng = np.random.default_rng(0)
  return {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=(3,)), "scale": 1.0 + rng.random(2)}


def _grads():
  rng = np.random.default_rng(1)
  return [{k: rng.normal(size=v.shape) for k, v in _params().items()} for _ in range(STEPS)]


# The mask 'no_bias_no_norm' decays tensors with ndim > 1: the kernel only.
DECAYED = {"kernel": 1.0, "bias": 0.0, "scale": 0.0}


def _zoo_params_after(name, kwargs, weight_decay, mask="no_bias_no_norm"):
  schedule = lambda count: 0.1 / (1.0 + 0.5 * count)
  config = OptimizerConfig(name=name, weight_decay=weight_decay, weight_decay_mask=mask, kwargs=kwargs)
  tx = create_optimizer(config, schedule)
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), _params())
  state = tx.init(params)
  for g in _grads():
    updates, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state, params)
    params = optax.apply_updates(params, updates)
  return params


def _numpy_params_after(rule):
  """Runs `rule(t, key, g, p, state) -> update` (state: a dict per key it may fill) over the gradients."""
  params = _params()
  states = {k: {} for k in params}
  for t, grads in enumerate(_grads()):
    params = {k: params[k] + rule(t, k, grads[k], params[k], states[k]) for k in params}
  return params


def _norm(x):
  return float(np.sqrt(np.sum(x * x)))


# ---------------------------------------------------------------------------------------------------
# NumPy update rules, each returning the parameter update at step t (0-based) for one tensor.


def _sgd(t, k, g, p, s):
  return -_lr(t) * (g + WD * DECAYED[k] * p)


def _momentum(mu, nesterov):
  def rule(t, k, g, p, s):
    s["trace"] = g + mu * s.get("trace", 0.0)  # Heavy ball, no dampening (optax.trace / PyTorch).
    d = g + mu * s["trace"] if nesterov else s["trace"]
    return -_lr(t) * (d + WD * DECAYED[k] * p)

  return rule


def _adam_direction(s, g, t, b1=0.9, b2=0.999, eps=1e-8, nesterov=False):
  s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
  s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
  n = t + 1
  if nesterov:  # Dozat 2016 as optax: the next step's momentum, bias-corrected, with this gradient.
    m_hat = b1 * s["m"] / (1 - b1 ** (n + 1)) + (1 - b1) * g / (1 - b1**n)
  else:
    m_hat = s["m"] / (1 - b1**n)
  v_hat = s["v"] / (1 - b2**n)
  return m_hat / (np.sqrt(v_hat) + eps)


def _adam(weight_decay, nesterov=False, b2=0.999):
  def rule(t, k, g, p, s):
    d = _adam_direction(s, g, t, b2=b2, nesterov=nesterov)
    return -_lr(t) * (d + weight_decay * DECAYED[k] * p)

  return rule


def _adagrad(t, k, g, p, s, init=0.1, eps=1e-7):
  s["sum"] = s.get("sum", init) + g * g
  return -_lr(t) * (g / np.sqrt(s["sum"] + eps) + WD * DECAYED[k] * p)


def _rmsprop(centered=False, momentum=None, nesterov=False, decay=0.9, eps=1e-8):
  def rule(t, k, g, p, s):
    s["nu"] = decay * s.get("nu", 0.0) + (1 - decay) * g * g
    s["mu"] = decay * s.get("mu", 0.0) + (1 - decay) * g
    var = s["nu"] - s["mu"] ** 2 if centered else s["nu"]
    step = -_lr(t) * (g / np.sqrt(var + eps) + WD * DECAYED[k] * p)
    if momentum is None:
      return step
    s["trace"] = step + momentum * s.get("trace", 0.0)  # optax keeps momentum of the rate-scaled step.
    return step + momentum * s["trace"] if nesterov else s["trace"]

  return rule


def _trust(p, d, coefficient=1.0, eps=0.0):
  pn, dn = _norm(p), _norm(d)
  return 1.0 if pn == 0 or dn == 0 else coefficient * pn / (dn + eps)


def _lamb(t, k, g, p, s):
  r = _adam_direction(s, g, t, eps=1e-6) + WD * DECAYED[k] * p  # You et al. 2020: r_t + lambda x_t
  return -_lr(t) * _trust(p, r) * r


def _lars(trust_keys, nesterov=False, momentum=0.9):
  def rule(t, k, g, p, s):
    d = g + WD * DECAYED[k] * p
    if k in trust_keys:
      d = _trust(p, d, coefficient=0.001) * d
    step = -_lr(t) * d
    s["trace"] = step + momentum * s.get("trace", 0.0)
    return step + momentum * s["trace"] if nesterov else s["trace"]

  return rule


def _lion(t, k, g, p, s, b1=0.9, b2=0.99):
  m = s.get("m", 0.0)
  d = np.sign(b1 * m + (1 - b1) * g)  # Chen et al. 2023: sign of the interpolation, then the EMA update.
  s["m"] = b2 * m + (1 - b2) * g
  return -_lr(t) * (d + WD * DECAYED[k] * p)


def _adafactor(factor_min_dim, momentum=None, eps=1e-30, decay_rate=0.8, clip=1.0):
  """Shazeer & Stern 2018, as optax: factored second moments for 2-d tensors whose two dims are big enough."""

  def rule(t, k, g, p, s):
    beta2 = 1.0 - (t + 1.0) ** (-decay_rate)
    g2 = g * g + eps
    if g.ndim == 2 and min(g.shape) >= factor_min_dim:
      # The larger dim is the "column"; rows are averaged over it and vice versa.
      big, small = (1, 0) if g.shape[1] >= g.shape[0] else (0, 1)
      s["r"] = beta2 * s.get("r", 0.0) + (1 - beta2) * g2.mean(axis=big)
      s["c"] = beta2 * s.get("c", 0.0) + (1 - beta2) * g2.mean(axis=small)
      v = np.expand_dims(s["r"] / s["r"].mean(), big) * np.expand_dims(s["c"], small)
    else:
      s["v"] = beta2 * s.get("v", 0.0) + (1 - beta2) * g2
      v = s["v"]
    u = g / np.sqrt(v)
    u = u / max(1.0, math.sqrt(np.mean(u * u)) / clip)
    u = _lr(t) * u * max(math.sqrt(np.mean(p * p)), 1e-3)  # Relative step: times the parameters' RMS.
    if momentum is not None:
      s["ema"] = momentum * s.get("ema", 0.0) + (1 - momentum) * u
      u = s["ema"]
    return -(u + _lr(t) * WD * DECAYED[k] * p)

  return rule


CASES = [
  ("sgd", {}, _sgd),
  ("momentum", {}, _momentum(0.9, False)),
  ("momentum", {"momentum": 0.5, "nesterov": True}, _momentum(0.5, True)),
  ("nesterov", {}, _momentum(0.9, True)),
  ("adam", {}, _adam(WD)),
  ("adamw", {"b2": 0.99}, _adam(WD, b2=0.99)),
  ("adagrad", {}, _adagrad),
  ("rmsprop", {}, _rmsprop()),
  ("rmsprop", {"centered": True}, _rmsprop(centered=True)),
  ("rmsprop", {"momentum": 0.9}, _rmsprop(momentum=0.9)),
  ("rmsprop", {"centered": True, "momentum": 0.8, "nesterov": True}, _rmsprop(True, 0.8, True)),
  ("nadam", {}, _adam(WD, nesterov=True)),
  ("nadamw", {}, _adam(WD, nesterov=True)),
  ("lamb", {}, _lamb),
  ("lars", {}, _lars({"kernel", "bias", "scale"})),
  ("lars", {"trust_ratio_mask": "no_bias_no_norm", "nesterov": True}, _lars({"kernel"}, nesterov=True)),
  ("lion", {}, _lion),
  ("adafactor", {}, _adafactor(factor_min_dim=128)),
  ("adafactor", {"min_dim_size_to_factor": 3, "momentum": 0.9}, _adafactor(factor_min_dim=3, momentum=0.9)),
]


@pytest.mark.parametrize("name, kwargs, rule", CASES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)])
def test_optimizer_matches_numpy_reference(name, kwargs, rule):
  got = _zoo_params_after(name, kwargs, WD)
  want = _numpy_params_after(rule)
  for key in want:
    # atol for float32 (optax) against float64: 1 - b2 for b2 = 0.999 alone is off by 6e-5 in float32.
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=f"{name} {kwargs} {key}")
  # The parameters moved: a rule that did nothing would not pass by matching an optimiser that did nothing.
  assert all(np.abs(want[k] - _params()[k]).max() > 1e-4 for k in want)


def test_every_registered_optimizer_has_a_reference():
  assert {name for name, _, _ in CASES} == set(OPTIMIZERS)


@pytest.mark.parametrize("name", ["adamw", "nadamw"])
def test_w_variants_default_to_optax_weight_decay(name):
  plain = _zoo_params_after(name.removesuffix("w"), {}, 1e-4, mask="all")
  got = _zoo_params_after(name, {}, 0.0, mask="all")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, plain)


def test_lars_and_lamb_decay_respects_the_mask():
  # With the kernel alone decayed, a huge decay changes only the kernel's trajectory.
  for name in ("lars", "lamb"):
    a, b = _zoo_params_after(name, {}, 0.0), _zoo_params_after(name, {}, 10.0)
    np.testing.assert_allclose(a["bias"], b["bias"], rtol=1e-6)
    assert np.abs(np.asarray(a["kernel"] - b["kernel"])).max() > 1e-3


def test_every_optimizer_jits_once():
  params = {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros((3,))}
  configs = [OptimizerConfig(name=name, weight_decay=1e-3) for name in OPTIMIZERS]
  configs.append(
    OptimizerConfig(
      name="adam", grad_clip_value=1.0, grad_clip_norm=1.0, normalize_gradients=True, accumulate_steps=2
    )
  )
  configs.append(OptimizerConfig(name="lars", accumulate_steps=3, skip_nonfinite=True))
  configs.append(OptimizerConfig(name="nadam", lookahead_steps=5, max_norm=3.0))
  for config in configs:
    tx = create_optimizer(config, optax.cosine_decay_schedule(0.1, 10))
    traces = []

    @jax.jit
    def step(params, state, scale, tx=tx, traces=traces):
      traces.append(1)  # Runs only while tracing.
      grads = jax.tree.map(lambda p: scale * (p + 1.0), params)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    current, state = params, tx.init(params)
    for i in range(4):
      current, state = step(current, state, jnp.float32(i + 1))
    assert len(traces) == 1, config.name
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(current))


# ---------------------------------------------------------------------------------------------------
# Gradient options.


def _one_update(config, grads, params=None, lr=1.0):
  params = {"a": jnp.ones((2, 2)), "b": jnp.ones((3,))} if params is None else params
  tx = create_optimizer(config, optax.constant_schedule(lr))
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_clip_by_value():
  grads = {"a": jnp.array([[0.5, -3.0], [2.0, -0.1]]), "b": jnp.array([10.0, -10.0, 0.0])}
  updates = _one_update(OptimizerConfig(name="sgd", grad_clip_value=1.0), grads)
  np.testing.assert_allclose(updates["a"], -np.array([[0.5, -1.0], [1.0, -0.1]]), rtol=1e-6)
  np.testing.assert_allclose(updates["b"], -np.array([1.0, -1.0, 0.0]), rtol=1e-6)
  with pytest.raises(ZooError, match="grad_clip_value must be > 0"):
    _one_update(OptimizerConfig(name="sgd", grad_clip_value=-1.0), grads)


def test_per_tensor_normalisation():
  grads = {"a": jnp.array([[3.0, 0.0], [0.0, 4.0]]), "b": jnp.array([0.0, 0.0, 0.0])}
  updates = _one_update(OptimizerConfig(name="sgd", normalize_gradients=True), grads, lr=0.5)
  # Each tensor by its own norm (5 for a): not by the global norm, and a zero tensor stays zero.
  np.testing.assert_allclose(updates["a"], -0.5 * np.array([[0.6, 0.0], [0.0, 0.8]]), rtol=1e-6)
  np.testing.assert_allclose(updates["b"], 0.0)
  grads = {"a": 100.0 * jnp.ones((2, 2)), "b": jnp.array([0.0, 1e-3, 0.0])}
  updates = _one_update(OptimizerConfig(name="sgd", normalize_gradients=True), grads)
  np.testing.assert_allclose(updates["a"], -0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_allclose(updates["b"], [0.0, -1.0, 0.0], rtol=1e-6)


def test_accumulation_applies_the_mean_every_k_calls():
  k = 3
  params = {"w": jnp.zeros((2,))}
  tx = create_optimizer(OptimizerConfig(name="momentum", accumulate_steps=k), optax.constant_schedule(0.1))
  state = tx.init(params)
  rng = np.random.default_rng(0)
  grads = rng.normal(size=(2 * k, 2))
  trace, seen = np.zeros(2), []
  for i, g in enumerate(grads):
    updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
    seen.append(np.asarray(updates["w"]))
    if (i + 1) % k:
      np.testing.assert_allclose(seen[-1], 0.0)  # Micro-batches before the k-th change nothing.
    else:
      trace = grads[i + 1 - k : i + 1].mean(axis=0) + 0.9 * trace
      np.testing.assert_allclose(seen[-1], -0.1 * trace, rtol=1e-5)
  with pytest.raises(ZooError, match="accumulate_steps must be an integer >= 1"):
    create_optimizer(OptimizerConfig(accumulate_steps=0), optax.constant_schedule(0.1))


def test_skip_nonfinite_skips_and_counts():
  params = {"w": jnp.ones((2,))}
  tx = create_optimizer(OptimizerConfig(name="adam", skip_nonfinite=True), optax.constant_schedule(0.1))
  plain = create_optimizer(OptimizerConfig(name="adam"), optax.constant_schedule(0.1))
  state, plain_state = tx.init(params), plain.init(params)
  good = [jnp.array([1.0, -2.0]), jnp.array([0.5, 0.5])]
  for g in (good[0], jnp.array([jnp.nan, 1.0]), jnp.array([1.0, jnp.inf]), good[1]):
    updates, state = tx.update({"w": g}, state, params)
    if bool(jnp.all(jnp.isfinite(g))):
      want, plain_state = plain.update({"w": g}, plain_state, params)
      np.testing.assert_allclose(updates["w"], want["w"], rtol=1e-6)
    else:
      np.testing.assert_allclose(updates["w"], 0.0)  # Skipped: Adam's moments and count untouched.
  assert int(state.total_notfinite) == 2
  assert int(state.notfinite_count) == 0  # The last update was finite again.


@pytest.mark.parametrize("k, alpha", [(5, 0.5), (2, 0.8)])
def test_lookahead_matches_numpy_reference(k, alpha):
  """Zhang et al. 2019, Algorithm 1: k fast SGD-momentum steps from the slow weights, then
  phi <- phi + alpha (theta - phi) and theta <- phi; 12 steps cross two or more synchronisations."""
  steps, lr, mu = 12, 0.1, 0.9
  rng = np.random.default_rng(3)
  grads = rng.normal(size=(steps, 3))
  config = OptimizerConfig(name="momentum", kwargs={"momentum": mu}, lookahead_steps=k, lookahead_alpha=alpha)
  tx = create_optimizer(config, optax.constant_schedule(lr))
  params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
  state = tx.init(params)
  theta = slow = np.array([1.0, -2.0, 0.5])
  trace = np.zeros(3)
  for t, g in enumerate(grads):
    updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
    trace = g + mu * trace  # The fast optimiser's state carries across synchronisations (no reset).
    theta = theta - lr * trace
    if (t + 1) % k == 0:
      slow = slow + alpha * (theta - slow)
      theta = slow
    np.testing.assert_allclose(params["w"], theta, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.slow["w"], slow, rtol=1e-5, atol=1e-6)


def test_lookahead_counts_updates_not_micro_batches():
  config = OptimizerConfig(name="sgd", lookahead_steps=2, lookahead_alpha=0.5, accumulate_steps=3)
  tx = create_optimizer(config, optax.constant_schedule(1.0))
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  values = []
  for _ in range(12):  # 4 updates of -1 each; synchronisations after updates 2 and 4.
    updates, state = tx.update({"w": jnp.ones(())}, state, params)
    params = optax.apply_updates(params, updates)
    values.append(float(params["w"]))
  # Update 1: -1; update 2: -2 then slow 0 + 0.5 (-2) = -1; update 3: -2; update 4: -3 -> -1 + 0.5 (-2) = -2.
  assert values[2::3] == pytest.approx([-1.0, -1.0, -2.0, -2.0])


def test_lookahead_rejects_bad_settings():
  with pytest.raises(ZooError, match="lookahead_steps must be an integer >= 1"):
    create_optimizer(OptimizerConfig(lookahead_steps=0), optax.constant_schedule(0.1))
  with pytest.raises(ZooError, match="lookahead_alpha must be in"):
    create_optimizer(OptimizerConfig(lookahead_steps=5, lookahead_alpha=1.5), optax.constant_schedule(0.1))


def test_lr_scale_scales_the_whole_update_before_max_norm():
  params = {"kernel": jnp.ones((2, 2))}
  grads = {"kernel": jnp.array([[1.0, -2.0], [0.5, 0.0]])}
  config = OptimizerConfig(name="sgd", weight_decay=0.1, weight_decay_mask="all")
  tx = create_optimizer(config, optax.constant_schedule(0.5))
  plain, _ = tx.update(grads, tx.init(params), params)
  scaled, _ = tx.update(grads, tx.init(params), params, lr_scale=jnp.float32(0.2))
  np.testing.assert_allclose(plain["kernel"], -0.5 * (np.asarray(grads["kernel"]) + 0.1), rtol=1e-6)
  np.testing.assert_allclose(scaled["kernel"], 0.2 * np.asarray(plain["kernel"]), rtol=1e-6)
  # With max-norm last, a scaled step still lands inside the ball.
  config = OptimizerConfig(name="sgd", max_norm=1.0)
  tx = create_optimizer(config, optax.constant_schedule(1.0))
  updates, _ = tx.update({"kernel": -10 * jnp.ones((2, 2))}, tx.init(params), params, lr_scale=0.5)
  new = optax.apply_updates(params, updates)["kernel"]
  np.testing.assert_allclose(np.linalg.norm(np.asarray(new), axis=0), 1.0, rtol=1e-6)


def test_update_count_and_skipped_updates_are_read_from_the_state():
  params = {"w": jnp.ones((2,))}
  config = OptimizerConfig(name="adam", accumulate_steps=2, skip_nonfinite=True)
  tx = create_optimizer(config, optax.constant_schedule(0.1))
  state = tx.init(params)
  for g in ([1.0, 1.0], [jnp.nan, 0.0], [1.0, 2.0], [0.5, 0.5], [1.0, 1.0]):
    _, state = tx.update({"w": jnp.asarray(g)}, state, params)
  assert int(optim.update_count(config, state)) == 2  # 4 finite micro-batches: 2 updates.
  assert int(optim.skipped_updates(config, state)) == 1
  assert optim.update_count(OptimizerConfig(), state) is None
  assert optim.skipped_updates(OptimizerConfig(), state) is None


# ---------------------------------------------------------------------------------------------------
# Schedules against NumPy formulas.

STEPS_TO_CHECK = np.arange(0, 131)


def _schedule(name, kwargs, total_steps=100, steps_per_epoch=10, learning_rate=2.0):
  config = ScheduleConfig(name=name, kwargs=kwargs)
  schedule = create_schedule(config, learning_rate, total_steps, steps_per_epoch)
  return np.array([float(schedule(int(s))) for s in STEPS_TO_CHECK])


def _close(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _cos_anneal(hi, lo, frac):
  return lo + (hi - lo) * 0.5 * (1 + np.cos(np.pi * np.clip(frac, 0.0, 1.0)))


def test_cosine_has_a_floor():
  _close(_schedule("cosine", {"alpha": 0.1}), _cos_anneal(2.0, 0.2, STEPS_TO_CHECK / 100))


@pytest.mark.parametrize(
  "kwargs, periods",
  [
    ({"period_steps": 30}, [30] * 5),
    ({"period_epochs": 1, "period_mult": 2, "alpha": 0.05}, [10, 20, 40, 80]),
    ({"period_steps": 7, "period_mult": 3, "alpha": 0.5}, [7, 21, 63, 189]),
  ],
)
def test_sgdr_is_cosine_annealing_warm_restarts(kwargs, periods):
  # PyTorch's CosineAnnealingWarmRestarts: T_cur counts within the current period, T_i = T_0 * T_mult^i.
  want, start = [], 0
  for t in STEPS_TO_CHECK:
    i, start = 0, 0
    while t >= start + periods[i]:
      start, i = start + periods[i], i + 1
    want.append(_cos_anneal(2.0, 2.0 * kwargs.get("alpha", 0.0), (t - start) / periods[i]))
  _close(_schedule("sgdr", kwargs), np.array(want))


def test_one_cycle_forms():
  lr, div, final = 2.0, 25.0, 1e4
  start, end, peak = lr / div, lr / div / final, 30  # pct_start 0.3 of 100 steps.
  t = STEPS_TO_CHECK
  up, down = np.clip(t / peak, 0, 1), np.clip((t - peak) / (100 - peak), 0, 1)
  cosine = np.where(t < peak, _cos_anneal(lr, start, 1 - up), _cos_anneal(lr, end, down))
  _close(_schedule("one_cycle", {}), cosine)
  linear = np.where(t < peak, start + (lr - start) * up, lr + (end - lr) * down)
  _close(_schedule("one_cycle", {"form": "linear"}), linear)
  # Epoch-free arguments in full; pct_start 0.25 of 80 steps peaks at 20.
  t80 = np.clip(t, 0, 80)
  custom = _schedule("one_cycle", {"form": "linear", "pct_start": 0.25, "div_factor": 10.0}, total_steps=80)
  want = np.where(t80 < 20, 0.2 + 1.8 * t80 / 20, 2.0 + (0.2 / 1e4 - 2.0) * (t80 - 20) / 60)
  _close(custom, want)
  with pytest.raises(ZooError, match="form must be"):
    _schedule("one_cycle", {"form": "triangle"})


@pytest.mark.parametrize(
  "kwargs, begin",
  [({}, 0), ({"power": 2.0, "alpha": 0.1}, 0), ({"power": 0.5, "transition_begin_epochs": 2}, 20)],
)
def test_polynomial(kwargs, begin):
  power, end = kwargs.get("power", 1.0), 2.0 * kwargs.get("alpha", 0.0)
  frac = np.clip((STEPS_TO_CHECK - begin) / (100 - begin), 0.0, 1.0)
  _close(_schedule("polynomial", kwargs), (2.0 - end) * (1 - frac) ** power + end)


def test_step_is_pytorch_steplr_and_multisteplr_per_epoch():
  epoch = STEPS_TO_CHECK // 10  # What PyTorch's scheduler.step() once per epoch counts.
  within = STEPS_TO_CHECK < 100  # every_epochs sets boundaries within the run (100 steps) only.
  got = _schedule("step", {"every_epochs": 3, "factor": 0.5})
  _close(got[within], 2.0 * 0.5 ** (epoch[within] // 3))
  _close(got[~within], 2.0 * 0.5**3)
  got = _schedule("step", {"boundaries_epochs": (3, 7)})
  _close(got, 2.0 * 0.1 ** ((epoch >= 3).astype(int) + (epoch >= 7).astype(int)))


def test_exponential_is_pytorch_exponentiallr_per_epoch_with_staircase():
  epoch = STEPS_TO_CHECK // 10
  kwargs = {"decay_rate": 0.9, "transition_epochs": 1, "staircase": True}
  _close(_schedule("exponential", kwargs), 2.0 * 0.9**epoch)
  # Without staircase it decays smoothly within each epoch: the same at every epoch boundary.
  kwargs["staircase"] = False
  _close(_schedule("exponential", kwargs), 2.0 * 0.9 ** (STEPS_TO_CHECK / 10))
