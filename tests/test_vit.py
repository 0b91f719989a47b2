"""Tests of the Vision Transformer family: published sizes, shapes, attention, pooling, stochastic depth."""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.models import create_model
from zoo.models.vit import POOLS, SelfAttention, drop_path_rates
from zoo.registry import ZooError
from zoo.train import train_and_evaluate

# timm's vit_*_patch{16,32}_224 (1000 classes, 224x224x3), checked against the closed form below.
PUBLISHED = {
  "vit_ti16": 5_717_416,
  "vit_s16": 22_050_664,
  "vit_b16": 86_567_656,
  "vit_b32": 88_224_232,
  "vit_l16": 304_326_632,
  "vit_s32": 22_878_952,
  "vit_l32": 306_535_400,
}


def _formula(patch: int, width: int, depth: int, mlp: int, classes: int = 1000, size: int = 224) -> int:
  tokens = (size // patch) ** 2 + 1  # Patches and the CLS token.
  embedding = patch * patch * 3 * width + width + width + tokens * width  # Patch conv, CLS, positions.
  block = 4 * width + (4 * width * width + 4 * width) + (2 * width * mlp + mlp + width)  # 2 LNs, MHSA, MLP.
  return embedding + depth * block + 2 * width + (width + 1) * classes  # Final LN, head.


def param_shapes(model, shape: tuple[int, ...]) -> dict:
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  return jax.eval_shape(lambda x: model.init(rngs, x), x)["params"]  # Shapes only: nothing is allocated.


def count(model, shape: tuple[int, ...]) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(param_shapes(model, shape)))


@functools.partial(jax.jit, static_argnums=0)
def init(model, x: jax.Array) -> dict:
  return model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x)


@functools.partial(jax.jit, static_argnums=0, static_argnames="train")
def apply(model, variables: dict, x: jax.Array, *, train: bool = False, seed: int = 0) -> jax.Array:
  return model.apply(variables, x, train=train, rngs={"dropout": jax.random.key(seed)})


@pytest.fixture(scope="module")
def tiny():
  """A 2-block vit_tiny_p7, a 28x28x1 batch and its variables, shared (modules and arrays are immutable)."""
  model = create_model("vit_tiny_p7", depth=2)
  x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
  return model, x, init(model, x)


@pytest.mark.parametrize("name,published", sorted(PUBLISHED.items()))
def test_published_parameter_counts(name, published):
  assert count(create_model(name, num_classes=1000), (224, 224, 3)) == published


def test_the_published_counts_follow_from_the_dimensions():
  # An independent check of the pinned numbers (ViT-B/16 by hand: 590,592 + 768 + 151,296 + 12 x 7,087,872
  # + 1,536 + 769,000).
  dims = {"ti": (192, 12, 768), "s": (384, 12, 1536), "b": (768, 12, 3072), "l": (1024, 24, 4096)}
  for name, published in PUBLISHED.items():
    size, patch = name[4:-2], int(name[-2:])
    assert _formula(patch, *dims[size]) == published, name


@pytest.mark.parametrize("name", ["vit_tiny_p7", "vit_hybrid_tiny"])
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_small_variants_give_logits_at_28_and_32_pixels(name, shape):
  # Shapes through eval_shape; tests/test_models.py runs them for real at their registered shapes.
  model = create_model(name, num_classes=7)
  x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
  variables = jax.eval_shape(init, model, x)
  for train in (False, True):
    logits = jax.eval_shape(functools.partial(apply, model, train=train), variables, x)
    assert logits.shape == (3, 7) and logits.dtype == jnp.float32


@pytest.mark.parametrize(
  "name,shape,tokens",
  [
    ("vit_b16", (224, 224, 3), 14 * 14),
    ("vit_b16", (32, 32, 3), 2 * 2),  # A model registered for 224 px initialises at 32 px.
    ("vit_b32", (224, 224, 3), 7 * 7),
    ("vit_ti_p4", (32, 32, 3), 8 * 8),
    ("vit_ti_p4", (28, 28, 1), 7 * 7),
    ("vit_tiny_p7", (28, 28, 1), 4 * 4),
    ("vit_tiny_p7", (32, 32, 3), 4 * 4),  # The 4 pixels beyond whole patches are dropped.
    ("vit_hybrid_tiny", (32, 32, 3), 8 * 8),  # Two stride-2 stem stages, then 1x1 patches.
    ("vit_hybrid_tiny", (28, 28, 1), 7 * 7),
  ],
)
def test_position_embeddings_are_sized_from_the_input(name, shape, tokens):
  params = param_shapes(create_model(name, depth=1), shape)
  width = params["cls"].shape[-1]
  assert params["pos_embedding"].shape == (1, tokens + 1, width)
  assert params["embedding"]["kernel"].shape[-1] == width


def test_registered_dimensions():
  dims = {
    "ti": (192, 12, 3, 768),
    "s": (384, 12, 6, 1536),
    "b": (768, 12, 12, 3072),
    "l": (1024, 24, 16, 4096),
  }
  for name in PUBLISHED:
    model = create_model(name)
    assert (model.width, model.depth, model.num_heads, model.mlp_dim) == dims[name[4:-2]], name
    assert model.patch_size == int(name[-2:]) and model.pool == "cls", name
  params = param_shapes(create_model("vit_l16", depth=1), (224, 224, 3))
  assert params["embedding"]["kernel"].shape == (16, 16, 3, 1024)
  assert params["block0"]["attention"]["query"]["kernel"].shape == (1024, 16, 64)  # 16 heads of 64.
  assert params["block0"]["attention"]["out"]["kernel"].shape == (16, 64, 1024)
  assert params["block0"]["mlp"]["Dense_0"]["kernel"].shape == (1024, 4096)


def test_mean_pooling_drops_the_cls_token_and_its_position():
  cls, mean = (param_shapes(create_model("vit_s16", depth=1, pool=pool), (224, 224, 3)) for pool in POOLS)
  assert "cls" in cls and "cls" not in mean
  assert mean["pos_embedding"].shape == (1, 196, 384)
  total = lambda p: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(p))
  assert total(cls) - total(mean) == 2 * 384  # The token and its position-embedding row.


def _permute_patches(x: jax.Array, perm: np.ndarray, patch: int) -> jax.Array:
  b, h, w, c = x.shape
  grid = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  grid = grid.reshape(b, -1, patch, patch, c)[:, perm]  # New patch i is old patch perm[i].
  grid = grid.reshape(b, h // patch, w // patch, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return grid.reshape(b, h, w, c)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_only_the_position_embeddings_order_the_patches(tiny, pool):
  # The encoder is permutation-equivariant and both poolings are invariant: permuting the patches and
  # the position embeddings' rows together leaves the logits unchanged; permuting the patches alone does not.
  model = create_model("vit_tiny_p7", depth=2, pool=pool)
  x = tiny[1]
  variables = tiny[2] if model == tiny[0] else init(model, x)
  perm = np.random.default_rng(0).permutation(16)
  assert not np.array_equal(perm, np.arange(16))
  x_perm = _permute_patches(x, perm, 7)
  pos = variables["params"]["pos_embedding"]
  rows = np.concatenate([[0], 1 + perm]) if pool == "cls" else perm  # The CLS row stays first.
  moved = {"params": {**variables["params"], "pos_embedding": pos[:, rows]}}
  expected = apply(model, variables, x)
  np.testing.assert_allclose(apply(model, moved, x_perm), expected, rtol=1e-4, atol=1e-5)
  assert not np.allclose(apply(model, variables, x_perm), expected, rtol=1e-3, atol=1e-4)


def test_attention_equals_a_numpy_reference():
  attention = SelfAttention(num_heads=2)
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  params = jax.jit(attention.init)(jax.random.key(1), x)["params"]
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  xn = np.asarray(x, np.float64)

  def project(name):  # (B, N, H, D/H)
    return np.einsum("bnd,dhk->bnhk", xn, p[name]["kernel"]) + p[name]["bias"]

  q, k, v = project("query"), project("key"), project("value")
  logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(4)  # 2 heads of 4 features.
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  heads = np.einsum("bhqs,bshk->bqhk", weights, v)
  expected = np.einsum("bqhk,hkd->bqd", heads, p["out"]["kernel"]) + p["out"]["bias"]
  actual = jax.jit(attention.apply)({"params": params}, x)
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_drop_path_rates_rise_linearly():
  np.testing.assert_allclose(drop_path_rates(0.1, 5), [0.0, 0.025, 0.05, 0.075, 0.1])
  assert drop_path_rates(0.2, 1) == [0.0]


@pytest.mark.parametrize("rates", [{"drop_path": 0.5}, {"dropout": 0.1}])
def test_stochastic_depth_and_dropout_act_in_training_only(tiny, rates):
  plain, x, variables = tiny
  dropped = create_model("vit_tiny_p7", depth=2, **rates)  # The second block's drop_path rate is 0.5.
  expected = apply(plain, variables, x)
  np.testing.assert_allclose(apply(dropped, variables, x), expected, rtol=1e-6)
  # Without dropout or drop_path, training mode computes the eval function; with them it varies.
  np.testing.assert_allclose(apply(plain, variables, x, train=True), expected, rtol=1e-6)
  a, b = (apply(dropped, variables, x, train=True, seed=seed) for seed in (0, 1))
  assert not np.allclose(a, b)


def test_the_head_is_zero_initialised_on_request(tiny):
  assert np.any(tiny[2]["params"]["head"]["kernel"])
  model = create_model("vit_tiny_p7", depth=1, zero_head=True)
  head = init(model, tiny[1])["params"]["head"]
  assert not np.any(head["kernel"]) and not np.any(head["bias"])


def test_hybrid_embeds_the_stem_feature_map():
  params = param_shapes(create_model("vit_hybrid_tiny", stem_widths=(16,)), (32, 32, 3))
  assert params["pos_embedding"].shape == (1, 16 * 16 + 1, 128)  # One stride-2 stage: 16x16 tokens.
  assert params["embedding"]["kernel"].shape == (1, 1, 16, 128)  # 1x1 patches of the stem's 16 channels.
  assert "stem" in params and params["stem"]["root_norm"]["scale"].shape == (16,)


def test_bad_settings_are_zoo_errors():
  with pytest.raises(ZooError, match="pool"):
    create_model("vit_s16", pool="max")
  with pytest.raises(ZooError, match="num_heads"):
    create_model("vit_s16", num_heads=5)
  with pytest.raises(ZooError, match="drop_path"):
    create_model("vit_s16", drop_path=1.0)
  with pytest.raises(ZooError, match="smaller than one patch"):
    param_shapes(create_model("vit_b16"), (8, 8, 3))
  with pytest.raises(ZooError, match="stem"):
    create_model("vit_hybrid_tiny", stem_widths=())


@pytest.mark.parametrize("name,image_size,channels", [("vit_tiny_p7", 28, 1), ("vit_hybrid_tiny", 32, 3)])
def test_a_few_training_steps_reduce_the_loss(tiny_config, tmp_path, name, image_size, channels):
  config = tiny_config(epochs=2, log_every_steps=2)
  config.model.name = name
  config.model.kwargs = {"depth": 1}  # Fewer blocks to compile; the registered depth is tested elsewhere.
  config.data.kwargs = {"n_train": 128, "n_test": 32, "image_size": image_size, "channels": channels}
  config.optimizer.learning_rate = 1e-3
  train_and_evaluate(config, tmp_path, progress=False)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in records if r["split"] == "train"]
  assert len(losses) >= 3 and losses[-1] < 0.7 * losses[0], losses
