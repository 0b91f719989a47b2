"""Shared blocks: the depthwise convolution equals flax's grouped one; DropPath; squeeze-excite; the MLP."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.models.blocks import DepthwiseConv, DropPath, MlpBlock, SqueezeExcite, gelu


@pytest.mark.parametrize(
  "size, kernel, stride, padding",
  [
    ((14, 14), 3, 1, "SAME"),
    ((15, 14), 3, 2, "SAME"),
    ((14, 13), 5, 2, "SAME"),
    ((13, 13), 3, 2, ((1, 1), (1, 1))),
  ],
)
def test_depthwise_conv_equals_grouped_conv_values_and_gradients(size, kernel, stride, padding):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *size, 6)), jnp.float32)
  ours = DepthwiseConv(kernel, stride, padding, use_bias=True)
  theirs = nn.Conv(6, (kernel, kernel), stride, padding=padding, feature_group_count=6, use_bias=True)
  variables = ours.init(jax.random.key(0), x)
  variables = {"params": {**variables["params"], "bias": jnp.arange(6.0)}}
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, theirs.init(jax.random.key(0), x))
  np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), atol=1e-5)
  loss = lambda m: jax.grad(lambda v, x: jnp.sum(jnp.sin(m.apply(v, x))), argnums=(0, 1))(variables, x)
  for a, b in zip(jax.tree.leaves(loss(ours)), jax.tree.leaves(loss(theirs)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_drop_path_drops_whole_examples_and_keeps_the_mean():
  x = jnp.ones((4000, 2, 2, 3))
  y = DropPath(0.25).apply({}, x, True, rngs={"dropout": jax.random.key(0)})
  per_example = np.asarray(y).reshape(4000, -1)
  assert set(np.unique(per_example)) <= {np.float32(0.0), np.float32(1 / 0.75)}
  assert (per_example == per_example[:, :1]).all()  # All or nothing per example.
  assert abs(per_example.mean() - 1.0) < 0.05
  np.testing.assert_array_equal(DropPath(0.25).apply({}, x, False), x)


def test_squeeze_excite_gates_channels_by_their_global_mean():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 4, 8)), jnp.float32)
  se = SqueezeExcite(2)
  variables = se.init(jax.random.key(0), x)
  assert variables["params"]["reduce"]["kernel"].shape == (1, 1, 8, 2)
  p = jax.tree.map(np.asarray, variables["params"])
  s = np.asarray(x).mean(axis=(1, 2))
  hidden = np.maximum(s @ p["reduce"]["kernel"][0, 0] + p["reduce"]["bias"], 0)
  gate = 1 / (1 + np.exp(-(hidden @ p["expand"]["kernel"][0, 0] + p["expand"]["bias"])))
  np.testing.assert_allclose(se.apply(variables, x), np.asarray(x) * gate[:, None, None, :], rtol=1e-5)


def test_gelu_is_the_exact_erf_form():
  x = np.linspace(-4, 4, 33)
  exact = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
  np.testing.assert_allclose(gelu(jnp.asarray(x)), exact, atol=1e-6)  # The tanh form is up to ~5e-4 off.


def test_mlp_block_is_dense_gelu_dense_on_the_last_axis_with_the_given_inits():
  block = MlpBlock(7, kernel_init=nn.initializers.ones, bias_init=nn.initializers.constant(0.5))
  x = jax.random.normal(jax.random.key(0), (2, 3, 5))
  params = block.init(jax.random.key(1), x)["params"]
  np.testing.assert_array_equal(params["Dense_0"]["kernel"], np.ones((5, 7)))
  np.testing.assert_array_equal(params["Dense_1"]["bias"], np.full(5, 0.5))
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  hidden = np.asarray(x, np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  hidden = 0.5 * hidden * (1 + np.vectorize(math.erf)(hidden / math.sqrt(2)))
  expected = hidden @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
  np.testing.assert_allclose(block.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-5)
