"""Tests of the Transformer family: masks, attention against NumPy, causality, the paper's sinusoids, pre-LN
and post-LN structure, GPT-2's size and init, KV-cached sampling, padding invariance, and small fits."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo.models import create_model
from zoo.models.transformer import (
  MultiHeadAttention,
  TransformerBlock,
  _generate,
  _sample,
  causal_mask,
  combine_masks,
  dot_product_attention,
  generate,
  padding_mask,
  sinusoidal_positions,
)
from zoo.registry import ZooError

VOCAB = 65
BLOCK = 16  # A short context, so that generation runs past it in few steps.


@functools.partial(jax.jit, static_argnums=0)
def init(model, x):
  return model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x)


@functools.partial(jax.jit, static_argnums=0)
def apply(model, variables, x):
  return model.apply(variables, x)


def param_count(model, x) -> int:
  shapes = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x), x)
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


@pytest.fixture(scope="module")
def gpt():
  """gpt_tiny without dropout and with a 16-token context, and its variables (shared: both immutable)."""
  model = create_model("gpt_tiny", block_size=BLOCK, dropout=0.0, attention_dropout=0.0)
  return model, init(model, jnp.zeros((1, BLOCK), jnp.int32))


# Test inputs come from NumPy: every new shape drawn with jax.random compiles a threefry kernel (about a
# second of CPU each here).
def normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).normal(0.0, scale, shape), jnp.float32)


def token_ids(seed: int, shape: tuple[int, ...], low: int = 0, high: int = VOCAB) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).integers(low, high, shape), jnp.int32)


def random_params(module, *args, **kwargs) -> dict:
  """Parameters of `module` drawn with NumPy (shapes from jax.eval_shape, so nothing is compiled): kernels
  N(0, 1/fan_in), biases N(0, 0.1^2), LayerNorms at their initial identity (scale 1, offset 0)."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))["params"]
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name, scope = path[-1].key, "/".join(str(p.key) for p in path)
    if name == "scale" or (name == "bias" and "norm" in scope):
      return jnp.full(leaf.shape, float(name == "scale"))
    std = 0.1 if name == "bias" else 1 / np.sqrt(leaf.shape[0])
    return jnp.asarray(rng.normal(0.0, std, leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def layer_norm(x: np.ndarray, eps: float) -> np.ndarray:
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


# ---------------------------------------------------------------------------------------------------
# Masks and attention.


def test_masks_follow_the_convention():
  np.testing.assert_array_equal(causal_mask(3)[0, 0], [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
  assert causal_mask(3).shape == (1, 1, 3, 3) and causal_mask(3).dtype == jnp.bool_
  pad = padding_mask(jnp.array([[5, 3, 0, 0], [0, 2, 1, 0]]))
  assert pad.shape == (2, 1, 1, 4)
  np.testing.assert_array_equal(pad[:, 0, 0], [[1, 1, 0, 0], [0, 1, 1, 0]])
  np.testing.assert_array_equal(padding_mask(jnp.array([[7, 9]]), pad_id=9)[0, 0, 0], [True, False])
  both = combine_masks(causal_mask(4), None, pad)  # (2, 1, 4, 4)
  np.testing.assert_array_equal(both[0, 0], np.tril(np.ones((4, 4), bool)) & [1, 1, 0, 0])
  assert combine_masks(None, None) is None
  with pytest.raises(ZooError, match="boolean"):
    combine_masks(jnp.ones((1, 1, 2, 2)))
  with pytest.raises(ZooError, match="4-D"):
    combine_masks(jnp.ones((2, 2), jnp.bool_))


def numpy_attention(params: dict, xq: np.ndarray, xkv: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The paper's multi-head attention, written out: per head softmax(q k^T / sqrt(d)) v, concatenated and
  projected; rows with nothing to attend to are zero."""
  p = jax.tree.map(np.asarray, params)
  q = np.einsum("btd,dhk->bthk", xq, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("bsd,dhk->bshk", xkv, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("bsd,dhk->bshk", xkv, p["value"]["kernel"]) + p["value"]["bias"]
  logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
  mask = np.broadcast_to(mask, logits.shape)
  logits = np.where(mask, logits, -np.inf)
  with np.errstate(invalid="ignore"):
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights = np.nan_to_num(weights / weights.sum(-1, keepdims=True))  # A fully masked row: 0 / 0 -> 0.
  y = np.einsum("bhts,bshk->bthk", weights, v)
  return np.einsum("bthk,hkd->btd", y, p["out"]["kernel"]) + p["out"]["bias"]


def test_attention_matches_numpy_and_a_fully_masked_query_gets_zeros():
  xq, xkv = normal(0, (2, 5, 12)), normal(1, (2, 7, 12))
  mask = np.random.default_rng(2).random((2, 1, 5, 7)) < 0.6
  mask[1, 0, 3] = False  # One query that may attend to nothing.
  mask = jnp.asarray(mask)
  layer = MultiHeadAttention(num_heads=3, out_features=10)
  params = random_params(layer, xq, xkv, mask)  # Random biases: the masked query's output is exactly one.
  forward = lambda p, x: layer.apply({"params": p}, x, xkv, mask)
  y, vjp = jax.jit(lambda p, x: jax.vjp(forward, p, x))(params, xq)
  assert y.shape == (2, 5, 10)
  expected = numpy_attention(params, np.asarray(xq), np.asarray(xkv), np.asarray(mask))
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  # The fully masked query gives exactly the output projection's bias (zeros before it), and no NaN
  # reaches any gradient.
  np.testing.assert_array_equal(y[1, 3], params["out"]["bias"])
  grads = vjp(2 * y)  # The gradient of sum(y ** 2).
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  np.testing.assert_array_equal(grads[1][1, 3], 0.0)  # The masked query's input reaches nothing.


def test_attention_dropout_matches_numpy_with_the_same_keep_mask():
  q, k, v = (normal(i, (2, 4, 3, 8)) for i in range(3))
  mask = causal_mask(4)
  rng, rate = jax.random.key(7), 0.3
  attend = jax.jit(dot_product_attention, static_argnames="dropout_rate")
  # The documented draw of the kept weights, in the same program (one threefry compilation).
  y, keep = jax.jit(
    lambda: (
      dot_product_attention(q, k, v, mask, dropout_rate=rate, dropout_rng=rng),
      jax.random.bernoulli(rng, 1 - rate, (2, 3, 4, 4)),
    )
  )()
  logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(8.0)
  logits = np.where(np.asarray(mask), logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  keep = np.asarray(keep)
  expected = np.einsum("bhts,bshd->bthd", weights * keep / (1 - rate), v)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  # Without an rng (evaluation): no dropout.
  np.testing.assert_allclose(
    attend(q, k, v, mask, dropout_rate=rate),
    np.einsum("bhts,bshd->bthd", weights, v),
    rtol=1e-5,
    atol=1e-5,
  )


def test_masked_keys_content_does_not_matter():
  x = normal(0, (2, 6, 8))
  tokens = jnp.array([[4, 2, 9, 0, 0, 0], [3, 0, 5, 1, 0, 0]])
  mask = padding_mask(tokens)
  layer = MultiHeadAttention(num_heads=2)
  variables = {"params": random_params(layer, x, mask=mask)}
  noise = normal(2, x.shape, 10.0)
  changed = jnp.where((tokens == 0)[..., None], noise, x)  # New content at the padding positions only.
  attend = jax.jit(layer.apply)
  a, b = (attend(variables, inputs, mask=mask) for inputs in (x, changed))
  np.testing.assert_allclose(a[tokens != 0], b[tokens != 0], rtol=1e-5, atol=1e-5)
  assert not np.allclose(a, attend(variables, changed, mask=None))  # Unmasked, the content matters.


# ---------------------------------------------------------------------------------------------------
# Positions and blocks.


@pytest.mark.parametrize("length,width", [(9, 6), (5, 7), (50, 16)])
def test_sinusoidal_positions_follow_the_paper(length, width):
  table = sinusoidal_positions(length, width)
  assert table.shape == (length, width) and table.dtype == np.float32
  expected = np.zeros((length, width))
  for pos in range(length):
    for i in range(width):
      # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).
      angle = pos / 10000 ** (2 * (i // 2) / width)
      expected[pos, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
  np.testing.assert_allclose(table, expected, rtol=0, atol=1e-6)


def test_pre_ln_and_post_ln_blocks_differ_as_the_papers_say():
  x = 3.0 + normal(0, (2, 5, 16), 2.0)  # Far from normalised.
  outputs = {}
  for norm_first in (True, False):
    block = TransformerBlock(num_heads=4, mlp_dim=32, norm_first=norm_first)
    params = random_params(block, x)
    outputs[norm_first] = np.asarray(apply(block, {"params": params}, x))
    # With both residual branches silenced, pre-LN is the identity and post-LN normalises.
    silent = jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.zeros_like(p) if path[0].key in ("attention", "mlp") else p, params
    )
    quiet = np.asarray(apply(block, {"params": silent}, x))
    if norm_first:
      np.testing.assert_array_equal(quiet, x)
    else:
      np.testing.assert_allclose(quiet, layer_norm(layer_norm(np.asarray(x), 1e-6), 1e-6), atol=1e-5)
  # Post-LN's output is a LayerNorm's (scale 1, offset 0 at init): every token has mean 0, variance 1.
  np.testing.assert_allclose(outputs[False].mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(outputs[False].var(-1), 1.0, atol=1e-3)
  assert np.abs(outputs[True].mean(-1) - 3.0).max() < 1.5  # Pre-LN keeps the residual stream's offset.


def test_final_layer_norm_only_after_pre_ln_stacks(gpt):
  _, variables = gpt
  assert "final_norm" in variables["params"]
  x = jnp.ones((1, 4), jnp.int32)
  for norm_first in (True, False):
    model = create_model("transformer_classifier_tiny", norm_first=norm_first, depth=1)
    params = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), x))["params"]
    assert ("final_norm" in params) == norm_first


# ---------------------------------------------------------------------------------------------------
# GPT.


def test_gpt2_has_124m_parameters():
  x = jax.ShapeDtypeStruct((1, 1024), jnp.int32)
  assert param_count(create_model("gpt2"), x) == 124_439_808
  assert param_count(create_model("gpt2", tie_embeddings=False), x) == 124_439_808 + 50257 * 768


def test_gpt_init_scales_the_residual_projections(gpt):
  model, variables = gpt
  params = variables["params"]
  block = params["blocks_1"]
  residual = 0.02 / math.sqrt(2 * model.depth)
  np.testing.assert_allclose(np.std(block["attention"]["out"]["kernel"]), residual, rtol=0.05)
  np.testing.assert_allclose(np.std(block["mlp"]["Dense_1"]["kernel"]), residual, rtol=0.05)
  np.testing.assert_allclose(np.std(block["attention"]["query"]["kernel"]), 0.02, rtol=0.05)
  np.testing.assert_allclose(np.std(block["mlp"]["Dense_0"]["kernel"]), 0.02, rtol=0.05)
  np.testing.assert_allclose(np.std(params["token_embedding"]["embedding"]), 0.02, rtol=0.05)
  np.testing.assert_allclose(np.std(params["position_embedding"]["embedding"]), 0.01, rtol=0.05)
  assert not np.any(block["attention"]["query"]["bias"])


def test_position_t_sees_no_later_position(gpt):
  """The causal-masking test: d logits[t] / d embeddings[s] is exactly zero for s > t, non-zero for s <= t."""
  model, variables = gpt
  length = 10
  x = model.apply(variables, token_ids(0, (1, length)), method="embed")
  direction = normal(1, (VOCAB,))  # A generic scalar of each position's logits.
  outputs = lambda x: model.apply(variables, x, method="from_embeddings")[0] @ direction  # (T,)
  jacobian = jax.jit(jax.jacrev(outputs))(x)[:, 0]  # (T outputs, T inputs, D)
  reach = np.abs(np.asarray(jacobian)).max(-1)  # (T, T)
  later = np.triu(np.ones((length, length), bool), k=1)
  np.testing.assert_array_equal(reach[later], 0.0)
  assert (reach[~later] > 0).all()


def test_gpt_rejects_sequences_longer_than_its_context(gpt):
  model, variables = gpt
  with pytest.raises(ZooError, match="longer than"):
    model.apply(variables, jnp.zeros((1, BLOCK + 1), jnp.int32))
  with pytest.raises(ZooError, match="divisible"):
    create_model("gpt_tiny", width=30)
  with pytest.raises(ZooError, match="positions"):
    create_model("gpt_tiny", positions="rotary")


def test_kv_cache_gives_the_full_forward_logits(gpt):
  model, variables = gpt
  seq = token_ids(0, (2, BLOCK))
  full = apply(model, variables, seq)
  decoder = model.clone(decode=True)
  sizing = jax.eval_shape(
    lambda: decoder.apply(variables, jnp.zeros((2, BLOCK), jnp.int32), mutable=["cache"])
  )
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sizing[1]["cache"])
  step = jax.jit(lambda cache, chunk: decoder.apply({**variables, "cache": cache}, chunk, mutable=["cache"]))
  logits = []
  # A prompt, single steps, then several tokens at once.
  for start, stop in [(0, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 12), (12, 16)]:
    out, state = step(cache, seq[:, start:stop])
    cache = state["cache"]
    logits.append(out)
  np.testing.assert_allclose(jnp.concatenate(logits, axis=1), full, rtol=1e-4, atol=1e-4)


def recompute(model, variables, prompt, num_steps):
  """Greedy decoding without a cache: the whole (last block_size tokens of the) sequence at every step."""
  seq = prompt
  for _ in range(num_steps):
    window = seq[:, -model.block_size :]
    # Padded on the right to one shape (one compilation): causal, so the padding changes nothing before it.
    padded = jnp.pad(window, ((0, 0), (0, model.block_size - window.shape[1])))
    logits = apply(model, variables, padded)[:, window.shape[1] - 1]
    seq = jnp.concatenate([seq, jnp.argmax(logits, -1).astype(jnp.int32)[:, None]], axis=1)
  return seq[:, prompt.shape[1] :]


@pytest.mark.parametrize("prompt_length", [5, BLOCK + 4])
def test_cached_greedy_generation_equals_recomputing(gpt, prompt_length):
  # 5 + 20 tokens run past the 16-token context (cached steps, then sliding ones); a prompt of 20 is cut.
  model, variables = gpt
  prompt = token_ids(prompt_length, (2, prompt_length))
  tokens = generate(model, variables, prompt, 20, jax.random.key(0), temperature=0.0)
  assert tokens.shape == (2, 20) and tokens.dtype == jnp.int32
  np.testing.assert_array_equal(tokens, recompute(model, variables, prompt, 20))


def test_sampling_is_deterministic_per_rng_and_compiles_once(gpt):
  model, variables = gpt
  prompt = token_ids(0, (2, 5))
  sample = lambda seed, t=1.0: generate(model, variables, prompt, 20, jax.random.key(seed), temperature=t)
  first = sample(1)
  compiled = _generate._cache_size()
  np.testing.assert_array_equal(sample(1), first)
  assert not np.array_equal(sample(2), first)
  sample(3, 0.7)
  assert _generate._cache_size() == compiled  # rng and temperature are traced, not compiled in.
  assert generate(model, variables, prompt, 0, jax.random.key(0)).shape == (2, 0)
  for bad in (dict(top_k=0), dict(top_p=0.0), dict(temperature=-1.0)):
    with pytest.raises(ZooError):
      generate(model, variables, prompt, 3, jax.random.key(0), **bad)


def test_sampling_filters():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))

  @functools.partial(jax.jit, static_argnums=0)
  def draw(top_k, temperature, top_p):  # (400, 2) draws
    keys = jax.random.split(jax.random.key(0), 400)
    return jax.vmap(lambda key: _sample(logits, key, temperature, top_k, top_p))(keys)

  seen = lambda tokens: [set(np.asarray(tokens[:, row]).tolist()) for row in range(2)]
  assert seen(draw(None, 1.0, None)) == [{0, 1, 2, 3}] * 2
  assert seen(draw(None, 0.0, None)) == [{0}, {3}]  # Greedy.
  assert seen(draw(2, 1.0, None)) == [{0, 1}, {2, 3}]  # The top 2.
  # Nucleus: 0.5 + 0.3 reach 0.7; a top_p below the first's mass keeps it alone.
  assert seen(draw(None, 1.0, 0.7)) == [{0, 1}, {2, 3}]
  assert seen(draw(None, 1.0, 0.45)) == [{0}, {3}]
  # A low temperature sharpens: the most likely token nearly always.
  assert np.mean(np.asarray(draw(None, 0.05, None))[:, 0] == 0) > 0.99


def test_gpt_fits_a_repeating_sequence_and_then_continues_it(gpt):
  model, variables = gpt
  period = jnp.array([7, 3, 44, 12, 60, 29, 51])
  sequence = jnp.tile(period, 6)  # (42,)
  batch = jnp.asarray(np.stack([sequence[s : s + BLOCK + 1] for s in range(8)]))  # (8, 17): every phase
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      logits = model.apply({"params": p}, batch[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value

  params, opt_state = variables["params"], tx.init(variables["params"])
  losses = []
  for _ in range(60):
    params, opt_state, value = step(params, opt_state)
    losses.append(float(value))
  assert losses[-1] < 0.1 < 4 < losses[0], losses[::10]  # From about ln(65) = 4.17.
  prompt = jnp.stack([sequence[:5], sequence[2:7]])
  tokens = generate(model, {"params": params}, prompt, 20, jax.random.key(0), temperature=0.0)
  np.testing.assert_array_equal(tokens[0], sequence[5:25])
  np.testing.assert_array_equal(tokens[1], sequence[7:27])


# ---------------------------------------------------------------------------------------------------
# The classifier.


CLASSIFIERS = {
  "mean-preLN-sinusoidal": dict(pool="mean", norm_first=True, positions="sinusoidal"),
  "cls-postLN-learned": dict(pool="cls", norm_first=False, positions="learned"),
}


@functools.cache
def classifier(config: str):
  """A one-block transformer_classifier_tiny (dropout 0.1) and random variables, built once per config."""
  model = create_model("transformer_classifier_tiny", depth=1, **CLASSIFIERS[config])
  return model, {"params": random_params(model, jnp.ones((1, 8), jnp.int32))}


@pytest.mark.parametrize("config", CLASSIFIERS)
def test_classifier_ignores_padding(config):
  model, variables = classifier(config)
  tokens = jnp.array([[5, 9, 2, 7, 0, 0], [4, 0, 8, 0, 0, 0]])  # Padding at the end and inside.
  logits = apply(model, variables, tokens)
  assert logits.shape == (2, 2) and logits.dtype == jnp.float32
  # More padding, and other content for the padding token: the same logits.
  longer = jnp.pad(tokens, ((0, 0), (0, 4)))
  np.testing.assert_allclose(apply(model, variables, longer), logits, rtol=1e-5, atol=1e-5)
  params = variables["params"]
  embedding = params["token_embedding"]["embedding"]
  moved = {**params, "token_embedding": {"embedding": embedding.at[0].set(5.0)}}
  np.testing.assert_allclose(apply(model, {"params": moved}, tokens), logits, rtol=1e-5, atol=1e-5)
  # A real token's content does matter.
  other = {**params, "token_embedding": {"embedding": embedding.at[8].set(5.0)}}
  assert not np.allclose(apply(model, {"params": other}, tokens)[1], logits[1])


@pytest.mark.parametrize("config", ["cls-postLN-learned"])
def test_classifier_learns_a_token_presence_rule(config):
  model, variables = classifier(config)
  model = model.clone(dropout=0.0)  # Each dropout mask's threefry draw costs seconds of compilation here.
  tokens = np.random.default_rng(0).integers(2, 50, (32, 10))
  labels = np.arange(32) % 2
  tokens[labels == 1, 3] = 1  # Class 1 holds token 1.
  tokens[::3, 7:] = 0  # Some padding.
  tokens, labels = jnp.asarray(tokens), jnp.asarray(labels)
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, key):
    def loss(p):
      logits = model.apply({"params": p}, tokens, train=True, rngs={"dropout": key})
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value

  params = variables["params"]
  opt_state = tx.init(params)
  losses = []
  for i in range(20):
    params, opt_state, value = step(params, opt_state, jax.random.key(i))
    losses.append(float(value))
  assert losses[-1] < 0.1 < 0.5 < losses[0], losses[::4]


def test_classifier_checks_its_fields():
  with pytest.raises(ZooError, match="pool"):
    create_model("transformer_classifier_tiny", pool="max")
  with pytest.raises(ZooError, match="mlp_activation"):
    create_model("transformer_classifier_tiny", mlp_activation="tanh")
  model = create_model("transformer_classifier_tiny", positions="learned", max_length=8)
  with pytest.raises(ZooError, match="longer than"):
    model.init(jax.random.key(0), jnp.ones((1, 9), jnp.int32))
