"""DenseNet-BC (Huang et al. 2017): published parameter counts, channel growth and compression per block,
the small variants' shapes, and a few training steps through the trainer."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.models import create_model
from zoo.models.densenet import DenseLayer, Transition, transition_features
from zoo.registry import ZooError
from zoo.train import train_and_evaluate


def _init(model: nn.Module, x: jax.Array) -> dict:
  return model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)


def abstract_run(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, dict[str, tuple[int, ...]], tuple]:
  """(parameter count, the (H, W, C) output of every dense layer and transition by name, logits shape) for
  a batch of 2 examples of `shape`, computed with shapes only (nothing allocated or compiled)."""

  def run(x):
    variables = _init(model, x)
    logits, state = model.apply(
      variables,
      x,
      capture_intermediates=lambda mdl, _: isinstance(mdl, DenseLayer | Transition),
      mutable=["intermediates"],
    )
    return variables["params"], state["intermediates"], logits

  params, captured, logits = jax.eval_shape(run, jax.ShapeDtypeStruct((2, *shape), jnp.float32))
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
  features = {name: v["__call__"][0].shape[1:] for name, v in captured.items()}
  assert logits.dtype == jnp.float32
  return count, features, logits.shape


def test_densenet121_count_channel_growth_and_compression():
  # The paper's Table 1: blocks at 56, 28, 14 and 7 px; each layer adds k=32 channels; each transition
  # halves the channels and the resolution. Stem: 64 = 2k channels at 224 / 4 = 56 px.
  count, features, logits = abstract_run(create_model("densenet121"), (224, 224, 3))
  assert count == 7_978_856  # torchvision's densenet121
  assert logits == (2, 1000)
  expected = {}
  block_inputs = {1: (56, 64), 2: (28, 128), 3: (14, 256), 4: (7, 512)}
  for block, layers in zip((1, 2, 3, 4), (6, 12, 24, 16), strict=True):
    size, c0 = block_inputs[block]
    for i in range(1, layers + 1):
      expected[f"block{block}_layer{i}"] = (size, size, c0 + 32 * i)
  expected.update(transition1=(28, 28, 128), transition2=(14, 14, 256), transition3=(7, 7, 512))
  assert features == expected
  assert expected["block4_layer16"][-1] == 1024  # The classifier's input width.


@pytest.mark.parametrize("name,count", [("densenet169", 14_149_480), ("densenet201", 20_013_928)])
def test_published_parameter_counts(name, count):
  params = jax.eval_shape(lambda x: _init(create_model(name), x), jnp.zeros((1, 32, 32, 3)))["params"]
  assert sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)) == count  # Resolution-free.


@pytest.mark.parametrize(
  "shape,sizes,count",
  [((32, 32, 3), (32, 16, 8), 769_162), ((28, 28, 1), (28, 14, 7), 769_162 - 3 * 3 * 2 * 24)],
  ids=["32x32x3", "28x28x1"],
)
def test_densenet_bc100(shape, sizes, count):
  # The paper's "0.8M" DenseNet-BC (L=100, k=12): CIFAR stem of 2k = 24 channels at full resolution, then
  # three blocks of 16 layers and transitions of compression 0.5. One input channel instead of three
  # leaves out 3x3x2x24 stem weights.
  n, features, logits = abstract_run(create_model("densenet_bc100"), shape)
  assert n == count
  assert logits == (2, 10)
  assert features["block1_layer1"] == (sizes[0], sizes[0], 24 + 12)
  assert features["block1_layer16"] == (sizes[0], sizes[0], 216)
  assert features["transition1"] == (sizes[1], sizes[1], 108)
  assert features["block2_layer16"] == (sizes[1], sizes[1], 108 + 192)
  assert features["transition2"] == (sizes[2], sizes[2], 150)
  assert features["block3_layer16"] == (sizes[2], sizes[2], 342)
  assert len(features) == 3 * 16 + 2


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)], ids=["28x28x1", "32x32x3"])
def test_tiny_variant(shape):
  # Stem 16 channels; blocks of 2 layers adding k = 8 channels each; transitions halve channels and size.
  count, features, logits = abstract_run(create_model("densenet_tiny"), shape)
  assert logits == (2, 10) and count < 25_000
  h = shape[0]
  assert features["block1_layer2"] == (h, h, 32) and features["transition1"] == (h // 2, h // 2, 16)
  assert features["block3_layer2"] == (h // 4, h // 4, 16 + 2 * 8)


def test_compression_is_floor_theta_m():
  assert transition_features(216, 0.5) == 108
  assert transition_features(215, 0.5) == 107
  assert transition_features(100, 1.0) == 100
  # Without compression (DenseNet-B) a transition keeps every channel: 16 + 2 * 8 = 32 of them.
  assert abstract_run(create_model("densenet_tiny"), (28, 28, 1))[1]["transition1"] == (14, 14, 16)
  features = abstract_run(create_model("densenet_tiny", compression=1.0), (28, 28, 1))[1]
  assert features["transition1"] == (14, 14, 32)


def test_imagenet_variants_work_from_32_pixels():
  assert abstract_run(create_model("densenet121", num_classes=7), (32, 32, 3))[2] == (2, 7)


def test_dropout_acts_on_new_features_in_training_only():
  model = create_model("densenet_tiny", dropout=0.5, block_sizes=(1, 1))  # Fewer layers compile faster.
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  variables = jax.jit(_init, static_argnums=0)(model, x)
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  np.testing.assert_array_equal(apply(variables, x), apply(variables, x))
  a, b = (
    apply(variables, x, train=True, rngs={"dropout": jax.random.key(s)}, mutable=("batch_stats",))[0]
    for s in (0, 1)
  )
  assert not np.allclose(a, b)


def test_bad_fields_are_zoo_errors():
  with pytest.raises(ZooError, match="stem"):
    create_model("densenet_tiny", stem="imagnet")
  with pytest.raises(ZooError, match="compression"):
    create_model("densenet_tiny", compression=0.0)
  with pytest.raises(ZooError, match="block_sizes"):
    create_model("densenet_tiny", block_sizes=(2, 0))


def test_tiny_densenet_trains(tiny_config, tmp_path):
  config = tiny_config(model__name="densenet_tiny", model__kwargs={}, epochs=2, log_every_steps=1)
  config.data.kwargs = {"n_train": 192, "n_test": 50, "image_size": 16}
  train_and_evaluate(config, tmp_path, progress=False)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in records if r["split"] == "train"]
  assert len(losses) == 12 and np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
