"""Recurrent networks: Elman's simple RNN (1990), the LSTM (Hochreiter & Schmidhuber 1997) with the forget
gate of Gers et al. (2000), the GRU (Cho et al. 2014); a sequence classifier with attention pooling (Yang et
al. 2016) and a character language model (Karpathy's char-rnn) with stateful sampling."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.models import register_model, tokens
from zoo.models.layers import check_choice
from zoo.models.regularized_layers import check_rate
from zoo.registry import ZooError

CELLS = ("rnn", "lstm", "gru")
POOLS = ("last", "mean", "max", "attention")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # Blocks of H columns in the fused kernels, in this order:
# rnn [h], lstm [input i, forget f, candidate g, output o] (PyTorch's order), gru [reset r, update z, new n].
PAD = 0  # The token id the classifier treats as padding.

# A carry per layer: h (D, B, H) for rnn and gru; (c, h), each (D, B, H), for the LSTM. D directions.
Carry = Any
State = tuple[Carry, ...]


def _per_gate(init: nn.initializers.Initializer, gates: int) -> nn.initializers.Initializer:
  """Draws a fused recurrent kernel (D, H, G*H) as D*G independent (H, H) blocks of `init`, so each gate's
  recurrent map is orthogonal (Saxe et al. 2014) rather than the fused (H, G*H) matrix as a whole."""

  def draw(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    d, h, _ = shape
    blocks = jax.vmap(lambda k: init(k, (h, h), dtype))(jax.random.split(key, d * gates))  # (D G, H, H)
    return blocks.reshape(d, gates, h, h).transpose(0, 2, 1, 3).reshape(d, h, gates * h)

  return draw


def _matmul(a: jax.Array, k: jax.Array, dtype: Any) -> jax.Array:
  """(D, B, K) @ (D, K, N) -> (D, B, N) in float32: one matmul per direction."""
  if a.shape[0] == 1:  # One direction: a plain matmul (no batch dimension for XLA to loop over).
    return jnp.dot(a[0].astype(dtype), k[0], preferred_element_type=jnp.float32)[None]
  return jnp.einsum("dbk,dkn->dbn", a.astype(dtype), k, preferred_element_type=jnp.float32)


def _step_fn(
  cell: str, kernel: jax.Array, recurrent_bias: jax.Array | None, reset_after: bool, dtype: Any
) -> Callable[[Carry, jax.Array], tuple[Carry, jax.Array]]:
  """The recurrent part of one time step: (carry, x_t W + b (D, B, G*H)) -> (new carry, new h (D, B, H)).

  The input projection is done before (for all steps at once, or just before in the same step), so this
  is one matmul of h with the fused recurrent kernel (two for the reset-before GRU) and the gates'
  elementwise maths, in float32.
  """
  hidden = kernel.shape[1]
  matmul = functools.partial(_matmul, dtype=dtype)

  def split(a: jax.Array, n: int) -> list[jax.Array]:
    return [a[..., i * hidden : (i + 1) * hidden] for i in range(n)]

  def step(carry: Carry, xw: jax.Array) -> tuple[Carry, jax.Array]:
    xw = xw.astype(jnp.float32)
    if cell == "rnn":  # Elman: h' = tanh(x W + b + h U)
      h = jnp.tanh(xw + matmul(carry, kernel))
      return h, h
    if cell == "lstm":  # i, f, o = sigmoid(.), g = tanh(.); c' = f c + i g; h' = o tanh(c')
      c, h = carry
      i, f, g, o = split(xw + matmul(h, kernel), 4)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (c, h), h
    h = carry  # GRU: r, z = sigmoid(.); h' = z h + (1 - z) n (Cho et al.'s eq. 7: z is the keep gate)
    x_r, x_z, x_n = split(xw, 3)
    if reset_after:  # cuDNN / PyTorch / Keras: n = tanh(x W_n + b_n + r (h U_n + b_hn)), one matmul
      h_r, h_z, h_n = split(matmul(h, kernel), 3)
      r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
      n = jnp.tanh(x_n + r * (h_n + recurrent_bias))
    else:  # Cho et al. 2014, eq. 8: n = tanh(x W_n + b_n + (r h) U_n), a second matmul after r
      h_r, h_z = split(matmul(h, kernel[..., : 2 * hidden]), 2)
      r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
      n = jnp.tanh(x_n + matmul(r * h, kernel[..., 2 * hidden :]))
    h = z * h + (1.0 - z) * n
    return h, h

  return step


def _lstm_gates(z: jax.Array) -> jax.Array:
  """Pre-activations (..., 4 H) in gate order i, f, g, o -> activations: sigmoid, sigmoid, tanh, sigmoid."""
  i, f, g, o = jnp.split(z, 4, axis=-1)
  return jnp.concatenate([jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)], axis=-1)


def _lstm_run(xw, kernel, c0, h0, dtype, unroll, keep):
  """The LSTM recurrence over xw (T, D, B, 4 H) (the projected inputs plus bias) from (c0, h0) (D, B, H):
  (hs (T, D, B, H), (c, h)); with `keep` also the cells (T, D, B, H) and gate activations (T, D, B, 4 H)
  that the backward pass reads."""

  def step(carry, x_t):
    c, h = carry
    a = _lstm_gates(x_t.astype(jnp.float32) + _matmul(h, kernel, dtype))  # (D, B, 4 H)
    i, f, g, o = jnp.split(a, 4, axis=-1)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (c, h), ((h, c, a) if keep else h)

  return jax.lax.scan(step, (c0, h0), xw, unroll=unroll)


def lstm_recurrence(xw, kernel, c0, h0, dtype: Any = jnp.float32, unroll: int = 1):
  """hs (T, D, B, H) and the final (c, h) of an LSTM over xw (T, D, B, 4 H) = x W + b, with recurrent
  kernel (D, H, 4 H) (matmuls in `dtype`, float32 accumulation and state) from (c0, h0) (D, B, H).

  Its gradient is written out (as cuDNN's and PyTorch's LSTMs do) rather than left to autodiff of the scan:
  the reverse scan computes only each step's gate gradients and dh @ U^T, and the recurrent kernel's
  gradient is one (H, T B) @ (T B, 4 H) matmul after it, where autodiff of the scan adds a (B, H)^T @ (B, 4 H)
  product into a carried (H, 4 H) accumulator at every step (T passes over the kernel's memory). The same
  mathematics; float32 rounding differs.
  """
  return _lstm_recurrence(jnp.dtype(dtype), unroll)(xw, kernel, c0, h0)


@functools.cache
def _lstm_recurrence(dtype: Any, unroll: int) -> Callable:
  @jax.custom_vjp
  def recurrence(xw, kernel, c0, h0):
    (c, h), hs = _lstm_run(xw, kernel, c0, h0, dtype, unroll, keep=False)
    return hs, (c, h)

  def fwd(xw, kernel, c0, h0):
    (c, h), (hs, cs, acts) = _lstm_run(xw, kernel, c0, h0, dtype, unroll, keep=True)
    return (hs, (c, h)), (hs, cs, acts, kernel, c0, h0, jnp.zeros((), xw.dtype))

  def bwd(res, cotangents):
    hs, cs, acts, kernel, c0, h0, xw_zero = res
    dhs, (dc_last, dh_last) = cotangents
    c_prev = jnp.concatenate([c0[None], cs[:-1]])  # c_{t-1} (T, D, B, H)
    kernel_t = jnp.swapaxes(kernel, 1, 2)  # (D, 4 H, H)

    def step(carry, inputs):
      dc_next, dh_next = carry
      dh_out, c, cp, a = inputs
      i, f, g, o = jnp.split(a, 4, axis=-1)
      dh = dh_out.astype(jnp.float32) + dh_next
      tc = jnp.tanh(c)
      dc = dc_next + dh * o * (1.0 - tc * tc)
      dz = jnp.concatenate(
        [dc * g * i * (1.0 - i), dc * cp * f * (1.0 - f), dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)],
        axis=-1,
      )  # (D, B, 4 H): the gradient of the gates' pre-activations
      return (dc * f, _matmul(dz, kernel_t, dtype)), dz

    inputs = (dhs, cs, c_prev, acts)
    (dc0, dh0), dzs = jax.lax.scan(step, (dc_last, dh_last), inputs, reverse=True, unroll=unroll)
    h_prev = jnp.concatenate([h0[None], hs[:-1]])  # h_{t-1} (T, D, B, H)
    dkernel = jnp.einsum(
      "tdbh,tdbg->dhg", h_prev.astype(dtype), dzs.astype(dtype), preferred_element_type=jnp.float32
    )
    return dzs.astype(xw_zero.dtype), dkernel.astype(kernel.dtype), dc0, dh0

  recurrence.defvjp(fwd, bwd)
  return recurrence


def zero_carry(cell: str, directions: int, batch_size: int, hidden_size: int) -> Carry:
  """The zero initial state of one layer (float32): h, or (c, h) for the LSTM, each (D, B, H)."""
  h = jnp.zeros((directions, batch_size, hidden_size), jnp.float32)
  return (h, h) if cell == "lstm" else h


def _hidden(carry: Carry) -> jax.Array:
  return carry[1] if isinstance(carry, tuple) else carry


class Recurrence(nn.Module):
  """One recurrent layer over (B, T, I) inputs in one or both directions: outputs (B, T, D*H), final carry.

  Dimensions: B batch, T time, I input features, H `hidden_size`, G gate blocks (1 rnn, 4 lstm, 3 gru),
  D directions (2 if `bidirectional`). With `hoist_input` (the default) the input projection of every
  step is one (T B, I) @ (I, G H) matmul per direction before the recurrence and the scan does only
  h @ U and the gates; without it each step projects its own input next to h @ U (same parameters, same
  values). The two directions run in one scan (batched (D, B, H) @ (D, H, G H) matmuls): T sequential
  steps, not 2T.

  Speed on the zoo's 2-core CPU (forward + backward, jitted, B=64 T=100 I=128, single-threaded XLA CPU
  time, medians): LSTM H=128 hoisted ~105 ms, per-step ~80 ms, flax `nn.RNN(nn.OptimizedLSTMCell)`
  ~72 ms; 2 LSTM layers of H=512 at B=32: hoisted ~850 ms, per-step ~925 ms, flax ~870 ms. On XLA CPU
  the small per-step matmuls are latency-bound, so hoisting removes no work there and adds a (T, B, G H)
  array's memory traffic; it pays where the hidden size is large (and on accelerators, where it is the
  cuDNN layout).

  `mask` (B, T) bool marks the real steps. At a masked step the state is held and the output is 0, so
  padding anywhere never changes a real step's output: the reverse direction runs the flipped sequence,
  holds its zero initial state through the trailing padding and starts at each sequence's last real
  token. The final carry is the forward direction's state after its last real token and the reverse
  direction's after its first.

  Parameters: 'input_kernel' (I, D G H), 'bias' (D G H), 'recurrent_kernel' (D, H, G H) and, for the
  reset-after GRU, 'recurrent_bias' (D, H). Initialisation: LeCun-normal input kernels (fan-in = I for
  each gate), an orthogonal recurrent kernel per gate block, zero biases except the LSTM's forget gate,
  `forget_bias` (Gers et al. 2000; Jozefowicz et al. 2015 recommend 1).
  """

  cell: Literal["rnn", "lstm", "gru"] = "lstm"
  hidden_size: int = 128
  bidirectional: bool = False
  forget_bias: float = 1.0
  reset_after: bool = True
  hoist_input: bool = True
  unroll: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, x: jax.Array, mask: jax.Array | None = None, initial_carry: Carry | None = None
  ) -> tuple[jax.Array, Carry]:
    b, t, _ = x.shape
    h, g = self.hidden_size, GATES[self.cell]
    d = 2 if self.bidirectional else 1

    def bias_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
      bias = jnp.zeros((d, g, h), dtype)
      if self.cell == "lstm":
        bias = bias.at[:, 1].set(self.forget_bias)  # gate order i, f, g, o
      return bias.reshape(shape)

    input_kernel = self.param(
      "input_kernel", nn.initializers.lecun_normal(), (x.shape[-1], d * g * h), self.param_dtype
    )
    bias = self.param("bias", bias_init, (d * g * h,), self.param_dtype)
    kernel = self.param(
      "recurrent_kernel", _per_gate(nn.initializers.orthogonal(), g), (d, h, g * h), self.param_dtype
    )
    recurrent_bias = None
    if self.cell == "gru" and self.reset_after:
      recurrent_bias = self.param("recurrent_bias", nn.initializers.zeros, (d, h), self.param_dtype)
      recurrent_bias = recurrent_bias.astype(jnp.float32)[:, None, :]  # (D, 1, H)

    # Time-major for the scan, the reverse direction reading the flipped sequence: D of (T, B, I). The
    # input is transposed before the input projection rather than its G-times-wider result after it: on
    # XLA CPU a matmul writing a transposed layout measured several times slower.
    xs = [x.astype(self.dtype).transpose(1, 0, 2)]
    masks = [None if mask is None else mask.T[:, :, None]]  # (T, B, 1)
    if d == 2:
      xs.append(jnp.flip(xs[0], 0))
      masks.append(None if mask is None else jnp.flip(masks[0], 0))
    w_in = input_kernel.astype(self.dtype).reshape(-1, d, g * h).transpose(1, 0, 2)  # (D, I, G H)
    b_in = bias.astype(self.dtype).reshape(d, 1, g * h)
    if self.hoist_input:  # Every step's input projection at once, one matmul per direction: (T, B, G H).
      xs = [jnp.dot(xs[j], w_in[j]) + b_in[j][None] for j in range(d)]
      project = lambda x_t: x_t
    else:  # Each step projects its own input, next to the recurrent matmul.
      project = lambda x_t: _matmul(x_t, w_in, self.dtype) + b_in

    step = _step_fn(self.cell, kernel.astype(self.dtype), recurrent_bias, self.reset_after, self.dtype)

    def masked_step(carry: Carry, inputs: tuple[list, list]) -> tuple[Carry, list[jax.Array]]:
      x_t, m_t = inputs
      new, out = step(carry, project(jnp.stack(x_t)))  # x W + b (D, B, G H) -> out (D, B, H)
      if mask is not None:  # Padding: hold the state, output 0.
        m_t = jnp.stack(m_t)  # (D, B, 1)
        new = jax.tree.map(lambda a, c: jnp.where(m_t, a, c), new, carry)
        out = jnp.where(m_t, out, jnp.zeros((), out.dtype))
      return new, [o.astype(self.dtype) for o in out]

    carry = zero_carry(self.cell, d, b, h) if initial_carry is None else initial_carry
    if self.cell == "lstm" and mask is None and self.hoist_input:  # The LSTM with its own backward pass.
      hs, carry = lstm_recurrence(
        jnp.stack(xs, 1), kernel.astype(self.dtype), *carry, self.dtype, self.unroll
      )
      ys = [hs[:, j].astype(self.dtype) for j in range(d)]  # D of (T, B, H)
    else:
      carry, ys = jax.lax.scan(masked_step, carry, (xs, masks), unroll=self.unroll)  # D of (T, B, H)
    if d == 2:
      ys[1] = jnp.flip(ys[1], 0)
    return jnp.concatenate(ys, axis=-1).transpose(1, 0, 2), carry  # (B, T, D H)


class RecurrentLayer(nn.Module):
  """`num_layers` stacked recurrent layers (each of `Recurrence`), dropout on the inputs of layers 2 and up.

  Call: `outputs, state = layer(x, lengths=None, mask=None, initial_state=None, train=False)`.
  x (B, T, I); `lengths` (B,) (steps at or after a sequence's length are padding) or `mask` (B, T) bool
  (True on real steps), neither for full sequences. Outputs (B, T, D H) in `dtype`, 0 at padding; the
  reverse direction's half is the last D H / 2 features. `state`: one carry per layer (see `zero_carry`),
  float32, to continue the sequence from (`initial_state`) as the char LM's sampling does.

  `cell`: 'rnn' (Elman, tanh), 'lstm' or 'gru'. `reset_after` picks the GRU variant: True (default) is
  cuDNN's and PyTorch's, r (h U_n + b_hn), one recurrent matmul per step; False is Cho et al.'s own,
  (r h) U_n. `hoist_input` and `unroll` (time steps per scan iteration) change the speed only (see
  `Recurrence`).
  """

  cell: Literal["rnn", "lstm", "gru"] = "lstm"
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  forget_bias: float = 1.0
  reset_after: bool = True
  hoist_input: bool = True
  unroll: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    check_choice(self.cell, CELLS, "cell")
    check_rate(self.dropout, "dropout")
    if self.num_layers < 1 or self.hidden_size < 1 or self.unroll < 1:
      raise ZooError(
        f"a recurrent layer needs num_layers, hidden_size and unroll >= 1, got {self.num_layers}, "
        f"{self.hidden_size} and {self.unroll}"
      )
    super().__post_init__()

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    lengths: jax.Array | None = None,
    mask: jax.Array | None = None,
    initial_state: State | None = None,
    *,
    train: bool = False,
  ) -> tuple[jax.Array, State]:
    if lengths is not None:
      if mask is not None:
        raise ZooError("give a recurrent layer lengths or a mask, not both")
      mask = jnp.arange(x.shape[1])[None, :] < lengths[:, None]  # (B, T)
    if initial_state is not None and len(initial_state) != self.num_layers:
      raise ZooError(f"initial_state has {len(initial_state)} layers' carries, not {self.num_layers}")
    state = []
    for i in range(self.num_layers):
      if i > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      layer = Recurrence(
        self.cell,
        self.hidden_size,
        self.bidirectional,
        self.forget_bias,
        self.reset_after,
        self.hoist_input,
        self.unroll,
        self.dtype,
        self.param_dtype,
        name=f"layer{i}",
      )
      x, carry = layer(x, mask, None if initial_state is None else initial_state[i])
      state.append(carry)
    return x, tuple(state)


class AttentionPooling(nn.Module):
  """Additive attention over time (Bahdanau et al. 2015's scoring; Yang et al. 2016's pooling with a
  learned context vector): u_t = tanh(h_t W + b), a = softmax_t(u_t . u_w) over the real steps only,
  pooled = sum_t a_t h_t. Call: `pooled (B, F), weights (B, T) = pool(h (B, T, F), mask (B, T))`; the
  weights are exactly 0 on padding (and all 0 for a sequence with no real step, whose pooled vector is 0).
  """

  attention_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    project = nn.Dense(self.attention_dim, kernel_init=nn.initializers.glorot_uniform(), name="project", **kw)
    u = jnp.tanh(project(h))  # (B, T, A)
    scores = nn.Dense(1, use_bias=False, name="context", **kw)(u)[..., 0].astype(jnp.float32)  # (B, T)
    scores = jnp.where(mask, scores, -jnp.inf)
    top = jnp.max(scores, axis=1, keepdims=True)
    e = jnp.where(mask, jnp.exp(scores - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)  # (B, T)
    weights = e / jnp.maximum(jnp.sum(e, axis=1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    pooled = jnp.einsum("bt,btf->bf", weights.astype(self.dtype), h)  # (B, F)
    return pooled, weights


class SequenceClassifier(nn.Module):
  """Token ids (B, T) -> embedding -> dropout -> recurrent layer -> pooling -> dropout -> Dense K.

  Input: int token ids (B, T); id 0 (`PAD`) is padding, wherever it is (a sequence's length is its count of
  non-zero tokens when the padding trails, as the zoo's text datasets pad). Output: float32 logits (B, K).

  Dimensions: V `vocab_size`, E `embed_dim`, H `hidden_size`, D directions, K classes. `pool`:
  - 'last': the final states: the forward direction's at the last real token and, bidirectional, the
    reverse direction's at the first (the state that has read the whole sequence from either end);
  - 'mean' / 'max': over the real steps of the top layer's outputs (a sequence with no real token
    pools to 0);
  - 'attention' (default): `AttentionPooling` with `attention_dim` (None: D H) units.
  `dropout` acts on every non-recurrent connection (Zaremba et al. 2014): the embeddings, between stacked
  layers and before the head. Deterministic without a 'dropout' rng (evaluation).
  """

  vocab_size: int = 20000
  embed_dim: int = 128
  cell: Literal["rnn", "lstm", "gru"] = "lstm"
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = True
  pool: Literal["last", "mean", "max", "attention"] = "attention"
  attention_dim: int | None = None
  dropout: float = 0.0
  forget_bias: float = 1.0
  reset_after: bool = True
  num_classes: int = 2
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    check_choice(self.pool, POOLS, "pool")
    check_choice(self.cell, CELLS, "cell")
    check_rate(self.dropout, "dropout")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mask = x != PAD  # (B, T)
    h = nn.Embed(self.vocab_size, self.embed_dim, name="embedding", **kw)(x)  # (B, T, E)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    rnn = RecurrentLayer(
      self.cell,
      self.hidden_size,
      self.num_layers,
      self.bidirectional,
      self.dropout,
      self.forget_bias,
      self.reset_after,
      name="rnn",
      **kw,
    )
    h, state = rnn(h, mask=mask, train=train)  # (B, T, D H)
    m = mask[..., None]  # (B, T, 1)
    count = jnp.sum(m, axis=1)  # (B, 1)
    if self.pool == "last":
      top = _hidden(state[-1])  # (D, B, H)
      pooled = jnp.concatenate(list(top), axis=-1).astype(self.dtype)  # (B, D H)
    elif self.pool == "mean":
      pooled = jnp.sum(h, axis=1) / jnp.maximum(count, 1).astype(h.dtype)  # padding outputs are 0
    elif self.pool == "max":
      pooled = jnp.max(jnp.where(m, h, jnp.asarray(-jnp.inf, h.dtype)), axis=1)
      pooled = jnp.where(count > 0, pooled, jnp.zeros((), h.dtype))
    else:
      attention_dim = self.attention_dim or h.shape[-1]
      pooled, _ = AttentionPooling(attention_dim, name="attention", **kw)(h, mask)
    pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
    return nn.Dense(self.num_classes, name="head", **kw)(pooled).astype(jnp.float32)  # (B, K)


class CharLM(nn.Module):
  """A recurrent language model: tokens (B, T) -> embedding -> stacked unidirectional recurrent layer ->
  Dense V: float32 logits (B, T, V) of each next token (position t predicts token t + 1).

  `decode(tokens, state=None)` -> (logits, state) continues from a previous state (None: zeros), so that
  `sample_rnn` feeds one token per step without re-reading the prefix. No padding: every token is read.
  `dropout` on every non-recurrent connection (Zaremba et al. 2014): embeddings, between layers, before
  the output layer; deterministic without a 'dropout' rng.
  """

  vocab_size: int = 65
  embed_dim: int = 128
  cell: Literal["rnn", "lstm", "gru"] = "lstm"
  hidden_size: int = 512
  num_layers: int = 2
  dropout: float = 0.0
  forget_bias: float = 1.0
  reset_after: bool = True
  unroll: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    check_choice(self.cell, CELLS, "cell")
    check_rate(self.dropout, "dropout")
    super().__post_init__()

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embedding = nn.Embed(self.vocab_size, self.embed_dim, **kw)
    self.rnn = RecurrentLayer(
      self.cell,
      self.hidden_size,
      self.num_layers,
      False,
      self.dropout,
      self.forget_bias,
      self.reset_after,
      unroll=self.unroll,
      **kw,
    )
    self.drop = nn.Dropout(self.dropout)
    self.head = nn.Dense(self.vocab_size, **kw)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    return self.decode(x, train=train)[0]

  def decode(
    self, x: jax.Array, state: State | None = None, *, train: bool = False
  ) -> tuple[jax.Array, State]:
    """Logits (B, T, V) float32 for tokens (B, T) read after `state` (None: the start), and the state after
    them (one carry per layer, see `zero_carry`)."""
    h = self.drop(self.embedding(x), deterministic=not train)  # (B, T, E)
    h, state = self.rnn(h, initial_state=state, train=train)  # (B, T, H)
    h = self.drop(h, deterministic=not train)
    return self.head(h).astype(jnp.float32), state


def sample_rnn(
  model: CharLM,
  variables: Any,
  prompt_tokens: jax.Array,
  num_steps: int,
  rng: jax.Array,
  temperature: float = 1.0,
  top_k: int | None = None,
) -> jax.Array:
  """Samples `num_steps` tokens after `prompt_tokens` (B, P), P >= 1, from a `CharLM`: int32 (B, num_steps).

  The prompt is read once; then each step feeds only the last sampled token and the carried state. Tokens
  are drawn from softmax(logits / temperature), among the `top_k` most likely when given; temperature 0
  takes the most likely token (greedy). Compiled once per (model, prompt shape, num_steps, top_k): the
  temperature and rng are traced values.
  """
  prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
  if prompt_tokens.ndim != 2 or prompt_tokens.shape[1] < 1:
    raise ZooError(f"sample_rnn needs prompt tokens (B, P) with P >= 1, got shape {prompt_tokens.shape}")
  if num_steps < 1:
    raise ZooError(f"sample_rnn needs num_steps >= 1, got {num_steps}")
  if top_k is not None and top_k < 1:
    raise ZooError(f"top_k must be >= 1 (or None for all tokens), got {top_k}")
  return _sample(model, num_steps, top_k, variables, prompt_tokens, rng, jnp.float32(temperature))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _sample(
  model: CharLM,
  num_steps: int,
  top_k: int | None,
  variables: Any,
  prompt: jax.Array,
  rng: jax.Array,
  temperature: jax.Array,
) -> jax.Array:
  def pick(logits: jax.Array, key: jax.Array) -> jax.Array:  # logits (B, V) -> tokens (B,)
    if top_k is not None and top_k < logits.shape[-1]:
      kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # (B, 1)
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    greedy = jnp.argmax(logits, axis=-1)
    scaled = logits / jnp.maximum(temperature, jnp.finfo(jnp.float32).tiny)
    return jnp.where(temperature > 0, jax.random.categorical(key, scaled, axis=-1), greedy).astype(jnp.int32)

  def step(carry: tuple[jax.Array, State], key: jax.Array) -> tuple[tuple[jax.Array, State], jax.Array]:
    logits, state = carry
    token = pick(logits, key)
    logits, state = model.apply(variables, token[:, None], state, method="decode")
    return (logits[:, -1], state), token

  keys = jax.random.split(rng, num_steps)
  logits, state = model.apply(variables, prompt, method="decode")  # The prompt, read once.
  (logits, _), tokens_ = jax.lax.scan(step, (logits[:, -1], state), keys[:-1])  # (num_steps - 1, B)
  last = pick(logits, keys[-1])
  return jnp.concatenate([tokens_.T, last[:, None]], axis=1)  # (B, num_steps)


# ---------------------------------------------------------------------------------------------------
# Variants.

# The classifiers: a 20,000-word vocabulary, 128-wide embeddings, a 128-unit bidirectional layer and
# attention pooling (Yang et al. 2016 use 200/50-unit bidirectional GRUs; these widths are the Keras IMDB
# LSTM's); two classes (SST-2, IMDB).
CLASSIFIER = dict(vocab_size=20000, embed_dim=128, hidden_size=128, bidirectional=True, pool="attention")
# Karpathy's char-rnn (2015): 2 layers of 512 units is its "Paul Graham essays" model ("approx. 3.5 million
# parameters") and the README's suggested size for ~1 MB of text; the 65 characters of tinyshakespeare. It
# feeds one-hot characters; a 128-wide embedding (>= 65) can represent any such first-layer projection.
CHAR = dict(vocab_size=65, embed_dim=128, hidden_size=512, num_layers=2)


def _classifier(cell: str, kw: dict[str, Any]) -> SequenceClassifier:
  return SequenceClassifier(**{**CLASSIFIER, "cell": cell, **kw})


@register_model(input_shape=(64,), example=tokens(20000, 64))
def lstm_classifier(**kw) -> SequenceClassifier:
  return _classifier("lstm", kw)


@register_model(input_shape=(64,), example=tokens(20000, 64))
def gru_classifier(**kw) -> SequenceClassifier:
  return _classifier("gru", kw)


@register_model(input_shape=(64,), example=tokens(20000, 64))
def rnn_classifier(**kw) -> SequenceClassifier:
  return _classifier("rnn", kw)


@register_model(input_shape=(16,), example=tokens(500, 16))
def lstm_classifier_tiny(**kw) -> SequenceClassifier:
  """A 500-word, 16-wide bidirectional LSTM classifier with attention pooling (~17k parameters)."""
  return SequenceClassifier(**{**CLASSIFIER, "vocab_size": 500, "embed_dim": 16, "hidden_size": 16, **kw})


@register_model(kind="lm", input_shape=(64,), example=tokens(65, 64))
def char_lstm(**kw) -> CharLM:
  return CharLM(**{**CHAR, "cell": "lstm", **kw})


@register_model(kind="lm", input_shape=(64,), example=tokens(65, 64))
def char_gru(**kw) -> CharLM:
  return CharLM(**{**CHAR, "cell": "gru", **kw})


@register_model(kind="lm", input_shape=(32,), example=tokens(65, 32))
def char_lstm_tiny(**kw) -> CharLM:
  """Two 64-unit LSTM layers over 32-wide character embeddings (~60k parameters)."""
  return CharLM(**{**CHAR, "embed_dim": 32, "hidden_size": 64, "cell": "lstm", **kw})
