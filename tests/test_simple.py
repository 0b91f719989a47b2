"""The documents' simpler architectures: VGG-style CNN, highway and residual MLPs, a small MobileNet."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.models import create_model
from zoo.models.simple import HighwayLayer, ResidualDenseBlock, SeparableConv
from zoo.registry import ZooError
from zoo.train import train_and_evaluate

NAMES = ["vgg_small", "highway_mlp", "residual_mlp", "bottleneck_mlp", "mobilenet_small"]


def abstract_params(model, x) -> dict:
  # x is an argument, not a closure: eval_shape only abstracts its arguments.
  return jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x), x)["params"]


def num_params(model, shape=(1, 28, 28, 1)) -> int:
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(abstract_params(model, x)))


# At 28x28x1 with 10 classes, counted by hand from each architecture.
PINNED = {
  # Convs 3x3 (no bias) 1-32-32 | 32-64-64 | 64-128-128, BN scale and offset per conv; GAP; Dense 512 (no
  # bias, BN) -> Dense 256 -> Dense 10.
  "vgg_small": 9 * (1 * 32 + 32 * 32 + 32 * 64 + 64 * 64 + 64 * 128 + 128 * 128)
  + 2 * (32 + 32 + 64 + 64 + 128 + 128)
  + (128 * 512 + 2 * 512)
  + (512 * 256 + 256)
  + (256 * 10 + 10),
  # Dense 784 -> 64, then 10 highway layers (H and T: two 64 x 64 Dense with biases), Dense 64 -> 10.
  "highway_mlp": (784 * 64 + 64) + 10 * 2 * (64 * 64 + 64) + (64 * 10 + 10),
  # Block 1: 784 -> 128 -> 128 with a 784 x 128 projection shortcut; blocks 2, 3: 128 -> 128 -> 128.
  "residual_mlp": (784 * 128 + 128) + (128 * 128 + 128) + 784 * 128 + 2 * 2 * (128 * 128 + 128) + 1290,
  # Block 1: 784 -> 64 -> 256, projection 784 x 256; blocks 2, 3: 256 -> 64 -> 256.
  "bottleneck_mlp": (784 * 64 + 64)
  + (64 * 256 + 256)
  + 784 * 256
  + 2 * ((256 * 64 + 64) + (64 * 256 + 256))
  + (256 * 10 + 10),
  # Stem 3x3 1 -> 32 + BN; separable blocks M -> N: 9 M + M N weights, BN on M and N; Dense 256 -> 10.
  "mobilenet_small": (9 * 32 + 64)
  + sum(9 * m + m * n + 2 * (m + n) for m, n in [(32, 64), (64, 128), (128, 128), (128, 256), (256, 256)])
  + (256 * 10 + 10),
}


@pytest.mark.parametrize("name,count", sorted(PINNED.items()))
def test_pinned_parameter_counts(name, count):
  assert num_params(create_model(name)) == count
  assert count <= 500_000


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 32, 32, 3)])
def test_output_shapes(name, shape):
  # Shapes only (test_models runs every model's forward pass on real values at 28x28x1).
  model = create_model(name, num_classes=7)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  for train in (False, True):
    logits, _ = jax.eval_shape(
      lambda v, x, train=train: model.apply(
        v, x, train=train, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]
      ),
      variables,
      x,
    )
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32


def test_vgg_small_same_padding_keeps_small_images_alive():
  # The documents' VALID convolutions leave nothing of a 28 px image by the third block (28 -> 24 -> 12 ->
  # 8 -> 4 -> 0); SAME keeps 28 -> 14 -> 7 -> 3 and the blocks' widths.
  model = create_model("vgg_small")
  x = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  _, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]), variables, x
  )
  convs = [state["intermediates"][f"Conv_{i}"]["__call__"][0].shape for i in range(6)]
  assert convs == [(1, 28, 28, 32)] * 2 + [(1, 14, 14, 64)] * 2 + [(1, 7, 7, 128)] * 2
  with pytest.raises(ZooError, match="dropout"):
    create_model("vgg_small", dropout=1.0)


def test_highway_gate_bias_starts_negative_and_carries_x():
  layer = HighwayLayer()
  x = jax.random.normal(jax.random.key(0), (256, 64))
  params = jax.jit(layer.init)(jax.random.key(1), x)["params"]
  np.testing.assert_array_equal(params["gate"]["bias"], np.full(64, -2.0, np.float32))
  t = jax.nn.sigmoid(x @ params["gate"]["kernel"] + params["gate"]["bias"][None])  # The transform gate.
  assert 0.05 < float(jnp.mean(t)) < 0.25  # sigmoid(-2) = 0.12: the carry gate 1 - T is about 0.88.
  h = jax.nn.relu(x @ params["transform"]["kernel"] + params["transform"]["bias"][None])
  y = jax.jit(layer.apply)({"params": params}, x)
  np.testing.assert_allclose(y, h * t + x * (1 - t), rtol=1e-5, atol=1e-5)
  # y - x = T (H - x): the output is far closer to x than to H.
  assert float(jnp.linalg.norm(y - x)) < 0.3 * float(jnp.linalg.norm(y - h))
  # The bias is a field: the network passes it to every layer.
  model = create_model("highway_mlp", gate_bias=-3.0, num_layers=2)
  net = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  assert all(float(net[f"HighwayLayer_{i}"]["gate"]["bias"][0]) == -3.0 for i in range(2))


def test_highway_layer_is_the_identity_with_a_closed_gate():
  layer = HighwayLayer(gate_bias=-40.0)  # T = sigmoid(-40 + small) ~ 4e-18
  x = jax.random.normal(jax.random.key(0), (8, 16))
  variables = jax.jit(layer.init)(jax.random.key(1), x)
  np.testing.assert_allclose(jax.jit(layer.apply)(variables, x), x, rtol=1e-6, atol=1e-6)


def test_residual_block_with_zero_initialised_last_layer_is_the_identity():
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), (8, 32)))  # Post-ReLU inputs, as between blocks.
  for hidden in (None, 8):  # Basic and bottleneck blocks.
    block = ResidualDenseBlock(32, hidden, zero_init=True)
    variables = jax.jit(block.init)(jax.random.key(1), x)
    assert variables["params"]["Dense_0"]["kernel"].shape == (32, hidden or 32)
    np.testing.assert_array_equal(jax.jit(block.apply)(variables, x), x)
    # Not zero-initialised, the branch changes x.
    plain = ResidualDenseBlock(32, hidden)
    assert not np.allclose(jax.jit(plain.apply)(jax.jit(plain.init)(jax.random.key(1), x), x), x)


def test_residual_mlp_shortcut_projects_only_where_widths_differ():
  params = abstract_params(create_model("bottleneck_mlp"), jax.ShapeDtypeStruct((1, 784), jnp.float32))
  assert params["ResidualDenseBlock_0"]["projection"]["kernel"].shape == (784, 256)
  assert "projection" not in params["ResidualDenseBlock_1"]
  assert params["ResidualDenseBlock_1"]["Dense_0"]["kernel"].shape == (256, 64)  # reduce
  assert params["ResidualDenseBlock_1"]["Dense_1"]["kernel"].shape == (64, 256)  # expand


@pytest.mark.parametrize("m,n,stride", [(32, 64, 1), (64, 128, 2), (3, 5, 2)])
def test_separable_block_parameters_follow_the_papers_formula(m, n, stride):
  block = SeparableConv(n, stride)
  x = jax.ShapeDtypeStruct((1, 8, 8, m), jnp.float32)
  params = abstract_params(block, x)
  d_k = 3
  kernels = int(np.prod(params["depthwise"]["kernel"].shape)) + int(
    np.prod(params["pointwise"]["kernel"].shape)
  )
  assert kernels == d_k * d_k * m + m * n  # Howard et al. (2017), eq. 5's weights.
  assert params["depthwise"]["kernel"].shape == (3, 3, 1, m)  # One 3x3 filter per input channel.
  assert num_params(block, x.shape) == kernels + 2 * (m + n)  # Plus BN's scale and offset.
  # Against a standard 3x3 convolution M -> N: the paper's reduction 1/N + 1/D_K^2.
  assert kernels / (d_k * d_k * m * n) == pytest.approx(1 / n + 1 / d_k**2)
  out = jax.eval_shape(lambda x: block.apply(block.init(jax.random.key(0), x), x), x)
  assert out.shape == (1, 8 // stride, 8 // stride, n)


def test_mobilenet_width_multiplier():
  half = create_model("mobilenet_small", width_multiplier=0.5)
  params = abstract_params(half, jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))
  assert params["SeparableConv_3"]["pointwise"]["kernel"].shape == (1, 1, 64, 128)  # 128 -> 256 halved
  with pytest.raises(ZooError, match="strides"):
    create_model("mobilenet_small", strides=(1, 2))


@pytest.mark.parametrize("name", ["mobilenet_small", "highway_mlp"])
def test_trains(name, tiny_config, tmp_path):
  # One epoch of 8 steps on 16x16 images, checkpointed only at the end.
  config = tiny_config(
    model__name=name, model__kwargs={}, epochs=1, log_every_steps=2, checkpoint_every_steps=1000
  )
  config.data.kwargs = {"n_train": 256, "n_test": 64, "image_size": 16}
  train_and_evaluate(config, tmp_path, progress=False)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r["loss"] for r in records if r["split"] == "train"]
  assert len(train) == 4 and train[-1] < 0.85 * train[0]
