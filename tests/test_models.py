"""Tests of the model registry and every registered model (parametrised over `list_models()`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo.models import (
  ACTIVATIONS,
  CLASSIFIER,
  MODELS,
  create_model,
  get_activation,
  list_models,
  model_input_shape,
  model_spec,
  register_model,
)
from zoo.models import example_input as registered_example
from zoo.models.layers import avg_pool, max_pool
from zoo.registry import UnknownNameError, ZooError

# Extra override sets, so that optional paths (BatchNorm, dropout, max-pool) are tested too.
EXTRA_CASES = [
  ("mlp", {"hidden_sizes": (16, 8), "batch_norm": True, "dropout": 0.1, "activation": "selu"}),
  ("mnist_cnn", {"dropout": 0.5}),
  ("lenet5", {"pool": "max", "activation": "relu"}),
]
# Models above this many parameters (at their registered input shape) are checked abstractly only
# (shapes, dtypes, via jax.eval_shape); each family registers a small variant that runs every test.
LARGE = 3_000_000
PINNED_PARAMS = {"mnist_cnn": 693_962, "lenet5": 61_706}
NUM_CLASSES = 7  # Not the default 10, so that the trainer's override is seen to work.


def example_input(name: str, seed: int = 0):
  return registered_example(name, 2, jax.random.key(seed))


def is_classifier(name: str) -> bool:
  return model_spec(name).kind == CLASSIFIER


def build(name: str, **kw) -> nn.Module:
  """The model with NUM_CLASSES outputs if it is a classifier."""
  return create_model(name, **({"num_classes": NUM_CLASSES} if is_classifier(name) else {}), **kw)


def float_leaves(tree) -> list:
  return [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)]


def output_energy(outputs) -> jax.Array:
  """A scalar of any model's outputs that reaches every float output (for models that are not classifiers)."""
  return sum(jnp.mean(jnp.square(leaf.astype(jnp.float32))) for leaf in float_leaves(outputs))


def first_example(tree):
  return jax.tree.map(lambda a: a[:1], tree)


def init(model: nn.Module, x: jax.Array) -> dict:
  return model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x)


def jit_init(model: nn.Module, x: jax.Array) -> dict:
  return jax.jit(init, static_argnums=0)(model, x)  # Compiled: much faster than op-by-op for the CNNs.


def count_params(model: nn.Module, x: jax.Array) -> int:
  shapes = jax.eval_shape(lambda x: init(model, x), x)["params"]  # Shapes only: nothing is allocated.
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


def _size(name: str) -> int:
  x = jax.eval_shape(lambda: example_input(name))  # Abstract: the example is not computed.
  return count_params(create_model(name), x)


SIZES = {name: _size(name) for name in list_models()}
# Compiling deep models costs seconds each, so the full tests run on each family's smallest variant
# (at inputs of at most 64x64x3 values) and on the models named here; the rest are checked abstractly.
ALWAYS_FULL = {"mlp", "mnist_cnn", "lenet5", "bn_cnn"}


def _full_tests(names: list[str]) -> list[str]:
  fits = [n for n in names if SIZES[n] <= LARGE and np.prod(model_input_shape(n)) <= 64 * 64 * 3]
  smallest: dict[str, str] = {}
  for n in sorted(fits, key=lambda n: SIZES[n]):
    smallest.setdefault(MODELS.get(n).__module__, n)
  return sorted(set(smallest.values()) | (ALWAYS_FULL & set(names)))


SMALL = _full_tests(list_models())
CASES = [(name, {}) for name in SMALL] + EXTRA_CASES
IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in CASES]


@pytest.mark.parametrize("name", [name for name in list_models() if name not in SMALL])
def test_large_models_abstractly(name):
  model = build(name)
  x = jax.eval_shape(lambda: example_input(name))
  variables = jax.eval_shape(lambda x: init(model, x), x)
  for train in (False, True):
    out = jax.eval_shape(
      lambda v, x, train=train: model.apply(
        v, x, train=train, rngs={"dropout": jax.random.key(0)}, mutable=True
      ),
      variables,
      x,
    )[0]
    if is_classifier(name):
      assert out.shape == (2, NUM_CLASSES) and out.dtype == jnp.float32
    assert {leaf.dtype for leaf in float_leaves(out)} == {jnp.dtype(jnp.float32)}


def test_every_family_has_a_small_variant():
  families = {MODELS.get(name).__module__ for name in list_models()}
  small = {MODELS.get(name).__module__ for name in SMALL if SIZES[name] <= LARGE}
  assert families == small, f"families without a small variant (<= {LARGE:,} parameters): {families - small}"


# EfficientNet's full tests take ~60 s here (its eager applies dispatch every depthwise slice op by op); its
# config smoke tests and tests/test_efficientnet.py cover it in the default suite, `-m benchmark` adds these.
# The hybrid ViT (~18 s) and RegNet (~14 s) likewise: tests/test_vit.py and tests/test_regnet.py train them.
SLOW_CASES = {"efficientnet_tiny", "vit_hybrid_tiny", "regnet_tiny"}
PARAMS = [
  pytest.param(case, marks=pytest.mark.benchmark) if case[0] in SLOW_CASES and not case[1] else case
  for case in CASES
]


@pytest.fixture(scope="module", params=PARAMS, ids=IDS)  # Modules and variables are immutable.
def case(request):
  name, kw = request.param
  model = build(name, **kw)
  x = example_input(name)
  return model, x, jit_init(model, x), model_spec(name)


def test_forward_shape_dtype_finite(case):
  model, x, variables, spec = case
  assert set(variables) <= {"params", "batch_stats"}
  outputs = model.apply(variables, x)
  if spec.kind == CLASSIFIER:
    assert outputs.shape == (len(x), NUM_CLASSES)
  leaves = float_leaves(outputs)
  assert leaves and {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)


def test_every_parameter_gets_a_gradient_and_a_few_steps_fit_the_batch(case):
  model, x, variables, spec = case
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  batch_size = len(jax.tree.leaves(x)[0])
  labels = jnp.arange(batch_size) % NUM_CLASSES
  tx = optax.adam(3e-3)

  def objective(outputs):
    if spec.kind == CLASSIFIER:
      return optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()
    return output_energy(outputs)

  @jax.jit
  def step(params, state, opt_state, i):
    def loss(p):
      outputs, new_state = model.apply(
        {"params": p, **state}, x, train=True, rngs={"dropout": jax.random.key(i)}, mutable=["batch_stats"]
      )
      return objective(outputs), new_state

    (value, new_state), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), {**state, **new_state}, opt_state, value, grads

  opt_state = tx.init(params)
  losses = []
  for i in range(8):
    params, state, opt_state, value, grads = step(params, state, opt_state, i)
    losses.append(float(value))
    if i == 0:
      for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert bool(jnp.all(jnp.isfinite(g))), jax.tree_util.keystr(path)
        assert bool(jnp.any(g != 0)), f"no gradient reaches {jax.tree_util.keystr(path)}"
  # The minimum of the last few: with dropout on a 2-example batch single losses jump about.
  assert np.isfinite(losses).all() and min(losses[-4:]) < losses[0], losses


def test_jit_equals_no_jit(case):
  model, x, variables, _ = case
  eager = model.apply(variables, x)
  compiled = jax.jit(model.apply)(variables, x)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  jax.tree.map(close, compiled, eager)


def test_eval_mode_is_per_example(case):
  # In eval mode BatchNorm uses running statistics, so an example's outputs do not depend on its batch.
  model, x, variables, spec = case
  if not spec.per_example:
    pytest.skip("the batch is one example (e.g. a graph)")
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  jax.tree.map(close, model.apply(variables, first_example(x)), first_example(model.apply(variables, x)))


def test_batch_stats_move_in_train_mode_only(case):
  model, x, variables, _ = case
  if "batch_stats" not in variables:
    _, updates = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=True)
    assert set(updates) == {"params"}  # Writes no other collection.
    return
  old = variables["batch_stats"]
  _, eval_updates = model.apply(variables, x, train=False, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, eval_updates["batch_stats"], old)
  _, train_updates = model.apply(
    variables, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]
  )
  # Every BatchNorm layer's statistics move (one of them may not: after a bias-free linear map of
  # normalised features, as in EfficientNet, the batch mean is exactly 0 and the running mean stays).
  moved: dict[str, bool] = {}
  new_leaves = jax.tree_util.tree_leaves_with_path(train_updates["batch_stats"])
  for (path, new_leaf), old_leaf in zip(new_leaves, jax.tree.leaves(old), strict=True):
    layer = jax.tree_util.keystr(path[:-1])
    moved[layer] = moved.get(layer, False) or not np.allclose(new_leaf, old_leaf)
  assert all(moved.values()), [layer for layer, m in moved.items() if not m]


def test_dropout_only_in_train_mode(case):
  model, x, variables, _ = case
  if getattr(model, "dropout", 0.0) == 0.0:
    pytest.skip("no dropout")
  jax.tree.map(np.testing.assert_array_equal, model.apply(variables, x), model.apply(variables, x))
  a, b = (
    model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(s)}, mutable=["batch_stats"])[0]
    for s in (0, 1)
  )
  assert not all(np.allclose(u, v) for u, v in zip(float_leaves(a), float_leaves(b), strict=True))


@pytest.mark.parametrize("name", list_models())
def test_reduced_precision_compute_keeps_float32_params_and_logits(name):
  model = create_model(name, dtype=jnp.bfloat16)
  x = example_input(name)
  variables = jax.eval_shape(lambda: init(model, x))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  outputs = jax.eval_shape(model.apply, variables, x)
  assert {leaf.dtype for leaf in float_leaves(outputs)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name,count", sorted(PINNED_PARAMS.items()))
def test_pinned_parameter_counts(name, count):
  assert count_params(create_model(name), example_input(name)) == count
  if name == "mnist_cnn":  # Dropout adds no parameters.
    assert count_params(create_model(name, dropout=0.5), example_input(name)) == count
  if name == "lenet5":  # 28x28 inputs are padded to the paper's 32x32; 32x32 inputs are not.
    assert count_params(create_model(name), jnp.zeros((2, 32, 32, 1))) == count


# ---------------------------------------------------------------------------------------------------
# The registry and create_model's checks.


def test_registry_lists_the_first_models():
  assert {"mlp", "mnist_cnn", "lenet5", "bn_cnn"} <= set(list_models())
  assert "mnist_cnn" in list_models("mnist*") and all(n.startswith("mnist") for n in list_models("mnist*"))
  cnns = list_models("cnn")  # A bare word matches as a substring.
  assert {"bn_cnn", "mnist_cnn"} <= set(cnns) and all("cnn" in n for n in cnns)


def test_unknown_model_suggests_close_names():
  with pytest.raises(UnknownNameError, match=r"unknown model 'mpl'; did you mean: mlp"):
    create_model("mpl")


def test_unknown_field_names_it_and_suggests():
  with pytest.raises(ZooError, match=r"model 'mlp' has no field 'hiden_sizes'; did you mean: hidden_sizes\?"):
    create_model("mlp", hiden_sizes=(10,))


@pytest.mark.parametrize(
  "key,value",
  [
    ("hidden_sizes", "abc"),
    ("dropout", "high"),
    ("batch_norm", 1),
    ("num_classes", 2.5),
    ("hidden_sizes", (1.5,)),
  ],
)
def test_wrong_type_is_a_zoo_error(key, value):
  with pytest.raises(ZooError, match=key):
    create_model("mlp", **{key: value})


def test_overrides_are_converted():
  model = create_model("mlp", hidden_sizes=[8, 4], dropout=0)
  assert model.hidden_sizes == (8, 4) and isinstance(model.dropout, float)


def test_bad_choices_fail_when_the_model_is_built():
  with pytest.raises(UnknownNameError, match="relu"):
    create_model("mlp", activation="rleu")
  with pytest.raises(UnknownNameError, match="tanh"):
    create_model("lenet5", activation="tahn")
  with pytest.raises(ZooError, match="pool"):
    create_model("lenet5", pool="min")


def test_duplicate_registration_raises():
  def mlp(**kw):  # Same name as the registered MLP.
    raise AssertionError("never called")

  with pytest.raises(ValueError, match="already registered"):
    register_model(mlp)
  assert MODELS.get("mlp") is not mlp


# ---------------------------------------------------------------------------------------------------
# Layers.

ACTIVATION_NAMES = [
  "relu",
  "leaky_relu",
  "elu",
  "selu",
  "gelu",
  "swish",
  "silu",
  "mish",
  "tanh",
  "sigmoid",
  "linear",
]


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activations_are_registered_and_finite(name):
  assert name in ACTIVATIONS
  x = jnp.linspace(-30.0, 30.0, 101)
  y = get_activation(name)(x)
  assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
  assert bool(jnp.all(jnp.isfinite(jax.vmap(jax.grad(get_activation(name)))(x))))


def test_activation_values():
  x = jnp.array([-2.0, -1.0, 0.5, 3.0])
  np.testing.assert_allclose(get_activation("leaky_relu")(x), [-0.02, -0.01, 0.5, 3.0], rtol=1e-6)
  np.testing.assert_allclose(get_activation("linear")(x), x)
  np.testing.assert_allclose(get_activation("swish")(x), x * jax.nn.sigmoid(x), rtol=1e-6)
  tanh_gelu = 0.5 * x * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
  np.testing.assert_allclose(get_activation("gelu")(x), tanh_gelu, rtol=1e-6)
  np.testing.assert_allclose(get_activation("mish")(x), x * jnp.tanh(jax.nn.softplus(x)), rtol=1e-6)
  with pytest.raises(UnknownNameError, match="did you mean: selu"):
    get_activation("selo")


@pytest.mark.parametrize(
  "activation,variance",
  [("relu", lambda i, o: 2 / i), ("selu", lambda i, o: 1 / i), ("tanh", lambda i, o: 2 / (i + o))],
)
def test_initialisation_matches_the_activation(activation, variance):
  model = create_model("mlp", hidden_sizes=(256,), activation=activation)
  kernel = jit_init(model, jnp.zeros((1, 784)))["params"]["Dense_0"]["kernel"]
  np.testing.assert_allclose(jnp.var(kernel), variance(784, 256), rtol=0.05)


@pytest.mark.parametrize(
  "shape,window", [((2, 8, 8, 3), 2), ((3, 7, 9, 2), 2), ((1, 11, 10, 4), 3), ((4, 5, 1), 2)]
)
def test_pools_equal_flax_valid_pools(shape, window):
  x = jax.random.normal(jax.random.key(0), shape)
  w = (window, window)
  np.testing.assert_allclose(max_pool(x, window), nn.max_pool(x, w, strides=w, padding="VALID"))
  np.testing.assert_allclose(avg_pool(x, window), nn.avg_pool(x, w, strides=w, padding="VALID"), atol=1e-6)
  # Without ties (random floats), the max's gradient picks the same element.
  cot = jax.random.normal(jax.random.key(1), max_pool(x, window).shape)
  grad_ours = jax.grad(lambda x: jnp.sum(max_pool(x, window) * cot))(x)
  grad_flax = jax.grad(lambda x: jnp.sum(nn.max_pool(x, w, strides=w, padding="VALID") * cot))(x)
  np.testing.assert_allclose(grad_ours, grad_flax)
