"""Tests of the MLP-Mixer family: published sizes, shapes, what each MLP mixes, stochastic depth, training."""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.models import create_model
from zoo.models.mixer import MixerBlock
from zoo.registry import ZooError
from zoo.train import train_and_evaluate

# timm's mixer_{s,b}{16,32}_224 (1000 classes, 224x224x3), checked against the closed form below.
PUBLISHED = {
  "mixer_s16": 18_528_264,
  "mixer_b16": 59_880_472,
  "mixer_s32": 19_104_624,
  "mixer_b32": 60_293_428,
}
DIMS = {"s": (512, 8, 256, 2048), "b": (768, 12, 384, 3072)}  # width, depth, token MLP, channel MLP


def _formula(patch: int, width: int, depth: int, tokens_mlp: int, channels_mlp: int, size: int = 224) -> int:
  n = (size // patch) ** 2
  block = (
    4 * width + (2 * n * tokens_mlp + tokens_mlp + n) + (2 * width * channels_mlp + channels_mlp + width)
  )
  return patch * patch * 3 * width + width + depth * block + 2 * width + (width + 1) * 1000


def param_shapes(model, shape: tuple[int, ...]) -> dict:
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  return jax.eval_shape(init, model, x)["params"]  # Shapes only: nothing is allocated.


@functools.partial(jax.jit, static_argnums=0)
def init(model, x: jax.Array) -> dict:
  return model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x)


@functools.partial(jax.jit, static_argnums=0, static_argnames="train")
def apply(model, variables: dict, x: jax.Array, *, train: bool = False, seed: int = 0) -> jax.Array:
  return model.apply(variables, x, train=train, rngs={"dropout": jax.random.key(seed)})


@pytest.mark.parametrize("name,published", sorted(PUBLISHED.items()))
def test_published_parameter_counts(name, published):
  params = param_shapes(create_model(name, num_classes=1000), (224, 224, 3))
  assert sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)) == published


def test_the_published_counts_follow_from_the_dimensions():
  # Mixer-S/16 by hand: 393,728 (stem) + 8 x 2,202,564 + 1,024 (LN) + 513,000 (head).
  for name, published in PUBLISHED.items():
    assert _formula(int(name[-2:]), *DIMS[name[6]]) == published, name


def test_registered_dimensions():
  for name in PUBLISHED:
    model = create_model(name)
    assert (model.width, model.depth, model.tokens_mlp_dim, model.channels_mlp_dim) == DIMS[name[6]], name
    assert model.patch_size == int(name[-2:]), name
  params = param_shapes(create_model("mixer_b16", depth=1), (224, 224, 3))
  assert params["stem"]["kernel"].shape == (16, 16, 3, 768)
  block = params["block0"]
  assert block["token_mixing"]["Dense_0"]["kernel"].shape == (196, 384)  # Across the 14 x 14 patches.
  assert block["token_mixing"]["Dense_1"]["kernel"].shape == (384, 196)
  assert block["channel_mixing"]["Dense_0"]["kernel"].shape == (768, 3072)
  assert params["head"]["kernel"].shape == (768, 1000)


@pytest.mark.parametrize(
  "name,shape,patches",
  [
    ("mixer_s16", (224, 224, 3), 14 * 14),
    ("mixer_s16", (32, 32, 3), 2 * 2),  # A model registered for 224 px initialises at 32 px.
    ("mixer_tiny_p4", (32, 32, 3), 8 * 8),
    ("mixer_tiny_p4", (28, 28, 1), 7 * 7),
    ("mixer_tiny_p7", (28, 28, 1), 4 * 4),
    ("mixer_tiny_p7", (32, 32, 3), 4 * 4),  # The 4 pixels beyond whole patches are dropped.
  ],
)
def test_token_mixing_is_sized_from_the_input(name, shape, patches):
  params = param_shapes(create_model(name, depth=1), shape)
  token_mixing = params["block0"]["token_mixing"]
  assert token_mixing["Dense_0"]["kernel"].shape[0] == patches
  assert token_mixing["Dense_1"]["kernel"].shape[1] == patches


@pytest.mark.parametrize("name", ["mixer_tiny_p4", "mixer_tiny_p7"])
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_small_variants_give_logits_at_28_and_32_pixels(name, shape):
  # Shapes through eval_shape; tests/test_models.py runs them for real at their registered shapes.
  model = create_model(name, num_classes=7)
  x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
  variables = jax.eval_shape(init, model, x)
  for train in (False, True):
    logits = jax.eval_shape(functools.partial(apply, model, train=train), variables, x)
    assert logits.shape == (3, 7) and logits.dtype == jnp.float32


@pytest.fixture(scope="module")
def block():
  """A MixerBlock on (B=2, N=6 patches, D=8 channels), its variables, and a perturbation of patch 0."""
  module = MixerBlock(tokens_mlp_dim=5, channels_mlp_dim=16)
  x = jax.random.normal(jax.random.key(0), (2, 6, 8))
  variables = jax.jit(module.init)(jax.random.key(1), x)
  return module, variables, x


def _changed_patches(module, variables, x, x_perturbed) -> np.ndarray:
  delta = jax.jit(module.apply)(variables, x_perturbed) - jax.jit(module.apply)(variables, x)  # (B, N, D)
  return np.asarray(jnp.max(jnp.abs(delta), axis=(0, 2)) > 1e-6)  # (N,): which patches moved.


def test_token_mixing_spreads_one_patch_to_all_others(block):
  module, variables, x = block
  # A random change: a constant shift of a patch's channels would vanish in the LayerNorm.
  change = jax.random.normal(jax.random.key(2), (2, 8))
  changed = _changed_patches(module, variables, x, x.at[:, 0].add(change))
  assert changed.all()  # After one layer every patch's features depend on patch 0.


def test_channel_mixing_acts_on_each_patch_alone(block):
  # With the token-mixing branch silenced (its parameters zeroed), a block is x + channel_mixing(LN(x))
  # per patch: perturbing patch 0 moves patch 0 only, but all of its channels.
  module, variables, x = block
  silenced = jax.tree_util.tree_map_with_path(
    lambda path, leaf: jnp.zeros_like(leaf) if "token_mixing" in jax.tree_util.keystr(path) else leaf,
    variables,
  )
  x_perturbed = x.at[:, 0, 0].add(1.0)  # One channel of patch 0.
  np.testing.assert_array_equal(_changed_patches(module, silenced, x, x_perturbed), [True] + [False] * 5)
  delta = jax.jit(module.apply)(silenced, x_perturbed)[:, 0] - jax.jit(module.apply)(silenced, x)[:, 0]
  # The residual path carries channel 0's change only: the others moved through the channel-mixing branch.
  assert bool(jnp.all(jnp.abs(delta[:, 1:]) > 1e-6))


@pytest.mark.parametrize("rates", [{"drop_path": 0.5}, {"dropout": 0.1}])
def test_stochastic_depth_and_dropout_act_in_training_only(rates):
  plain = create_model("mixer_tiny_p7", depth=2)
  dropped = create_model("mixer_tiny_p7", depth=2, **rates)  # The second block's drop_path rate is 0.5.
  x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
  variables = init(plain, x)
  expected = apply(plain, variables, x)
  np.testing.assert_allclose(apply(dropped, variables, x), expected, rtol=1e-6)
  np.testing.assert_allclose(apply(plain, variables, x, train=True), expected, rtol=1e-6)
  a, b = (apply(dropped, variables, x, train=True, seed=seed) for seed in (0, 1))
  assert not np.allclose(a, b)


def test_bad_settings_are_zoo_errors():
  with pytest.raises(ZooError, match="dropout"):
    create_model("mixer_s16", dropout=1.5)
  with pytest.raises(ZooError, match="drop_path"):
    create_model("mixer_s16", drop_path=-0.1)
  with pytest.raises(ZooError, match="smaller than one patch"):
    param_shapes(create_model("mixer_s32", depth=1), (28, 28, 1))


@pytest.mark.parametrize("name,image_size,channels", [("mixer_tiny_p7", 28, 1), ("mixer_tiny_p4", 32, 3)])
def test_a_few_training_steps_reduce_the_loss(tiny_config, tmp_path, name, image_size, channels):
  config = tiny_config(epochs=2, log_every_steps=2)
  config.model.name = name
  config.model.kwargs = {"depth": 1}  # Fewer blocks to compile; the registered depth is tested elsewhere.
  config.data.kwargs = {"n_train": 128, "n_test": 32, "image_size": image_size, "channels": channels}
  config.optimizer.learning_rate = 3e-3
  train_and_evaluate(config, tmp_path, progress=False)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in records if r["split"] == "train"]
  assert len(losses) >= 3 and losses[-1] < 0.7 * losses[0], losses
