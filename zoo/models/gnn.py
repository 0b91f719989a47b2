"""Graph networks for node classification: GCN (Kipf & Welling 2017) and GAT (Velickovic et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.models import register_model
from zoo.models.layers import get_activation
from zoo.models.regularized_layers import check_rate
from zoo.registry import ZooError

# Dimensions: N nodes, F input features per node, E directed edges (E' = E + N with a self loop per node),
# K attention heads, D features per head, C classes.
#
# A graph is the dict {"features": (N, F) float, "edges": (E, 2) int (sender, receiver)}: the batch axis is
# the node axis and one batch is one whole graph. An undirected graph lists each edge in both directions
# (zoo.data.planetoid's Graph.edges does); the layers add the self loops, so `edges` must have none.
# Messages flow from sender to receiver, gathered per edge and summed per receiver with
# jax.ops.segment_sum: memory and time O(E F), never a dense N x N matrix.

glorot_uniform = nn.initializers.glorot_uniform()
# GAT's kernel (F, K, D): one Glorot matrix F x D per head, as K separate linear maps would be drawn.
glorot_per_head = nn.initializers.glorot_uniform(in_axis=0, out_axis=-1, batch_axis=1)
# GAT's attention vector a in R^(2D) per head (K, 2D): Glorot for the 2D x 1 weight matrix of the
# paper's single-layer feed-forward attention network, U(+-sqrt(6 / (2D + 1))).
glorot_attention = nn.initializers.variance_scaling(
  1.0, "fan_avg", "uniform", in_axis=-1, out_axis=(), batch_axis=0
)


def _graph_arrays(graph: Any, where: str) -> tuple[jax.Array, jax.Array]:
  """The (features, edges) of a graph dict, checked for shape (at trace time: shapes are static)."""
  if not isinstance(graph, Mapping) or not {"features", "edges"} <= set(graph):
    raise ZooError(
      f"{where} takes a graph: a dict with 'features' (N, F) and 'edges' (E, 2), got {type(graph).__name__}"
      + (f" with keys {sorted(graph)}" if isinstance(graph, Mapping) else "")
    )
  features, edges = jnp.asarray(graph["features"]), jnp.asarray(graph["edges"])
  if (
    features.ndim != 2
    or edges.ndim != 2
    or edges.shape[1] != 2
    or not jnp.issubdtype(edges.dtype, jnp.integer)
  ):
    raise ZooError(
      f"{where}: want features (N, F) and integer edges (E, 2) of (sender, receiver) pairs, got features "
      f"{features.shape} and edges {edges.shape} {edges.dtype}"
    )
  return features, edges


def _select(graph: Mapping[str, jax.Array], logits: jax.Array) -> jax.Array:
  """The rows of the nodes in graph['index'] (a batch of node ids) when given, else all of them."""
  return logits[graph["index"]] if "index" in graph else logits


def add_self_loops(edges: jax.Array, num_nodes: int) -> tuple[jax.Array, jax.Array]:
  """(senders, receivers), each (E + N,): the edges followed by one self loop (i, i) per node."""
  loops = jnp.arange(num_nodes, dtype=edges.dtype)
  return jnp.concatenate([edges[:, 0], loops]), jnp.concatenate([edges[:, 1], loops])


def gcn_norm(edges: jax.Array, num_nodes: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The renormalised adjacency D^-1/2 (A + I) D^-1/2 of Kipf & Welling (eq. 2) as weighted edges.

  Returns (senders, receivers, weights), each (E + N,): the edges then a self loop per node, and the weight
  1 / sqrt(d_sender d_receiver) of each, in float32, where d_i is node i's degree in A + I (its count of
  incoming edges plus one, so an isolated node keeps its own features with weight 1). For an undirected
  graph (both directions listed) that is the paper's symmetric matrix; `edges` must hold no self loops.

  Args:
    edges: (E, 2) int (sender, receiver) pairs.
    num_nodes: N, the number of nodes (static).
  """
  senders, receivers = add_self_loops(jnp.asarray(edges), num_nodes)
  degree = jax.ops.segment_sum(jnp.ones(receivers.shape, jnp.float32), receivers, num_nodes)  # (N,) >= 1
  inv_sqrt = jax.lax.rsqrt(degree)
  return senders, receivers, inv_sqrt[senders] * inv_sqrt[receivers]


def edge_softmax(logits: jax.Array, receivers: jax.Array, num_nodes: int) -> jax.Array:
  """Softmax of per-edge `logits` (E, ...) over the edges that share a receiver, in float32.

  Stable: each receiver's maximum (jax.ops.segment_max) is subtracted first. The maximum is a constant to
  the gradient (stop_gradient): softmax does not depend on it, so the gradient stays exact and the
  backward pass skips segment_max's. Every receiver named in `receivers` gets weights summing to 1.
  """
  logits = logits.astype(jnp.float32)
  peak = jax.lax.stop_gradient(jax.ops.segment_max(logits, receivers, num_nodes))  # (N, ...)
  z = jnp.exp(logits - peak[receivers])  # (E, ...) in (0, 1]
  return z / jax.ops.segment_sum(z, receivers, num_nodes)[receivers]


def gat_attention(
  h: jax.Array, attention: jax.Array, senders: jax.Array, receivers: jax.Array, negative_slope: float = 0.2
) -> jax.Array:
  """GAT's normalised attention coefficients alpha_ij (Velickovic et al. eq. 3), (E, K) float32.

  For each edge j -> i (sender j, receiver i) and head: softmax over i's incoming edges of
  LeakyReLU(a^T [h_i || h_j]).

  Args:
    h: (N, K, D) the transformed node features W h of each head.
    attention: (K, 2 D) each head's attention vector a = [a_receiver || a_sender].
    senders, receivers: (E,) the edges, self loops included (a node without incoming edges gets none).
    negative_slope: the LeakyReLU's slope for negative inputs (the paper's 0.2).
  """
  d = h.shape[-1]
  # a^T [h_i || h_j] = a_receiver . h_i + a_sender . h_j: two scores per node, then one add per edge.
  score_receiver = jnp.einsum("nkd,kd->nk", h, attention[:, :d]).astype(jnp.float32)  # (N, K)
  score_sender = jnp.einsum("nkd,kd->nk", h, attention[:, d:]).astype(jnp.float32)  # (N, K)
  logits = jax.nn.leaky_relu(score_receiver[receivers] + score_sender[senders], negative_slope)  # (E, K)
  return edge_softmax(logits, receivers, h.shape[0])


class GCNLayer(nn.Module):
  """One graph convolution (Kipf & Welling eq. 2, before the activation): D^-1/2 (A + I) D^-1/2 X W + b.

  (N, F) -> (N, `features`). The self loops are added here, from the (E, 2) edge list A. A model of several
  layers can pass `norm=gcn_norm(edges, N)` computed once; else the layer computes it. Glorot-uniform
  kernel and a zero bias added after propagation; parameters 'kernel' (F, features) and 'bias'.
  """

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, x: jax.Array, edges: jax.Array, norm: tuple[jax.Array, jax.Array, jax.Array] | None = None
  ) -> jax.Array:
    num_nodes, in_features = x.shape
    kernel = self.param("kernel", glorot_uniform, (in_features, self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    senders, receivers, weights = gcn_norm(edges, num_nodes) if norm is None else norm
    weights = weights.astype(x.dtype)[:, None]  # (E', 1)

    def propagate(h: jax.Array) -> jax.Array:  # (N, H) -> (N, H)
      return jax.ops.segment_sum(weights * h[senders], receivers, num_nodes)

    # A (X W) = (A X) W: propagate on the narrower side (Cora's first layer: 16 columns, not 1,433).
    if self.features <= in_features:
      y = propagate(x @ kernel)
    else:
      y = propagate(x) @ kernel
    return y + bias[None, :]  # (N, features)


class GCN(nn.Module):
  """Graph convolutional network (Kipf & Welling 2017): [dropout -> GCNLayer -> activation] per hidden
  width, then dropout -> GCNLayer to C logits.

  Input: {"features": (N, F) float, "edges": (E, 2) int, both directions, no self loops}; output: float32
  logits (N, C) for every node (the task picks the labelled ones with its masks). The defaults are the
  paper's Cora model: 16 hidden ReLU units, dropout 0.5 on the input of each layer (the features too),
  Glorot init, a bias in each layer: 1433*16 + 16 + 16*7 + 7 = 23,063 parameters on Cora. The paper
  row-normalises the features first (zoo.data.planetoid.row_normalize): the data's or task's business.

  The paper's weight decay, 5e-4 on the first layer's weights only, is an L2 term in the loss (its Adam
  sees the penalty's gradient), the task's and optimiser's business: the first layer's kernel is
  params['GCNLayer_0']['kernel'], path 'GCNLayer_0/kernel', which the pattern 'GCNLayer_0/*kernel' selects
  (e.g. zoo.regularizers.penalty(params, l2=5e-4, pattern='GCNLayer_0/*kernel')). Decoupled AdamW decay
  of 5e-4 at learning rate 0.01 shrinks weights 5e-6 per step: a different, far weaker regulariser.
  """

  hidden_sizes: tuple[int, ...] = (16,)
  num_classes: int = 7
  dropout: float = 0.5
  activation: str = "relu"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    get_activation(self.activation)
    check_rate(self.dropout, "dropout")
    super().__post_init__()

  @nn.compact
  def __call__(self, graph: Mapping[str, jax.Array], *, train: bool = False) -> jax.Array:
    x, edges = _graph_arrays(graph, "GCN")
    norm = gcn_norm(edges, x.shape[0])  # Shared by every layer.
    act = get_activation(self.activation)
    widths = (*self.hidden_sizes, self.num_classes)
    for i, width in enumerate(widths):
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = GCNLayer(width, self.dtype, self.param_dtype)(x, edges, norm)  # (N, width)
      if i < len(widths) - 1:
        x = act(x)
    return _select(graph, x.astype(jnp.float32))  # (N, C), or (B, C) for graph['index'] (B,)


class GATLayer(nn.Module):
  """One graph attention layer (Velickovic et al. 2018, eqs. 1-6) with K heads of D features.

  Per head: h = X W (N, D); for each edge j -> i of the graph with a self loop per node added here,
  e_ij = LeakyReLU(a^T [h_i || h_j]) with slope 0.2, alpha_ij = softmax of e_ij over i's neighbourhood
  incl. i itself (`gat_attention`), output_i = sum_j alpha_ij h_j. Heads concatenated, (N, K D), or
  averaged, (N, D) (the paper's output layer). Dropout `attention_dropout` on the normalised coefficients
  in training; no activation here. Parameters: 'kernel' (F, K, D) Glorot per head, 'attention_kernel'
  (K, 2D) = [a_receiver || a_sender] per head, and 'bias' (K D or D) added after aggregation (the authors'
  code has it; the paper's equations omit it).
  """

  features: int
  num_heads: int = 1
  concat: bool = True
  attention_dropout: float = 0.0
  negative_slope: float = 0.2
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, edges: jax.Array, *, train: bool = False) -> jax.Array:
    num_nodes, in_features = x.shape
    k, d = self.num_heads, self.features
    kernel = self.param("kernel", glorot_per_head, (in_features, k, d), self.param_dtype)
    attention = self.param("attention_kernel", glorot_attention, (k, 2 * d), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (k * d if self.concat else d,), self.param_dtype)
    x, kernel, attention, bias = nn.dtypes.promote_dtype(x, kernel, attention, bias, dtype=self.dtype)
    h = jnp.einsum("nf,fkd->nkd", x, kernel)  # (N, K, D)
    senders, receivers = add_self_loops(edges, num_nodes)
    alpha = gat_attention(h, attention, senders, receivers, self.negative_slope)  # (E', K) float32
    alpha = nn.Dropout(self.attention_dropout, deterministic=not train)(alpha)
    messages = alpha.astype(h.dtype)[:, :, None] * h[senders]  # (E', K, D)
    y = jax.ops.segment_sum(messages, receivers, num_nodes)  # (N, K, D)
    y = y.reshape(num_nodes, k * d) if self.concat else jnp.mean(y, axis=1)
    return y + bias[None, :]  # (N, K D) or (N, D)


class GAT(nn.Module):
  """Graph attention network (Velickovic et al. 2018): [dropout -> GATLayer of `num_heads` heads x D
  (concatenated) -> activation] per hidden size D, then dropout -> GATLayer of `output_heads` heads x C
  (averaged) to logits.

  Input: {"features": (N, F) float, "edges": (E, 2) int, both directions, no self loops}; output: float32
  logits (N, C) for every node. The defaults are the paper's transductive (Cora) model: 8 heads x 8
  features, ELU, 1 output head, dropout 0.6 on both layers' inputs and on the normalised attention
  coefficients, Glorot init; 92,373 parameters on Cora (91,712 + 128 + 64 in the first layer, 448 + 14 + 7
  in the second). The paper's L2 regularisation (5e-4 on Cora) covers every weight but the biases: the
  pattern '*kernel' selects the 'kernel' and 'attention_kernel' of each layer.
  """

  hidden_sizes: tuple[int, ...] = (8,)
  num_heads: int = 8
  output_heads: int = 1
  num_classes: int = 7
  dropout: float = 0.6
  attention_dropout: float = 0.6
  negative_slope: float = 0.2
  activation: str = "elu"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    get_activation(self.activation)
    check_rate(self.dropout, "dropout")
    check_rate(self.attention_dropout, "attention_dropout")
    if self.num_heads < 1 or self.output_heads < 1:
      raise ZooError(
        f"GAT needs at least one head, got num_heads={self.num_heads}, output_heads={self.output_heads}"
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, graph: Mapping[str, jax.Array], *, train: bool = False) -> jax.Array:
    x, edges = _graph_arrays(graph, "GAT")
    act = get_activation(self.activation)
    kw = dict(
      attention_dropout=self.attention_dropout,
      negative_slope=self.negative_slope,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    for width in self.hidden_sizes:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = act(GATLayer(width, self.num_heads, concat=True, **kw)(x, edges, train=train))  # (N, K D)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = GATLayer(self.num_classes, self.output_heads, concat=False, **kw)(x, edges, train=train)
    return _select(graph, x.astype(jnp.float32))  # (N, C), or (B, C) for graph['index'] (B,)


def graph_example(num_features: int, degree: int = 2) -> Callable[[int, Any], dict[str, jax.Array]]:
  """An `example` for graph models: `(num_nodes, key) -> {"features", "edges"}`, a random graph.

  Features are standard normal (N, F) float32; each node is joined to `degree` other nodes drawn at random,
  each edge listed in both directions ((2 N degree, 2) int32; a pair may repeat, never a self loop; no
  edges for a single node). Static shapes, so it also works under jax.eval_shape.
  """

  def make(num_nodes: int, key: Any) -> dict[str, jax.Array]:
    feature_key, edge_key = jax.random.split(key)
    features = jax.random.normal(feature_key, (num_nodes, num_features), jnp.float32)
    if num_nodes < 2:
      return {"features": features, "edges": jnp.zeros((0, 2), jnp.int32)}
    src = jnp.repeat(jnp.arange(num_nodes, dtype=jnp.int32), degree)  # (N degree,)
    dst = (src + jax.random.randint(edge_key, src.shape, 1, num_nodes, jnp.int32)) % num_nodes  # != src
    edges = jnp.stack([jnp.concatenate([src, dst]), jnp.concatenate([dst, src])], axis=1)  # (2 N degree, 2)
    return {"features": features, "edges": edges}

  return make


CORA_FEATURES = 1433
GRAPH = dict(kind="graph", per_example=False)


@register_model(input_shape=(CORA_FEATURES,), example=graph_example(CORA_FEATURES), **GRAPH)
def gcn_cora(**kw) -> GCN:
  """Kipf & Welling's Cora GCN: 2 layers, 16 hidden ReLU units, dropout 0.5 (23,063 parameters)."""
  return GCN(**{**dict(hidden_sizes=(16,), num_classes=7, dropout=0.5), **kw})


@register_model(input_shape=(CORA_FEATURES,), example=graph_example(CORA_FEATURES), **GRAPH)
def gat_cora(**kw) -> GAT:
  """Velickovic et al.'s Cora GAT: 8 heads x 8 ELU units, 1 output head, dropout 0.6 (92,373 parameters)."""
  return GAT(**{**dict(hidden_sizes=(8,), num_heads=8, output_heads=1, num_classes=7), **kw})


@register_model(input_shape=(8,), example=graph_example(8), **GRAPH)
def gcn_tiny(**kw) -> GCN:
  """A small GCN for tests: 8 features -> 16 -> 3 classes (195 parameters)."""
  return GCN(**{**dict(hidden_sizes=(16,), num_classes=3), **kw})


@register_model(input_shape=(8,), example=graph_example(8), **GRAPH)
def gat_tiny(**kw) -> GAT:
  """A small GAT for tests: 8 features -> 2 heads x 4 -> 1 head x 3 classes (121 parameters)."""
  return GAT(**{**dict(hidden_sizes=(4,), num_heads=2, output_heads=1, num_classes=3), **kw})
