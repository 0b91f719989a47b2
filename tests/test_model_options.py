"""The models' normalisation and dropout choices (`norm`, `dropout_kind`), as chosen in `model.kwargs`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo.config import Config, get_config
from zoo.models import create_model
from zoo.models.layers import max_pool
from zoo.models.mlp import MLP
from zoo.models.regularized_layers import ALPHA_PRIME, resolve_num_groups
from zoo.registry import ZooError
from zoo.train import train_and_evaluate
from zoo.train.steps import apply_model

NORMS = ["none", "batch", "layer", "group", "weight", "spectral"]
DROPOUT_KINDS = ["standard", "alpha", "dropconnect"]
# The hidden layers' module, by norm (and by dropout kind where the norm leaves the Dense alone).
HIDDEN_MODULE = {"weight": "WeightNormDense", "spectral": "SpectralNormDense"}
NORM_MODULE = {"batch": "BatchNorm", "layer": "LayerNorm", "group": "GroupNorm"}
STATE = {"batch": {"batch_stats"}, "spectral": {"spectral"}}  # Non-parameter collections, by norm.


def init(model: nn.Module, x: jax.Array) -> dict:
  return jax.jit(lambda: model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x))()


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def layer_output(model, variables, x, layer: str, *, train: bool = False, seed: int = 0) -> np.ndarray:
  """What submodule `layer` (e.g. 'WeightNormDense_0') returns when the model runs on x."""
  mutable = ["intermediates", *(k for k in variables if k != "params" and train)]
  _, state = model.apply(
    variables,
    x,
    train=train,
    rngs={"dropout": jax.random.key(seed)},
    capture_intermediates=True,
    mutable=mutable,
  )
  return np.asarray(state["intermediates"][layer]["__call__"][0])


def effective_kernel(model, variables, n_in: int, layer: str, **kw) -> np.ndarray:
  """The kernel a hidden layer applies: its output on the identity, minus its output on 0 (the bias)."""
  return layer_output(model, variables, jnp.eye(n_in), layer, **kw) - layer_output(
    model, variables, jnp.zeros((1, n_in)), layer, **kw
  )


# ---------------------------------------------------------------------------------------------------
# Every MLP choice builds, trains with the trainer's apply_model, evaluates with nothing mutable.


def _mlp_run(norm: str, kind: str, train_steps: int):
  """Builds the MLP with these choices and, in one compiled call (compiling is what costs here): inits
  it, takes gradients in training mode, trains `train_steps` Adam steps through the trainer's
  `apply_model`, evaluates. Labels are a function of the inputs, so the net can learn them."""
  model = create_model(
    "mlp", hidden_sizes=(16, 8), norm=norm, dropout_kind=kind, dropout=0.2, activation="selu", num_classes=3
  )
  x = jax.random.normal(jax.random.key(0), (32, 12))
  y = jnp.argmax(x[:, :3], axis=1)
  tx = optax.adam(2e-2)

  def loss_fn(p, state, rng):
    logits, new_state = apply_model(model, {"params": p, **state}, x, train=True, rngs=rng)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), dict(new_state)

  def eval_logits(p, state, x):
    logits, new_state = apply_model(model, {"params": p, **state}, x, train=False)
    assert new_state == {}  # Nothing is mutable in evaluation.
    return logits

  def step(carry, rng):
    p, opt_state, state = carry
    (_, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, state, rng)
    updates, opt_state = tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state, new_state), grads

  @jax.jit
  def run():
    variables = model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x)
    params, state = variables.pop("params"), variables
    rngs = jax.random.split(jax.random.key(3), max(train_steps, 1))
    if train_steps:
      (p, _, new_state), grads = jax.lax.scan(step, (params, tx.init(params), state), rngs)
      first_grads = jax.tree.map(lambda g: g[0], grads)
    else:
      (p, _, new_state), first_grads = step((params, tx.init(params), state), rngs[0])
    loss = lambda q, s: optax.softmax_cross_entropy_with_integer_labels(eval_logits(q, s, x), y).mean()
    outs = (eval_logits(p, new_state, x), eval_logits(p, new_state, x), eval_logits(p, new_state, x[:3]))
    return params, state, new_state, first_grads, (loss(params, state), loss(p, new_state)), outs

  return run()


@pytest.mark.parametrize("kind", DROPOUT_KINDS)
@pytest.mark.parametrize("norm", NORMS)
def test_mlp_choice_builds_takes_gradients_and_evaluates(norm, kind):
  params, state, new_state, grads, _, (out, again, part) = _mlp_run(norm, kind, train_steps=0)
  assert set(state) == STATE.get(norm, set())
  hidden = HIDDEN_MODULE.get(norm, "DropConnectDense" if kind == "dropconnect" else "Dense")
  assert {f"{hidden}_0", f"{hidden}_1"} <= set(params)
  norms = {k for k in params if k.startswith(tuple(NORM_MODULE.values()))}
  assert norms == ({f"{NORM_MODULE[norm]}_0", f"{NORM_MODULE[norm]}_1"} if norm in NORM_MODULE else set())
  dense = {k for k in params if k.startswith("Dense_")}  # The output layer is always a plain Dense.
  assert dense == ({"Dense_0", "Dense_1", "Dense_2"} if hidden == "Dense" else {"Dense_0"})
  if hidden in ("Dense", "DropConnectDense"):
    assert ("bias" in params[f"{hidden}_0"]) == (norm != "batch")  # BatchNorm's offset replaces the bias.

  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert bool(jnp.all(jnp.isfinite(g))) and bool(jnp.any(g != 0)), jax.tree_util.keystr(path)
  assert set(new_state) == set(state)
  # Running statistics and power-iteration vectors move in training. (Not always sigma in one step: flax
  # draws u from the same key as the kernel, which can make the first estimate of sigma exactly 1.)
  new_leaves = dict(jax.tree_util.tree_leaves_with_path(new_state))
  for path, old in jax.tree_util.tree_leaves_with_path(state):
    if not jax.tree_util.keystr(path).endswith("sigma']"):
      assert not np.allclose(old, new_leaves[path]), jax.tree_util.keystr(path)
  # Evaluation is deterministic and per example, whatever the dropout kind.
  np.testing.assert_array_equal(out, again)
  np.testing.assert_allclose(part, out[:3], rtol=1e-5, atol=1e-5)


# Each norm trains, with each dropout kind twice.
@pytest.mark.parametrize("norm,kind", zip(NORMS, DROPOUT_KINDS * 2, strict=True))
def test_mlp_choice_learns(norm, kind):
  *_, (before, after), _ = _mlp_run(norm, kind, train_steps=30)
  assert float(after) < 0.8 * float(before)


# ---------------------------------------------------------------------------------------------------
# Weight and spectral norm in the MLP.


def test_mlp_weight_norm_kernel_has_column_norms_g():
  model = create_model("mlp", hidden_sizes=(6,), norm="weight", activation="tanh")
  variables = init(model, jnp.zeros((1, 5)))
  layer = variables["params"]["WeightNormDense_0"]
  assert set(layer) == {"Dense_0", "WeightNorm_0"}
  assert set(layer["WeightNorm_0"]) == {"Dense_0/kernel/scale"}  # g: one gain per unit, for the kernel only.
  g = jnp.arange(1.0, 7.0)  # Distinct gains, so that "norm == g" is not "norm == 1".
  layer["WeightNorm_0"]["Dense_0/kernel/scale"] = g
  layer["Dense_0"]["kernel"] = 3.0 * layer["Dense_0"]["kernel"]  # v's scale must not matter.
  w = effective_kernel(model, variables, 5, "WeightNormDense_0")
  np.testing.assert_allclose(np.linalg.norm(w, axis=0), g, rtol=1e-5)
  v = np.asarray(layer["Dense_0"]["kernel"])
  np.testing.assert_allclose(w, np.asarray(g) * v / np.linalg.norm(v, axis=0), rtol=1e-5, atol=1e-6)


def test_mlp_spectral_norm_power_iteration_runs_in_training_only():
  model = create_model("mlp", hidden_sizes=(7,), norm="spectral")
  x = jax.random.normal(jax.random.key(0), (4, 9))
  variables = init(model, x)
  kernel = 3.0 * variables["params"]["SpectralNormDense_0"]["Dense_0"]["kernel"]
  variables["params"]["SpectralNormDense_0"]["Dense_0"]["kernel"] = kernel
  params, state = variables.pop("params"), variables
  assert jax.tree.map(jnp.shape, state) == {
    "spectral": {
      "SpectralNormDense_0": {"SpectralNorm_0": {"Dense_0/kernel/u": (1, 7), "Dense_0/kernel/sigma": ()}}
    }
  }

  train = jax.jit(lambda s, rng: apply_model(model, {"params": params, **s}, x, train=True, rngs=rng)[1])
  for i in range(30):  # One power iteration per training step.
    state = train(state, jax.random.key(i))
  w = effective_kernel(model, {"params": params, **state}, 9, "SpectralNormDense_0")
  top = np.linalg.svd(np.asarray(kernel), compute_uv=False)[0]
  np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False)[0], 1.0, rtol=1e-3)
  np.testing.assert_allclose(w * top, kernel, rtol=1e-3, atol=1e-5)
  sigma = state["spectral"]["SpectralNormDense_0"]["SpectralNorm_0"]["Dense_0/kernel/sigma"]
  np.testing.assert_allclose(sigma, top, rtol=1e-3)

  # Evaluation writes nothing, even where the collection is mutable, and repeats itself exactly.
  out, unchanged = model.apply({"params": params, **state}, x, mutable=["spectral"])
  jax.tree.map(np.testing.assert_array_equal, unchanged, state)
  np.testing.assert_array_equal(apply_model(model, {"params": params, **state}, x, train=False)[0], out)


# ---------------------------------------------------------------------------------------------------
# Alpha dropout and DropConnect in the MLP.


def test_mlp_alpha_dropout_keeps_a_selu_net_standardised_in_training():
  model = create_model("mlp", hidden_sizes=(256, 256), activation="selu", dropout=0.2, dropout_kind="alpha")
  x = jax.random.normal(jax.random.key(0), (2048, 64))
  variables = init(model, x)
  train_out = layer_output(model, variables, x, "AlphaDropout_1", train=True)
  assert abs(train_out.mean()) < 0.1 and abs(train_out.var() - 1.0) < 0.1
  a = ((1 - 0.2) * (1 + 0.2 * ALPHA_PRIME**2)) ** -0.5
  dropped = np.isclose(train_out, a * ALPHA_PRIME * (1 - 0.2), rtol=1e-5)  # a * alpha' + b
  assert abs(dropped.mean() - 0.2) < 0.01
  # Plain dropout at the same rate inflates the variance by about 1/(1 - rate): what alpha dropout avoids.
  standard = create_model("mlp", hidden_sizes=(256, 256), activation="selu", dropout=0.2)
  assert layer_output(standard, variables, x, "Dropout_1", train=True).var() > 1.15

  # In evaluation alpha dropout is the identity: the same logits as without dropout.
  no_dropout = create_model("mlp", hidden_sizes=(256, 256), activation="selu")
  np.testing.assert_array_equal(model.apply(variables, x[:8]), no_dropout.apply(variables, x[:8]))


@pytest.mark.parametrize("norm", ["none", "batch", "weight", "spectral"])
def test_mlp_dropconnect_drops_weights_in_training_only(norm):
  model = create_model("mlp", hidden_sizes=(32,), norm=norm, dropout=0.5, dropout_kind="dropconnect")
  variables = init(model, jnp.zeros((2, 16)))
  layer = f"{HIDDEN_MODULE.get(norm, 'DropConnectDense')}_0"
  kernel = effective_kernel(model, variables, 16, layer)
  assert not np.any(kernel == 0)
  np.testing.assert_array_equal(kernel, effective_kernel(model, variables, 16, layer))  # Eval: no noise.
  if norm == "none":  # Eval applies the stored kernel itself.
    np.testing.assert_allclose(kernel, variables["params"][layer]["kernel"], rtol=1e-6, atol=1e-6)
  # Training drops kernel entries independently (not whole units) and scales the kept ones by 1/(1 - rate).
  dropped = effective_kernel(model, variables, 16, layer, train=True, seed=1)
  ratio = dropped / kernel
  assert np.all(np.isclose(ratio, 0.0, atol=1e-6) | np.isclose(ratio, 2.0, rtol=1e-4))
  zeros = np.isclose(ratio, 0.0, atol=1e-6)
  assert 0.4 < zeros.mean() < 0.6
  assert zeros.any(axis=0).all() and not zeros.all(axis=0).any()  # Every unit keeps some of its weights.
  assert not np.array_equal(dropped, effective_kernel(model, variables, 16, layer, train=True, seed=2))
  # No dropout on the activations besides.
  _, state = model.apply(
    variables,
    jnp.zeros((2, 16)),
    train=True,
    rngs={"dropout": jax.random.key(0)},
    capture_intermediates=True,
    mutable=["intermediates", "batch_stats", "spectral"],
  )
  assert not any(name.startswith(("Dropout", "AlphaDropout")) for name in state["intermediates"])


# ---------------------------------------------------------------------------------------------------
# Choices checked when the model is built.


@pytest.mark.parametrize(
  "name,key,value,choices",
  [
    ("mlp", "norm", "btach", ["none", "batch", "layer", "group", "weight", "spectral"]),
    ("mlp", "dropout_kind", "drop_connect", ["standard", "alpha", "dropconnect"]),
    ("bn_cnn", "norm", "spectral", ["batch", "layer", "group", "none"]),  # Not offered for the CNN.
  ],
)
def test_misspelt_choice_lists_the_choices(name, key, value, choices):
  with pytest.raises(ZooError, match=key) as err:
    create_model(name, **{key: value})
  assert all(repr(c) in str(err.value) for c in choices), str(err.value)


def test_misspelt_choice_fails_when_built_directly():
  with pytest.raises(ZooError, match="unknown norm 'btach'; choose one of none, batch, layer"):
    MLP(norm="btach")
  with pytest.raises(
    ZooError, match="unknown dropout_kind 'gauss'; choose one of standard, alpha, dropconnect"
  ):
    MLP(dropout_kind="gauss")


@pytest.mark.parametrize(
  "name,kw,message",
  [
    ("mlp", dict(batch_norm=True, norm="layer"), r"batch_norm=True .* conflicts with norm='layer'"),
    (
      "mlp",
      dict(norm="group", hidden_sizes=(16, 8), num_groups=3),
      r"num_groups=3 does not fit width\(s\) \[16, 8\]",
    ),
    (
      "mlp",
      dict(norm="group", hidden_sizes=(16, 8), num_groups=8),
      r"num_groups=8 does not fit width\(s\) \[8\]",
    ),
    ("mlp", dict(norm="group", hidden_sizes=(100, 7)), r"hidden_sizes=\(100, 7\).*set num_groups"),
    ("mlp", dict(dropout=1.0, dropout_kind="alpha"), r"dropout rate must be in \[0, 1\), got 1.0"),
    ("bn_cnn", dict(norm="group", num_groups=16, features=(8, 16)), r"features=\(8, 16\).* width\(s\) \[8\]"),
    ("bn_cnn", dict(norm="group", features=(3, 6)), r"features=\(3, 6\), hidden=128.*set num_groups"),
  ],
)
def test_choices_that_cannot_work_fail_at_construction(name, kw, message):
  with pytest.raises(ZooError, match=message):
    create_model(name, **kw)


@pytest.mark.parametrize(
  "widths,groups",
  [
    (dict(dense_widths=(512, 256)), 32),
    (dict(dense_widths=(100,)), 25),
    (dict(dense_widths=(16, 8)), 4),  # 8 groups would leave 1 feature per group, which normalises to 0.
    (dict(conv_widths=(32, 64), dense_widths=(128,)), 16),
    (dict(conv_widths=(6,), dense_widths=(12,)), 3),
  ],
)
def test_default_group_count(widths, groups):
  assert resolve_num_groups(None, **widths, where="test") == groups
  assert resolve_num_groups(groups, **widths, where="test") == groups


def test_explicit_groups_of_one_channel_are_allowed_after_convolutions_only():
  assert resolve_num_groups(8, conv_widths=(8, 16), dense_widths=(32,), where="test") == 8
  with pytest.raises(ZooError, match=r"width\(s\) \[8\]"):
    resolve_num_groups(8, dense_widths=(8, 16), where="test")


@pytest.mark.parametrize("name,shape", [("mlp", (4, 12)), ("bn_cnn", (2, 16, 16, 1))])
def test_group_norm_uses_the_resolved_group_count(name, shape):
  kw = dict(hidden_sizes=(16, 8)) if name == "mlp" else dict(features=(8, 16), hidden=32)
  model = create_model(name, norm="group", **kw)
  x = 3.0 + jax.random.normal(jax.random.key(0), shape)
  out = layer_output(model, init(model, x), x, "GroupNorm_0")  # (B, ..., C), scale 1 and offset 0 at init
  c = out.shape[-1]
  assert c // 4 >= 2  # Both models: 4 groups of at least 2 channels in their first normalised layer.
  by_group = out.reshape(out.shape[0], -1, 4, c // 4)  # (B, ..., groups, channels per group)
  np.testing.assert_allclose(by_group.mean(axis=(1, 3)), 0.0, atol=1e-4)
  np.testing.assert_allclose(by_group.var(axis=(1, 3)), 1.0, rtol=1e-2)
  halves = out.reshape(out.shape[0], -1, 8, c // 8)  # Finer than the groups: their means are not 0.
  assert not np.allclose(halves.mean(axis=(1, 3)), 0.0, atol=1e-2)


def test_cnn_layer_norm_normalises_each_feature_map_over_h_w_c():
  model = create_model("bn_cnn", norm="layer", features=(8, 16), hidden=32)
  x = 3.0 + jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
  variables = init(model, x)
  assert variables["params"]["LayerNorm_0"]["scale"].shape == (8,)  # One scale per channel.
  out = layer_output(model, variables, x, "LayerNorm_0")  # (B, H, W, C)
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
  np.testing.assert_allclose(out.var(axis=(1, 2, 3)), 1.0, rtol=1e-2)
  assert not np.allclose(out.mean(axis=-1), 0.0, atol=1e-2)  # Not per position over channels only.
  hidden = layer_output(model, variables, x, "LayerNorm_4")  # (B, hidden): over the features
  np.testing.assert_allclose(hidden.mean(axis=-1), 0.0, atol=1e-4)


@pytest.mark.parametrize("norm", ["batch", "layer", "group", "none"])
def test_cnn_norm_choice_trains_and_evaluates(norm):
  model = create_model("bn_cnn", norm=norm, features=(8, 16), hidden=32, num_classes=3)
  # 12x12 inputs and group norm gave NaN gradients through the jitted max-pool before it chose one maximum
  # per window (see test_max_pool_gives_each_window_one_gradient_even_at_ties).
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 1))

  @jax.jit  # One compiled call: init, a training-mode gradient, evaluation.
  def run():
    variables = model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x)
    params, state = variables.pop("params"), variables

    def loss(p):
      logits, new_state = apply_model(model, {"params": p, **state}, x, train=True, rngs=jax.random.key(1))
      return jnp.sum(logits * jnp.arange(3.0)[None]), new_state

    (_, new_state), grads = jax.value_and_grad(loss, has_aux=True)(params)
    out, nothing = apply_model(model, {"params": params, **new_state}, x, train=False)
    assert nothing == {}
    return params, state, new_state, grads, out

  params, state, new_state, grads, out = run()
  assert set(state) == ({"batch_stats"} if norm == "batch" else set())
  norms = {k for k in params if k.startswith(("BatchNorm", "LayerNorm", "GroupNorm"))}
  assert norms == ({f"{NORM_MODULE[norm]}_{i}" for i in range(5)} if norm != "none" else set())
  # A bias only where no norm supplies the offset.
  assert all(("bias" in params[k]) == (norm == "none") for k in ("Conv_0", "Conv_3", "Dense_0"))
  assert set(new_state) == set(state)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert bool(jnp.all(jnp.isfinite(g))) and bool(jnp.any(g != 0)), jax.tree_util.keystr(path)
  assert out.shape == (4, 3) and bool(jnp.all(jnp.isfinite(out)))


def test_max_pool_gives_each_window_one_gradient_even_at_ties():
  # Ties (ReLU zeros, quantised values) and a jitted gradient after a norm: where JAX's own max gradient
  # split the cotangent, or divided it by a count of maxima that XLA's re-fused comparison made 0 (NaN).
  x = jnp.round(jax.random.normal(jax.random.key(0), (2, 6, 6, 3)))
  x = x.at[0].set(0.0)
  cot = jax.random.normal(jax.random.key(1), (2, 3, 3, 3))
  grad = jax.jit(jax.grad(lambda x: jnp.sum(max_pool(nn.relu(x), 2) * cot)))(x)
  windows = np.asarray(grad).reshape(2, 3, 2, 3, 2, 3)
  # One element per window has the cotangent (zero where relu's own gradient is 0: all-zero windows).
  assert np.all((windows != 0).sum(axis=(2, 4)) <= 1)
  np.testing.assert_allclose(windows.sum(axis=(2, 4)), np.where(np.asarray(max_pool(x, 2)) > 0, cot, 0))
  flax_grad = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), strides=(2, 2)) * cot))(x)
  np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(max_pool(x, 2) * cot))(x), flax_grad)
  t = jax.random.normal(jax.random.key(2), x.shape)  # Forward mode works too.
  np.testing.assert_array_equal(
    jax.jvp(lambda x: max_pool(x, 2), (x,), (t,))[1],
    jax.jvp(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)), (x,), (t,))[1],
  )


@pytest.mark.parametrize("norm", NORMS)
def test_reduced_precision_keeps_float32_variables_and_logits(norm):
  x = jnp.zeros((2, 12))
  for kind in DROPOUT_KINDS:
    model = create_model("mlp", hidden_sizes=(16, 8), norm=norm, dropout_kind=kind, dtype=jnp.bfloat16)
    variables = jax.eval_shape(lambda m=model: m.init({"params": jax.random.key(0)}, x))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}, kind
    assert jax.eval_shape(model.apply, variables, x).dtype == jnp.float32
  if norm in ("batch", "layer", "group", "none"):
    model = create_model("bn_cnn", norm=norm, features=(8, 16), hidden=32, dtype=jnp.bfloat16)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1))))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


# ---------------------------------------------------------------------------------------------------
# The existing configs build as before the choices existed.


@pytest.mark.parametrize(
  "name,shape,params,tree",
  [
    ("mnist_mlp", (2, 28, 28, 1), 535_818, ["Dense_0", "Dense_1", "Dense_2"]),  # 784-512-256-10
    ("digits_mlp", (2, 8, 8, 1), 7_510, ["Dense_0", "Dense_1"]),  # 64-100-10
    ("fashion_mnist_cnn", (2, 28, 28, 1), 468_138, None),
  ],
)
def test_existing_configs_build_identically(name, shape, params, tree):
  config = get_config(name)
  model = create_model(config.model.name, **config.model.kwargs)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  assert count(variables["params"]) == params
  if tree is not None:
    assert set(variables) == {"params"} and sorted(variables["params"]) == tree
  else:  # The BatchNorm CNN: BatchNorm after 4 convolutions and the hidden layer, no biases before it.
    assert sorted(variables) == ["batch_stats", "params"] and count(variables["batch_stats"]) == 640
    assert all("bias" not in variables["params"][k] for k in ("Conv_0", "Conv_3", "Dense_0"))


def test_batch_norm_flag_is_an_alias_of_norm_batch():
  kw = dict(hidden_sizes=(16, 8), dropout=0.1, activation="selu")
  x = jax.random.normal(jax.random.key(0), (4, 12))
  old, new = create_model("mlp", batch_norm=True, **kw), create_model("mlp", norm="batch", **kw)
  v_old, v_new = init(old, x), init(new, x)
  assert jax.tree.structure(v_old) == jax.tree.structure(v_new)
  jax.tree.map(np.testing.assert_array_equal, v_old, v_new)
  run = lambda m, v: m.apply(v, x, train=True, rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, run(old, v_old), run(new, v_new))
  create_model("mlp", batch_norm=True, norm="batch")  # Saying it twice is no conflict.


# ---------------------------------------------------------------------------------------------------
# End to end.


def test_self_normalising_spectral_mlp_trains_and_resumes(tmp_path):
  c = Config()
  c.model.kwargs = dict(
    hidden_sizes=(32, 32), activation="selu", norm="spectral", dropout_kind="alpha", dropout=0.1
  )
  c.data.name = "synthetic_tabular"
  c.data.kwargs = {"n_train": 256, "n_test": 64}
  c.data.batch_size = 32
  c.data.eval_batch_size = 64
  c.epochs = 2
  c.optimizer.learning_rate = 1e-2
  c.checkpoint_every_steps = 8
  result = train_and_evaluate(c, tmp_path, progress=False)
  assert result["test"]["accuracy"] > 0.8  # Separable blobs in 3 classes: chance is 1/3.
  spectral = result["state"].model_state["spectral"]
  sigma = spectral["SpectralNormDense_0"]["SpectralNorm_0"]["Dense_0/kernel/sigma"]
  assert float(sigma) != 1.0  # Written by the training steps (1 at initialisation).
  again = train_and_evaluate(c, tmp_path, progress=False)  # Restored from the checkpoint, not retrained.
  jax.tree.map(np.testing.assert_array_equal, again["state"].model_state, result["state"].model_state)
  assert again["test"] == pytest.approx(result["test"])
