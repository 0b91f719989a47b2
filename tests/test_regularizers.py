"""Tests for zoo.regularizers: masks by pattern, L1/L2 penalties and max-norm against numpy."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from zoo.registry import ZooError
from zoo.regularizers import max_norm, param_mask, penalty


def make_params(seed: int = 0, scale: float = 1.0):
  r = np.random.default_rng(seed)
  return {
    "Conv_0": {"kernel": scale * r.normal(size=(3, 3, 2, 4)).astype(np.float32), "bias": r.normal(size=4)},
    "Dense_0": {"kernel": scale * r.normal(size=(5, 3)).astype(np.float32), "bias": r.normal(size=3)},
    "LayerNorm_0": {"scale": r.normal(size=3).astype(np.float32)},
  }


def test_param_mask_selects_by_pattern():
  params = make_params()
  assert param_mask("*kernel")(params) == {
    "Conv_0": {"kernel": True, "bias": False},
    "Dense_0": {"kernel": True, "bias": False},
    "LayerNorm_0": {"scale": False},
  }
  assert param_mask("Dense_*/kernel, LayerNorm_*")(params) == {
    "Conv_0": {"kernel": False, "bias": False},
    "Dense_0": {"kernel": True, "bias": False},
    "LayerNorm_0": {"scale": True},
  }
  # The whole path must match: 'kernel' alone names no nested leaf.
  assert not any(jax.tree.leaves(param_mask("kernel")(params)))
  # The mask is usable by optax directly.
  tx = optax.masked(optax.set_to_zero(), param_mask("*/bias"))
  zeroed, _ = tx.update(params, tx.init(params))
  assert np.all(zeroed["Dense_0"]["bias"] == 0) and np.any(zeroed["Dense_0"]["kernel"] != 0)


def test_penalty_value_and_gradient_match_numpy():
  params = make_params()
  kernels = [params["Conv_0"]["kernel"], params["Dense_0"]["kernel"]]
  l1, l2 = 1e-3, 5e-2
  want = l1 * sum(np.abs(k).sum() for k in kernels) + 0.5 * l2 * sum((k**2).sum() for k in kernels)
  np.testing.assert_allclose(penalty(params, l1=l1, l2=l2), want, rtol=1e-5)
  np.testing.assert_allclose(penalty(params, l2=l2), 0.5 * l2 * sum((k**2).sum() for k in kernels), rtol=1e-5)

  grads = jax.jit(jax.grad(lambda p: penalty(p, l1=l1, l2=l2)))(params)
  for name in ("Conv_0", "Dense_0"):
    k = params[name]["kernel"]
    np.testing.assert_allclose(grads[name]["kernel"], l1 * np.sign(k) + l2 * k, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(grads[name]["bias"], 0)
  np.testing.assert_array_equal(grads["LayerNorm_0"]["scale"], 0)


def test_penalty_pattern_and_zero_coefficients():
  params = make_params()
  b = params["Dense_0"]["bias"]
  np.testing.assert_allclose(
    penalty(params, l1=2.0, pattern="Dense_0/bias"), 2.0 * np.abs(b).sum(), rtol=1e-5
  )
  assert float(penalty(params)) == 0.0
  with pytest.raises(ZooError, match="matches no parameter"):
    penalty(params, l2=1.0, pattern="*kernal")
  with pytest.raises(ZooError):
    penalty(params, l1=-1.0)


def test_penalty_under_jit():
  params = make_params()
  f = jax.jit(lambda p: penalty(p, l1=1e-2, l2=1e-2))
  np.testing.assert_allclose(f(params), penalty(params, l1=1e-2, l2=1e-2), rtol=1e-6)


def _column_norms(w: np.ndarray) -> np.ndarray:
  return np.sqrt((np.asarray(w, np.float64) ** 2).reshape(-1, w.shape[-1]).sum(0))


@pytest.mark.parametrize("jit", [False, True])
def test_max_norm_projects_long_columns_and_leaves_short_ones(jit):
  max_value = 3.0
  params = make_params(0, scale=0.5)
  # Updates that push some columns far beyond the ball and leave others inside.
  r = np.random.default_rng(1)
  updates = jax.tree.map(lambda p: (r.normal(size=np.shape(p)) * 0.1).astype(np.float32), params)
  updates["Dense_0"]["kernel"][:, 0] += 5.0  # column 0 too long
  updates["Conv_0"]["kernel"][..., 1] += 3.0  # output channel 1 too long
  tx = optax.chain(optax.identity(), max_norm(max_value))
  state = tx.init(params)
  step = jax.jit(tx.update) if jit else tx.update
  new_updates, _ = step(updates, state, params)
  new = optax.apply_updates(params, new_updates)
  naive = optax.apply_updates(params, updates)

  for name in ("Dense_0", "Conv_0"):
    before = _column_norms(naive[name]["kernel"])
    after = _column_norms(new[name]["kernel"])
    assert np.all(after <= max_value + 1e-5), (name, after)
    long = before > max_value
    assert long.any() and (~long).any(), before  # the test covers both cases
    np.testing.assert_allclose(after[long], max_value, rtol=1e-5)
    # Columns within the ball get their update exactly, so equal the unconstrained step.
    w, w0 = np.asarray(new[name]["kernel"]), np.asarray(naive[name]["kernel"])
    np.testing.assert_array_equal(w[..., ~long], w0[..., ~long])
    # A projection: the direction of a rescaled column is kept.
    cos = (w[..., long] * w0[..., long]).reshape(-1, long.sum()).sum(0) / (after[long] * before[long])
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)
  # Leaves not matched by the pattern are untouched.
  for name, leaf in (("Dense_0", "bias"), ("LayerNorm_0", "scale")):
    np.testing.assert_array_equal(new_updates[name][leaf], updates[name][leaf])


def test_max_norm_axis_and_errors():
  w = np.array([[3.0, 0.0], [4.0, 1.0]], np.float32)  # column norms 5, 1; row norms 3, ~4.12
  params = {"Dense_0": {"kernel": w}}
  zero = jax.tree.map(np.zeros_like, params)
  tx = max_norm(2.0, axis=1)  # rows
  out = optax.apply_updates(params, tx.update(zero, tx.init(params), params)[0])["Dense_0"]["kernel"]
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), [2.0, 2.0], rtol=1e-6)
  tx = max_norm(2.0)
  with pytest.raises(ValueError, match="needs the current params"):
    tx.update(zero, tx.init(params))
  with pytest.raises(ZooError, match="matches no parameter"):
    max_norm(2.0, pattern="*/bias").update(zero, (), params)
  with pytest.raises(ZooError):
    max_norm(0.0)
