"""Tests for zoo.models.regularized_layers: DropConnect, alpha dropout, weight norm, spectral norm, norms."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.models.regularized_layers import (
  ALPHA_PRIME,
  AlphaDropout,
  DropConnectDense,
  SpectralNormDense,
  WeightNormDense,
  alpha_dropout,
  normalization_layer,
)
from zoo.registry import ZooError


def test_alpha_prime_is_selu_saturation():
  np.testing.assert_allclose(ALPHA_PRIME, float(jax.nn.selu(jnp.float32(-50.0))), rtol=1e-6)


def _effective_kernel(model: nn.Module, variables, n_in: int) -> np.ndarray:
  """The kernel the layer applies: its output on the identity matrix, minus the bias (its output on 0)."""
  apply = jax.jit(model.apply)
  return np.asarray(apply(variables, jnp.eye(n_in)) - apply(variables, jnp.zeros((1, n_in))))


def test_dropconnect_train_and_eval():
  layer = DropConnectDense(16, rate=0.5, bias_init=nn.initializers.normal(1.0))
  x = jax.random.normal(jax.random.key(0), (4, 8))
  variables = layer.init(jax.random.key(1), x)
  p = jax.tree.map(np.asarray, variables["params"])
  eval_out = layer.apply(variables, x)
  np.testing.assert_allclose(eval_out, np.asarray(x) @ p["kernel"] + p["bias"], rtol=1e-5, atol=1e-5)
  # Dropping weights, not activations: with one mask per call, every example sees the same dropped kernel,
  # which is the kernel times {0, 2} entry-wise.
  a = (
    np.asarray(layer.apply(variables, jnp.eye(8), train=True, rngs={"dropout": jax.random.key(2)}))
    - p["bias"]
  )
  ratio = np.asarray(a / p["kernel"])
  assert np.all(np.isclose(ratio, 0.0, atol=1e-6) | np.isclose(ratio, 2.0, rtol=1e-5))
  assert 0.3 < np.mean(np.isclose(ratio, 0.0, atol=1e-6)) < 0.7
  b = (
    np.asarray(layer.apply(variables, jnp.eye(8), train=True, rngs={"dropout": jax.random.key(3)}))
    - p["bias"]
  )
  assert not np.allclose(a, b)
  # Inverted scaling keeps the expectation: the mean over many masks approaches the eval output.
  run = jax.jit(jax.vmap(lambda k: layer.apply(variables, x, train=True, rngs={"dropout": k})))
  outs = run(jax.random.split(jax.random.key(4), 1000))
  spread = np.asarray(outs.std(0)) / np.sqrt(len(outs))
  assert np.all(np.abs(np.asarray(outs.mean(0)) - eval_out) < 5 * spread + 1e-5)


def test_dropconnect_rejects_bad_rate():
  with pytest.raises(ZooError):
    DropConnectDense(4, rate=1.0).init(jax.random.key(0), jnp.ones((1, 3)))


def test_alpha_dropout_keeps_standard_moments():
  x = jax.random.normal(jax.random.key(0), (400_000,))
  for rate in (0.05, 0.2, 0.5):
    y = alpha_dropout(x, rate, jax.random.key(1), deterministic=False)
    assert abs(float(y.mean())) < 0.01, rate
    assert abs(float(y.var()) - 1.0) < 0.015, rate
    # Dropped units are all mapped to one value, a * alpha' + b.
    a = ((1 - rate) * (1 + rate * ALPHA_PRIME**2)) ** -0.5
    dropped = np.isclose(np.asarray(y), a * ALPHA_PRIME - a * ALPHA_PRIME * rate, rtol=1e-6)
    assert abs(dropped.mean() - rate) < 0.01
  # Plain dropout (inverted) would break the variance; this is what alpha dropout fixes.
  keep = jax.random.bernoulli(jax.random.key(1), 0.8, x.shape)
  assert float(jnp.where(keep, x / 0.8, 0).var()) > 1.2


def test_alpha_dropout_identity_when_deterministic():
  x = jax.random.normal(jax.random.key(0), (3, 5))
  np.testing.assert_array_equal(alpha_dropout(x, 0.3, None, deterministic=True), x)
  layer = AlphaDropout(0.3)
  np.testing.assert_array_equal(layer.apply({}, x), x)
  y = layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(y, x)


def test_weight_norm_columns_equal_gains():
  layer = WeightNormDense(6)
  variables = layer.init(jax.random.key(0), jnp.ones((1, 5)))
  # Set the gains to distinct values, so that "norm == g" is not "norm == 1".
  g = jnp.arange(1.0, 7.0)
  params = jax.tree_util.tree_map_with_path(
    lambda path, v: g if jax.tree_util.keystr(path).endswith("scale']") else v, variables["params"]
  )
  assert any(np.array_equal(v, g) for v in jax.tree.leaves(params))
  w = _effective_kernel(layer, {"params": params}, 5)
  np.testing.assert_allclose(np.linalg.norm(w, axis=0), g, rtol=1e-5)
  # The direction is the raw kernel's: w = g * v / ||v||.
  v = np.asarray(params["Dense_0"]["kernel"])
  np.testing.assert_allclose(w, np.asarray(g) * v / np.linalg.norm(v, axis=0), rtol=1e-5, atol=1e-6)


def test_spectral_norm_converges_to_unit_singular_value():
  layer = SpectralNormDense(7)
  x = jnp.ones((1, 9))
  variables = layer.init(jax.random.key(0), x)
  assert "spectral" in variables
  kernel = np.asarray(variables["params"]["Dense_0"]["kernel"]) * 3.0
  params = jax.tree.map(lambda v: v, variables["params"])
  params["Dense_0"]["kernel"] = kernel
  spectral = variables["spectral"]

  step = jax.jit(
    lambda s: layer.apply({"params": params, "spectral": s}, x, train=True, mutable=["spectral"])[1]
  )
  for _ in range(30):  # one power iteration per training call
    spectral = step(spectral)["spectral"]
  w = _effective_kernel(layer, {"params": params, "spectral": spectral}, 9)
  np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False)[0], 1.0, rtol=1e-3)
  np.testing.assert_allclose(w * np.linalg.svd(kernel, compute_uv=False)[0], kernel, rtol=1e-3, atol=1e-5)

  # Eval (train=False) writes nothing, even with the collection mutable.
  _, unchanged = layer.apply({"params": params, "spectral": spectral}, x, mutable=["spectral"])
  for a, b in zip(jax.tree.leaves(unchanged), jax.tree.leaves(spectral), strict=True):
    np.testing.assert_array_equal(a, b)


class _Normed(nn.Module):
  norm: str

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    return normalization_layer(self.norm, train=train, num_groups=2)(x)


@pytest.mark.parametrize("name", ["batch", "layer", "group", "none"])
def test_normalization_layer(name):
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (8, 4))
  model = _Normed(name)
  variables = model.init(jax.random.key(1), x)
  y, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
  if name == "none":
    np.testing.assert_array_equal(y, x)
    return
  axis = 0 if name == "batch" else -1
  np.testing.assert_allclose(np.asarray(y).mean(axis), 0.0, atol=1e-5)
  assert ("batch_stats" in state) == (name == "batch")


def test_normalization_layer_unknown_name():
  with pytest.raises(ZooError, match="choose one of"):
    _Normed("instance").init(jax.random.key(0), jnp.ones((2, 4)))
