"""The ResNet family: published parameter counts, stage shapes, where v1.5 strides, the block options."""

from __future__ import annotations

import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo.models import create_model, list_models
from zoo.models.resnet import ResidualBlock, ResNet
from zoo.registry import ZooError
from zoo.train import train_and_evaluate

IMAGENET = (224, 224, 3)
CIFAR = (32, 32, 3)

# Published counts: torchvision's resnet18..152 (1000 classes, 224 px); kuangliu/pytorch-cifar's
# ResNet18/50 (10 classes, 32 px); He et al. 2016 Table 6 (CIFAR-10, option A: 0.27M, 0.46M, 0.66M,
# 0.85M, 1.7M; akamaster/pytorch_resnet_cifar10 prints these exact numbers); WRN-28-10 36.5M
# (Zagoruyko & Komodakis 2016 Table 6; 36,479,194 in the PyTorch ports).
PUBLISHED = {
  "resnet18": (IMAGENET, 11_689_512),
  "resnet34": (IMAGENET, 21_797_672),
  "resnet50": (IMAGENET, 25_557_032),
  "resnet101": (IMAGENET, 44_549_160),
  "resnet152": (IMAGENET, 60_192_808),
  "resnet18_cifar": (CIFAR, 11_173_962),
  "resnet50_cifar": (CIFAR, 23_520_842),
  "resnet20": (CIFAR, 269_722),
  "resnet32": (CIFAR, 464_154),
  "resnet44": (CIFAR, 658_586),
  "resnet56": (CIFAR, 853_018),
  "resnet110": (CIFAR, 1_727_962),
  "wrn28_10": (CIFAR, 36_479_194),
}


@functools.cache
def abstract(name: str, shape: tuple[int, ...], **kw) -> tuple[ResNet, dict, dict]:
  """(model, variables, intermediates) as shapes only (nothing allocated): every module's output."""
  model = create_model(name, **kw)
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)

  def run(x):
    variables = model.init({"params": jax.random.key(0)}, x)
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    return variables, state["intermediates"]

  return model, *jax.eval_shape(run, x)


# Initialisation inside the tests' jitted functions uses the RBG generator: XLA CPU compiles threefry's
# unrolled rounds slowly (seconds per function), more than the rest of these small computations.
def rbg_key(seed: int = 0) -> jax.Array:
  return jax.random.key(seed, impl="rbg")


def normal(*shape: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def stage_outputs(intermediates: dict) -> list[tuple[int, ...]]:
  """The output shape of each stage's last block, without the batch dimension."""
  last = {}
  for key in intermediates:
    if m := re.fullmatch(r"stage(\d+)_block(\d+)", key):
      last[int(m[1])] = max(last.get(int(m[1]), (0, key)), (int(m[2]), key))
  return [intermediates[key]["__call__"][0].shape[1:] for _, (_, key) in sorted(last.items())]


# ---------------------------------------------------------------------------------------------------
# Architecture, abstractly.


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name):
  shape, expected = PUBLISHED[name]
  assert count(abstract(name, shape)[1]["params"]) == expected


def test_option_b_shortcuts_add_the_projections():
  # The projections at the two widenings: 1x1 convs 16->32, 32->64 and their BNs (2,752 parameters).
  assert count(abstract("resnet20", CIFAR, shortcut="projection")[1]["params"]) == 269_722 + 2_752


def test_the_variants_are_registered_and_the_tiny_one_is_small():
  assert {"resnet18", "resnet50", "resnet20", "wrn28_10", "resnet1d_18", "resnet_tiny"} <= set(list_models())
  assert count(abstract("resnet_tiny", (28, 28, 1))[1]["params"]) <= 1_000_000


@pytest.mark.parametrize(
  "name,shape,expected",
  [
    ("resnet18", IMAGENET, [(56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512)]),
    ("resnet50", IMAGENET, [(56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 2048)]),
    ("resnet18_cifar", CIFAR, [(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512)]),
    ("resnet20", CIFAR, [(32, 32, 16), (16, 16, 32), (8, 8, 64)]),
    ("wrn28_10", CIFAR, [(32, 32, 160), (16, 16, 320), (8, 8, 640)]),
    ("resnet_tiny", (28, 28, 1), [(28, 28, 16), (14, 14, 32), (7, 7, 64), (4, 4, 128)]),
    ("resnet1d_18", (128, 1), [(32, 64), (16, 128), (8, 256), (4, 512)]),
  ],
)
def test_stage_output_shapes(name, shape, expected):
  assert stage_outputs(abstract(name, shape)[2]) == expected


def test_the_imagenet_stem_quarters_the_input():
  _, variables, inter = abstract("resnet50", IMAGENET)
  assert variables["params"]["stem_conv"]["kernel"].shape == (7, 7, 3, 64)
  assert inter["stem_conv"]["__call__"][0].shape == (2, 112, 112, 64)
  assert inter["stage1_block1"]["__call__"][0].shape == (2, 56, 56, 256)  # After the 3x3/2 max-pool.


def test_bottleneck_strides_on_the_3x3_conv():
  # v1.5: the first block of stage 2 (56 px in) keeps 56 px through its 1x1, halves it in its 3x3.
  _, variables, inter = abstract("resnet50", IMAGENET)
  params, out = variables["params"]["stage2_block1"], inter["stage2_block1"]
  assert params["conv1"]["kernel"].shape == (1, 1, 256, 128)
  assert params["conv2"]["kernel"].shape == (3, 3, 128, 128)
  assert params["conv3"]["kernel"].shape == (1, 1, 128, 512)
  assert params["proj_conv"]["kernel"].shape == (1, 1, 256, 512)
  assert out["conv1"]["__call__"][0].shape == (2, 56, 56, 128)
  assert out["conv2"]["__call__"][0].shape == (2, 28, 28, 128)
  assert out["conv3"]["__call__"][0].shape == (2, 28, 28, 512)
  assert out["proj_conv"]["__call__"][0].shape == (2, 28, 28, 512)
  # Blocks that keep the shape have no projection.
  assert "proj_conv" not in variables["params"]["stage2_block2"]


def test_wide_resnet_widths_and_preactivation_layout():
  _, variables, _ = abstract("wrn28_10", CIFAR)
  params = variables["params"]
  blocks = sorted(k for k in params if k.startswith("stage"))
  assert len(blocks) == 12  # (28 - 4) / 6 = 4 blocks in each of 3 stages.
  assert params["stem_conv"]["kernel"].shape == (3, 3, 3, 16)
  assert "stem_bn" not in params and params["final_bn"]["scale"].shape == (640,)
  first = params["stage1_block1"]
  assert first["bn1"]["scale"].shape == (16,)  # BN-ReLU before the first conv (pre-activation).
  assert first["conv1"]["kernel"].shape == (3, 3, 16, 160)
  assert first["proj_conv"]["kernel"].shape == (1, 1, 16, 160) and "proj_bn" not in first
  assert params["stage3_block4"]["conv2"]["kernel"].shape == (3, 3, 640, 640)


def test_option_a_shortcuts_have_no_parameters():
  params = abstract("resnet20", CIFAR)[1]["params"]
  assert not any("proj" in k for block in params.values() for k in block)


# ---------------------------------------------------------------------------------------------------
# Numerics on small inputs. Each test compiles its whole computation once: op-by-op (eager) execution
# compiles every primitive separately, which costs more than the model here.


def test_stem_pads_like_torchvision():
  # A 7x7/2 conv with padding 3 on each side: SAME would pad (2, 3) at even sizes.
  model = ResNet(stage_sizes=(1,), width=4, num_classes=3)

  def run(x):
    variables = model.init(rbg_key(), x)
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    return variables["params"]["stem_conv"]["kernel"], state["intermediates"]["stem_conv"]["__call__"][0]

  x = normal(1, 16, 16, 2)
  kernel, stem = jax.jit(run)(x)
  expected = jax.lax.conv_general_dilated(
    x, kernel, (2, 2), [(3, 3), (3, 3)], dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_allclose(stem, expected, atol=1e-5)


@pytest.mark.parametrize(
  "kw,in_features,strides,expected",
  [
    # Post-activation, identity shortcut: relu(x + 0).
    (dict(features=8), 8, 1, lambda x: jax.nn.relu(x)),
    (dict(features=2, block="bottleneck"), 8, 1, lambda x: jax.nn.relu(x)),
    # Option A at a widening: the strided input padded with zero channels.
    (
      dict(features=12, shortcut="zero_pad"),
      8,
      2,
      lambda x: jax.nn.relu(jnp.pad(x[:, ::2, ::2], [(0, 0)] * 3 + [(0, 4)])),
    ),
    # Pre-activation: the block is exactly its shortcut.
    (dict(features=8, preact=True), 8, 1, lambda x: x),
  ],
  ids=["basic", "bottleneck", "option-a", "preact"],
)
def test_zero_init_makes_a_fresh_block_its_shortcut(kw, in_features, strides, expected):
  zeroed, plain = (ResidualBlock(strides=strides, zero_init=z, **kw) for z in (True, False))

  def run(x):
    outputs = []
    for block in (zeroed, plain):
      variables = block.init(rbg_key(), x)
      for train in (False, True):
        outputs.append(block.apply(variables, x, train=train, mutable=["batch_stats"])[0])
    return outputs

  x = normal(2, 6, 6, in_features)
  zero_eval, zero_train, plain_eval, _ = jax.jit(run)(x)
  np.testing.assert_allclose(zero_eval, expected(x), atol=1e-6)
  np.testing.assert_allclose(zero_train, expected(x), atol=1e-6)
  assert not np.allclose(plain_eval, expected(x), atol=1e-3)  # Without zero-init the branch adds to it.


def test_zero_init_residual_zeroes_the_last_bn_of_every_branch():
  model = ResNet(stage_sizes=(1, 1), width=4, stem="cifar", zero_init_residual=True)
  params = jax.jit(model.init)(rbg_key(), jnp.zeros((1, 4, 4, 1)))["params"]
  for i in (1, 2):
    block = params[f"stage{i}_block1"]
    assert not np.any(block["bn2"]["scale"]) and np.all(block["bn1"]["scale"] == 1)
  np.testing.assert_array_equal(params["stage2_block1"]["proj_bn"]["scale"], 1)  # The shortcut's is not.
  assert create_model("resnet50").zero_init_residual  # On by default for the ImageNet recipes.
  assert not create_model("resnet_tiny").zero_init_residual


def test_one_dimensional_resnet_on_sequences():
  model = create_model("resnet1d_tiny", num_classes=5)

  def run(x):
    variables = model.init(rbg_key(), x)
    return variables["params"]["stem_conv"]["kernel"], model.apply(variables, x)

  kernel, logits = jax.jit(run)(normal(3, 100, 2))
  assert kernel.shape == (7, 2, 16)
  assert logits.shape == (3, 5) and logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def test_dropout_and_drop_path_act_only_in_training():
  kw = dict(stage_sizes=(1, 1), width=4, stem="cifar", zero_init_residual=False)  # Zeroed branches hide both.
  model = ResNet(dropout=0.3, drop_path=0.5, **kw)
  plain = ResNet(**kw)  # The same parameters: in eval mode, the same function.

  def run(x):
    variables = model.init(rbg_key(), x)
    train = [
      model.apply(variables, x, train=True, rngs={"dropout": rbg_key(s)}, mutable=["batch_stats"])[0]
      for s in (0, 1)
    ]
    return model.apply(variables, x), plain.apply(variables, x), *train

  evaluated, expected, a, b = jax.jit(run)(normal(4, 8, 8, 1))
  np.testing.assert_allclose(evaluated, expected, atol=1e-6)
  assert not np.allclose(a, b)


@pytest.mark.parametrize(
  "kw,match",
  [
    (dict(block="bottle"), "block"),
    (dict(stem="mnist"), "stem"),
    (dict(shortcut="identity"), "shortcut"),
    (dict(stage_sizes=()), "stage_sizes"),
    (dict(stage_sizes=(2, 0)), "stage_sizes"),
    (dict(dropout=1.0), "dropout"),
    (dict(width=0), "width"),
  ],
)
def test_bad_fields_are_zoo_errors(kw, match):
  with pytest.raises(ZooError, match=match):
    create_model("resnet18", **kw)
  with pytest.raises(ZooError, match=match):
    ResNet(**kw)


def test_bad_inputs_are_zoo_errors():
  def build(model, shape):
    return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))

  with pytest.raises(ZooError, match=r"\(B, L, C\)"):
    build(create_model("resnet_tiny"), (2, 28))
  # Option A cannot narrow: a stem wider than the first stage.
  with pytest.raises(ZooError, match="zero_pad"):
    build(create_model("resnet20", stem_width=32), (1, 8, 8, 3))


# ---------------------------------------------------------------------------------------------------
# Training.


def test_resnet_tiny_trains_with_the_zoo_trainer(tiny_config, tmp_path):
  config = tiny_config(epochs=1, model__name="resnet_tiny", model__kwargs={})
  config.data.kwargs = {"n_train": 128, "n_test": 32, "image_size": 8}
  config.optimizer.learning_rate = 3e-3
  config.log_every_steps = 1
  result = train_and_evaluate(config, tmp_path, progress=False)
  assert result["step"] == 128 // 32
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in records if r["split"] == "train"]
  assert len(losses) == 4 and losses[-1] < losses[0]


def test_preactivation_resnet_trains():
  model = ResNet(stage_sizes=(1, 1), width=8, stem="cifar", preact=True, num_classes=4)
  y = np.arange(32) % 4
  x = normal(4, 8, 8, 3, seed=1)[y] + 0.5 * normal(32, 8, 8, 3, seed=2)  # Class templates plus noise.
  tx = optax.adam(1e-2)

  def train(x, y):
    variables = model.init(rbg_key(), x)

    def step(carry, _):
      params, stats, opt_state = carry

      def loss_fn(p):
        logits, updates = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updates["batch_stats"]

      (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), stats, opt_state), loss

    params = variables["params"]
    carry = (params, variables["batch_stats"], tx.init(params))
    return jax.lax.scan(step, carry, None, length=8)[1]

  losses = jax.jit(train)(x, y)
  assert bool(jnp.all(jnp.isfinite(losses))) and losses[-1] < 0.5 * losses[0], losses
