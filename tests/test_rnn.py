"""Tests of the recurrent family: the cells against NumPy references of the papers' equations, padding
invariance, bidirectional shapes, attention pooling, the char LM's stateful sampling and a small fit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo.models import create_model
from zoo.models.rnn import (
  AttentionPooling,
  CharLM,
  Recurrence,
  RecurrentLayer,
  SequenceClassifier,
  _sample,
  sample_rnn,
)
from zoo.registry import ZooError

B, T, F, H = 3, 5, 4, 6  # batch, time, input features, hidden units: tiny, so every test compiles fast


def sigmoid(a: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-a))


def reference(cell: str, params: dict, x: np.ndarray, direction: int = 0, reset_after: bool = True):
  """The papers' equations in NumPy, one direction, from the documented parameter layout: outputs (B, T, H).

  Elman (1990): h = tanh(x W + b + h U).
  LSTM with a forget gate (Gers et al. 2000): i, f, o = sigmoid(.), g = tanh(.), c = f c + i g, h = o tanh(c).
  GRU (Cho et al. 2014): r, z = sigmoid(.), h = z h + (1 - z) n with n = tanh(x W_n + b_n + (r h) U_n)
  (reset before, the paper's) or tanh(x W_n + b_n + r (h U_n + b_hn)) (reset after, cuDNN/PyTorch).
  """
  g = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
  w = np.asarray(params["input_kernel"], np.float64)[:, direction * g * H : (direction + 1) * g * H]
  b = np.asarray(params["bias"], np.float64)[direction * g * H : (direction + 1) * g * H]
  u = np.asarray(params["recurrent_kernel"], np.float64)[direction]
  blk = lambda a, k: a[..., k * H : (k + 1) * H]
  h = np.zeros((x.shape[0], H))
  c = np.zeros((x.shape[0], H))
  outputs = []
  for t in range(x.shape[1]):
    xt = x[:, t].astype(np.float64)
    if cell == "rnn":
      h = np.tanh(xt @ w + b + h @ u)
    elif cell == "lstm":
      a = xt @ w + b + h @ u
      i, f, gg, o = sigmoid(blk(a, 0)), sigmoid(blk(a, 1)), np.tanh(blk(a, 2)), sigmoid(blk(a, 3))
      c = f * c + i * gg
      h = o * np.tanh(c)
    else:
      xw = xt @ w + b
      r = sigmoid(blk(xw, 0) + h @ blk(u, 0))
      z = sigmoid(blk(xw, 1) + h @ blk(u, 1))
      if reset_after:
        bhn = np.asarray(params["recurrent_bias"], np.float64)[direction]
        n = np.tanh(blk(xw, 2) + r * (h @ blk(u, 2) + bhn))
      else:
        n = np.tanh(blk(xw, 2) + (r * h) @ blk(u, 2))
      h = z * h + (1 - z) * n
    outputs.append(h)
  return np.stack(outputs, axis=1)


def random_variables(module, *args, seed: int = 0) -> dict:
  """Variables of the module's shapes filled with N(0, 0.5^2) values (biases included, so that no term of
  the equations is 0), without compiling its initialiser (the shapes come from jax.eval_shape)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.5, s.shape), s.dtype), shapes)


@pytest.mark.parametrize(
  "cell,reset_after",
  [("rnn", True), ("lstm", True), ("gru", True), ("gru", False)],
  ids=["rnn", "lstm", "gru-reset_after", "gru-reset_before"],
)
def test_cells_match_the_papers_equations(cell, reset_after):
  x = np.asarray(jax.random.normal(jax.random.key(1), (B, 3, F)))  # three steps
  layer = Recurrence(cell, H, bidirectional=True, reset_after=reset_after)
  variables = random_variables(layer, x)
  params = variables["params"]
  outputs, carry = jax.jit(layer.apply)(variables, x)
  assert outputs.shape == (B, 3, 2 * H)
  forward = reference(cell, params, x, 0, reset_after)
  backward = reference(cell, params, x[:, ::-1], 1, reset_after)[:, ::-1]  # the reverse direction
  np.testing.assert_allclose(outputs[..., :H], forward, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outputs[..., H:], backward, rtol=1e-5, atol=1e-5)
  h = carry[1] if cell == "lstm" else carry  # (D, B, H)
  np.testing.assert_allclose(h[0], forward[:, -1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h[1], backward[:, 0], rtol=1e-5, atol=1e-5)
  if cell == "gru" and not reset_after:  # The two GRU variants' references really differ.
    other = reference(cell, {**params, "recurrent_bias": np.zeros((2, H))}, x, 0, reset_after=True)
    assert not np.allclose(other, forward, atol=1e-3)


def test_lstm_initialisation():
  x = jnp.zeros((1, 2, F))
  on, off = Recurrence("lstm", H, bidirectional=True), Recurrence("lstm", H, forget_bias=0.0)
  params, off = jax.jit(lambda key: (on.init(key, x)["params"], off.init(key, x)["params"]))(
    jax.random.key(0)
  )
  bias = np.asarray(params["bias"]).reshape(2, 4, H)  # (D, gates i f g o, H)
  np.testing.assert_array_equal(bias[:, 1], 1.0)  # the forget gate's (Jozefowicz et al. 2015)
  np.testing.assert_array_equal(bias[:, [0, 2, 3]], 0.0)
  np.testing.assert_array_equal(off["bias"], 0.0)
  kernel = np.asarray(params["recurrent_kernel"])  # (D, H, 4H): each gate's (H, H) block orthogonal
  for d in range(2):
    for k in range(4):
      block = kernel[d][:, k * H : (k + 1) * H]
      np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_scan_does_only_the_recurrent_matmul(cell):
  # The input projection of every step is hoisted out of the recurrence: the scan body holds one matmul
  # (B, H) @ (H, G H) per step, and the one outside it has all B*T steps' inputs.
  layer = RecurrentLayer(cell, H)
  x = jax.ShapeDtypeStruct((B, T, F), jnp.float32)
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  jaxpr = jax.make_jaxpr(layer.apply)(variables, x).jaxpr

  def dots(jaxpr) -> list:
    found = []
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        found.append(tuple(v.aval.shape for v in eqn.invars))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        if eqn.primitive.name == "custom_vjp_call":  # the LSTM's recurrence with its own backward pass
          found.extend(dots(sub))
        else:
          found.extend((eqn.primitive.name, s) for s in dots(sub))
    return found

  found = dots(jaxpr)
  inside = [s for where, s in (f for f in found if f[0] == "scan")]
  outside = [f for f in found if f[0] != "scan"]
  g = {"lstm": 4, "gru": 3}[cell]
  assert inside == [((B, H), (H, g * H))], found
  assert any((T, B, F) in shapes for shapes in outside), found  # all steps' inputs, time-major


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_backward_pass_equals_autodiff_of_the_scan(bidirectional):
  # Without a mask the LSTM runs rnn.lstm_recurrence, whose gradient is written out (gate gradients in the
  # reverse scan, the recurrent kernel's gradient as one matmul after it); with an all-true mask it runs
  # the generic scan, differentiated by JAX. Same loss, same gradients for every parameter, the inputs
  # and the initial state.
  layer = Recurrence("lstm", H, bidirectional=bidirectional)
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  d = 2 if bidirectional else 1
  c0 = jax.random.normal(jax.random.key(1), (d, B, H))
  h0 = jax.random.normal(jax.random.key(2), (d, B, H))
  variables = random_variables(layer, x)

  def loss(variables, x, c0, h0, mask):
    y, (c, h) = layer.apply(variables, x, mask, (c0, h0))
    return jnp.sum(jnp.sin(y)) + jnp.sum(c * c) + jnp.sum(jnp.cos(h))

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
  fused, generic = grad(variables, x, c0, h0, None), grad(variables, x, c0, h0, jnp.ones((B, T), bool))
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5), fused, generic)
  assert float(jnp.abs(fused[1][0]["params"]["recurrent_kernel"]).max()) > 0.01  # not vacuous


def test_per_step_input_projection_gives_the_same_values():
  # hoist_input only moves the input matmul into the scan: same parameters, same outputs and states.
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  lengths = jnp.array([5, 2, 4])
  hoisted = RecurrentLayer("gru", H, num_layers=2, bidirectional=True)
  per_step = RecurrentLayer("gru", H, num_layers=2, bidirectional=True, hoist_input=False)
  variables = random_variables(hoisted, x)
  a, b = jax.jit(lambda v: (hoisted.apply(v, x, lengths), per_step.apply(v, x, lengths)))(variables)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)


def test_padding_never_changes_the_outputs():
  # A padded batch gives each sequence exactly the outputs and final state it gets alone (two stacked
  # bidirectional LSTM layers; the masking is the same code for every cell).
  lengths = np.array([5, 2, 4])
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  x = x.at[1, 2:].set(7.0)  # Large "padding" values, which would show if they leaked.
  layer = RecurrentLayer("lstm", H, num_layers=2, bidirectional=True)
  variables = random_variables(layer, x)
  apply = jax.jit(layer.apply)
  padded, state = apply(variables, x, jnp.asarray(lengths))
  np.testing.assert_array_equal(padded[1, 2:], 0.0)
  for i, n in enumerate(lengths):
    alone, alone_state = apply(variables, x[i : i + 1, :n])
    np.testing.assert_allclose(padded[i : i + 1, :n], alone, rtol=1e-5, atol=1e-6)
    for per_layer, per_layer_alone in zip(state, alone_state, strict=True):
      jax.tree.map(
        lambda a, b, i=i: np.testing.assert_allclose(a[:, i : i + 1], b, rtol=1e-5, atol=1e-6),
        per_layer,
        per_layer_alone,
      )
  # A mask gives the same as the lengths it stands for.
  mask = jnp.arange(T)[None, :] < jnp.asarray(lengths)[:, None]
  np.testing.assert_allclose(apply(variables, x, mask=mask)[0], padded, atol=1e-6)
  with pytest.raises(ZooError, match="not both"):
    layer.apply(variables, x, jnp.asarray(lengths), mask)


def test_bidirectional_shapes():
  x = jnp.zeros((B, T, F))
  for cell in ("lstm", "gru"):
    for bidirectional, d in ((False, 1), (True, 2)):
      layer = RecurrentLayer(cell, H, num_layers=3, bidirectional=bidirectional)
      (outputs, state), _ = jax.eval_shape(
        lambda layer=layer: layer.init_with_output(jax.random.key(0), x)  # noqa: B023
      )
      assert outputs.shape == (B, T, d * H) and len(state) == 3
      carry = state[-1]
      shapes = [a.shape for a in jax.tree.leaves(carry)]
      assert shapes == [(d, B, H)] * (2 if cell == "lstm" else 1)


def test_classifier_ignores_padding():
  # Token 0 is padding: with every pooling, a sequence's logits are those it gets alone, without padding.
  pools = ("last", "mean", "max", "attention")
  models = [
    SequenceClassifier(vocab_size=20, embed_dim=4, hidden_size=H, pool=p, num_classes=3, cell="gru")
    for p in pools
  ]
  tokens = jax.random.randint(jax.random.key(0), (B, T), 1, 20)
  tokens = tokens.at[1, 3:].set(0).at[2, 2:].set(0)
  variables = [random_variables(m, tokens, seed=i) for i, m in enumerate(models)]

  @jax.jit
  def logits(variables, tokens):  # every pool's at once: one compilation per input shape
    return jnp.stack([m.apply(v, tokens) for m, v in zip(models, variables, strict=True)])  # (4, B, K)

  padded = logits(variables, tokens)
  assert padded.shape == (4, B, 3) and padded.dtype == jnp.float32
  for i, n in ((1, 3), (2, 2)):
    alone = logits(variables, tokens[i : i + 1, :n])
    np.testing.assert_allclose(padded[:, i], alone[:, 0], atol=1e-5, err_msg=f"sequence {i}")
  # ... while the real tokens do count: the same sequence cut to 2 tokens gives other logits.
  shorter = logits(variables, tokens.at[1, 2:].set(0))
  assert all(not np.allclose(shorter[k, 1], padded[k, 1], atol=1e-4) for k in range(len(pools)))


def test_attention_weights_are_zero_on_padding():
  h = jax.random.normal(jax.random.key(0), (B, T, 8))
  mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], bool)
  pool = AttentionPooling(4)
  variables = random_variables(pool, h, mask)

  @jax.jit
  def pooled_weights_and_grad(h):
    (pooled, weights), vjp = jax.vjp(lambda h: pool.apply(variables, h, mask), h)
    return pooled, weights, vjp((jnp.ones_like(pooled), jnp.zeros_like(weights)))[0]

  pooled, weights, grad = pooled_weights_and_grad(h)
  np.testing.assert_array_equal(weights[~mask], 0.0)
  np.testing.assert_allclose(jnp.sum(weights, axis=1), [1.0, 1.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(pooled, jnp.einsum("bt,btf->bf", weights, h), atol=1e-6)
  np.testing.assert_array_equal(pooled[2], 0.0)  # no real token: a zero vector, not NaN
  assert bool(jnp.all(weights[0] > 0)) and not np.allclose(weights[0], 1 / T)  # not uniform
  # Padding steps' features never reach the pooled vector: no gradient flows to them.
  np.testing.assert_array_equal(grad[~mask], 0.0)
  assert bool(jnp.all(jnp.isfinite(grad)))
  # Inside the classifier: its attention weights (captured) are 0 on the padding tokens.
  model = create_model("lstm_classifier_tiny")
  tokens = jnp.array([[5, 6, 7, 0, 0], [8, 0, 0, 0, 0]])
  variables = random_variables(model, tokens)
  capture = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]))
  _, captured = capture(variables, tokens)
  weights = captured["intermediates"]["attention"]["__call__"][0][1]
  np.testing.assert_array_equal(weights[tokens == 0], 0.0)
  np.testing.assert_allclose(jnp.sum(weights, axis=1), 1.0, atol=1e-6)


@pytest.fixture(scope="module")
def char_lm():
  model = create_model("char_lstm_tiny")
  prompt = jax.random.randint(jax.random.key(0), (2, 4), 0, model.vocab_size)
  return model, random_variables(model, prompt), prompt


def test_decode_carries_the_state(char_lm):
  model, variables, _ = char_lm
  tokens = jax.random.randint(jax.random.key(2), (2, 8), 0, model.vocab_size)
  decode = jax.jit(lambda v, x, state: model.apply(v, x, state, method="decode"))
  whole, _ = decode(variables, tokens, None)
  first, state = decode(variables, tokens[:, :4], None)
  second, _ = decode(variables, tokens[:, 4:], state)
  np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), whole, atol=1e-5)


def test_sampling(char_lm):
  model, variables, prompt = char_lm
  steps = 12
  a = sample_rnn(model, variables, prompt, steps, jax.random.key(0))
  assert a.shape == (2, steps) and a.dtype == jnp.int32
  assert bool(jnp.all((a >= 0) & (a < model.vocab_size)))
  compiled = _sample._cache_size()
  np.testing.assert_array_equal(sample_rnn(model, variables, prompt, steps, jax.random.key(0)), a)
  assert not np.array_equal(sample_rnn(model, variables, prompt, steps, jax.random.key(1)), a)
  greedy = sample_rnn(model, variables, prompt, steps, jax.random.key(0), temperature=0.0)
  cold = sample_rnn(model, variables, prompt, steps, jax.random.key(5), temperature=1e-4)
  assert _sample._cache_size() == compiled  # New rngs and temperatures reuse the compiled sampler.
  np.testing.assert_array_equal(cold, greedy)  # temperature -> 0 is greedy
  np.testing.assert_array_equal(
    sample_rnn(model, variables, prompt, steps, jax.random.key(3), top_k=1), greedy
  )
  # Greedy tokens are the argmax of the model's logits on the whole text so far (the state is right).
  apply = jax.jit(model.apply)
  text = jnp.concatenate([prompt, greedy], axis=1)
  logits = apply(variables, text[:, :-1])[:, prompt.shape[1] - 1 :]  # the predictions of the samples
  np.testing.assert_array_equal(jnp.argmax(logits, axis=-1), greedy)
  # top_k keeps the draws among the k likeliest tokens.
  sampled = sample_rnn(model, variables, prompt, steps, jax.random.key(4), temperature=5.0, top_k=3)
  logits = apply(variables, jnp.concatenate([prompt, sampled], axis=1)[:, :-1])[:, prompt.shape[1] - 1 :]
  top3 = jax.lax.top_k(logits, 3)[1]  # (2, steps, 3)
  assert bool(jnp.all(jnp.any(top3 == sampled[..., None], axis=-1)))
  with pytest.raises(ZooError, match="num_steps"):
    sample_rnn(model, variables, prompt, 0, jax.random.key(0))


def test_char_lstm_tiny_learns_a_repeating_string():
  text = "hello, world! " * 20
  chars = sorted(set(text))
  ids = np.array([chars.index(c) for c in text], np.int32)
  model = create_model("char_lstm_tiny", vocab_size=len(chars))
  starts = np.arange(0, 8 * 14, 14) + np.arange(8)  # 8 windows, at different phases of the pattern
  batch = jnp.asarray(np.stack([ids[s : s + 33] for s in starts]))  # (8, 33)
  inputs, targets = batch[:, :-1], batch[:, 1:]
  params = model.init(jax.random.key(0), inputs)["params"]
  tx = optax.adam(2e-2)

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      logits = model.apply({"params": p}, inputs)
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value

  opt_state = tx.init(params)
  losses = []
  for _ in range(60):
    params, opt_state, value = step(params, opt_state)
    losses.append(float(value))
  assert losses[0] > 2.0 and losses[-1] < 0.2, losses[::10]
  # Then greedy sampling continues the pattern.
  prompt = jnp.asarray(ids[None, :5])
  out = sample_rnn(model, {"params": params}, prompt, 14, jax.random.key(0), temperature=0.0)
  assert "".join(chars[i] for i in np.asarray(out[0])) == text[5:19]


def test_bad_choices_are_zoo_errors():
  with pytest.raises(ZooError, match="cell"):
    create_model("lstm_classifier", cell="lstn")
  with pytest.raises(ZooError, match="pool"):
    create_model("lstm_classifier", pool="sum")
  with pytest.raises(ZooError, match="dropout"):
    create_model("char_lstm", dropout=1.0)
  with pytest.raises(ZooError, match="cell"):
    CharLM(cell="transformer")
  with pytest.raises(ZooError, match="num_layers"):
    RecurrentLayer(num_layers=0)
