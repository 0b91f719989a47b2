"""Tests of the graph networks (zoo/models/gnn.py): GCN and GAT against dense NumPy references, on Cora."""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo.models import create_model, example_input, model_spec
from zoo.models.gnn import GATLayer, GCNLayer, add_self_loops, edge_softmax, gat_attention, gcn_norm
from zoo.registry import ZooError

TINY = ("gcn_tiny", "gat_tiny")


def undirected(pairs: list[tuple[int, int]]) -> np.ndarray:
  """(E, 2) int32 edges listing each pair in both directions, shuffled (the layers must not rely on order)."""
  both = np.array([*pairs, *[(v, u) for u, v in pairs]], np.int32)
  return both[np.random.default_rng(0).permutation(len(both))]


# 9 nodes: node 0 is a hub joined to 1..6, node 8 is isolated, 7 hangs off 6; plus a triangle 1-2-3.
NUM_NODES = 9
EDGES = undirected([(0, i) for i in range(1, 7)] + [(6, 7), (1, 2), (2, 3), (1, 3)])


def dense_adjacency(edges: np.ndarray, n: int) -> np.ndarray:
  """A + I as a dense matrix, A[receiver, sender] = 1."""
  a = np.eye(n)
  a[edges[:, 1], edges[:, 0]] = 1.0
  return a


def test_gcn_norm_is_the_renormalised_adjacency():
  senders, receivers, weights = map(np.asarray, gcn_norm(jnp.asarray(EDGES), NUM_NODES))
  got = np.zeros((NUM_NODES, NUM_NODES))
  np.add.at(got, (receivers, senders), weights)
  a = dense_adjacency(EDGES, NUM_NODES)
  d = a.sum(axis=1)
  want = a / np.sqrt(np.outer(d, d))  # D^-1/2 (A + I) D^-1/2
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert weights.dtype == np.float32 and len(weights) == len(EDGES) + NUM_NODES
  assert got[8, 8] == pytest.approx(1.0)  # the isolated node keeps its own features
  assert got[0, 0] == pytest.approx(1 / 7) and got[0, 1] == pytest.approx(1 / np.sqrt(7 * 4))


@pytest.mark.parametrize("features", [3, 11])  # Fewer outputs than inputs (W first) and more (A first).
def test_gcn_layer_matches_a_dense_reference(features):
  x = np.random.default_rng(1).normal(size=(NUM_NODES, 5)).astype(np.float32)
  layer = GCNLayer(features)
  params = layer.init(jax.random.key(0), x, EDGES)["params"]
  params = {**params, "bias": jax.random.normal(jax.random.key(1), (features,))}  # a nonzero bias
  got = layer.apply({"params": params}, x, EDGES)
  a = dense_adjacency(EDGES, NUM_NODES)
  d_inv_sqrt = np.diag(a.sum(axis=1) ** -0.5)
  want = d_inv_sqrt @ a @ d_inv_sqrt @ x @ np.asarray(params["kernel"]) + np.asarray(params["bias"])
  assert got.shape == (NUM_NODES, features)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The kernel is Glorot uniform: inside +-sqrt(6 / (fan_in + fan_out)).
  assert np.abs(params["kernel"]).max() <= np.sqrt(6 / (5 + features))


def dense_softmax_reference(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Row-wise softmax of (N, N, K) logits over the columns where mask (N, N) is set."""
  z = np.where(mask[..., None], logits, -np.inf)
  z = np.exp(z - z.max(axis=1, keepdims=True))
  return z / z.sum(axis=1, keepdims=True)


def test_edge_softmax_sums_to_one_and_is_stable():
  senders, receivers = map(np.asarray, add_self_loops(jnp.asarray(EDGES), NUM_NODES))
  logits = np.random.default_rng(2).normal(size=(len(senders), 2)).astype(np.float32) * 30 + 1e4
  alpha = np.asarray(edge_softmax(jnp.asarray(logits), jnp.asarray(receivers), NUM_NODES))
  assert np.isfinite(alpha).all() and (alpha > 0).all()
  sums = np.zeros((NUM_NODES, 2))
  np.add.at(sums, receivers, alpha)
  np.testing.assert_allclose(sums, 1.0, rtol=1e-5)
  dense = np.zeros((NUM_NODES, NUM_NODES, 2))
  dense[receivers, senders] = logits
  want = dense_softmax_reference(dense, dense_adjacency(EDGES, NUM_NODES) > 0)[receivers, senders]
  np.testing.assert_allclose(alpha, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("concat", [True, False])
def test_gat_layer_matches_a_dense_masked_softmax_reference(concat):
  heads, d = 3, 4
  x = np.random.default_rng(3).normal(size=(NUM_NODES, 5)).astype(np.float32)
  layer = GATLayer(d, heads, concat=concat)
  params = layer.init(jax.random.key(0), x, EDGES)["params"]
  params = {**params, "bias": jax.random.normal(jax.random.key(1), params["bias"].shape)}
  kernel, a = np.asarray(params["kernel"], np.float64), np.asarray(params["attention_kernel"], np.float64)

  # Dense reference: e[i, j, k] = LeakyReLU_0.2(a_k^T [W_k h_i || W_k h_j]), softmax over j in N(i) + {i}.
  h = np.einsum("nf,fkd->nkd", x, kernel)  # (N, K, D)
  e = np.einsum("ikd,kd->ik", h, a[:, :d])[:, None, :] + np.einsum("jkd,kd->jk", h, a[:, d:])[None, :, :]
  e = np.where(e > 0, e, 0.2 * e)  # (N_i, N_j, K)
  mask = dense_adjacency(EDGES, NUM_NODES) > 0
  alpha_dense = dense_softmax_reference(e, mask)  # (N_i, N_j, K)
  out = np.einsum("ijk,jkd->ikd", alpha_dense, h)  # (N, K, D)
  want = (out.reshape(NUM_NODES, heads * d) if concat else out.mean(axis=1)) + np.asarray(params["bias"])

  # The layer's attention coefficients: each neighbourhood's sum to 1, equal to the dense reference.
  senders, receivers = add_self_loops(jnp.asarray(EDGES), NUM_NODES)
  alpha = np.asarray(
    gat_attention(jnp.asarray(h, jnp.float32), params["attention_kernel"], senders, receivers)
  )
  sums = np.zeros((NUM_NODES, heads))
  np.add.at(sums, np.asarray(receivers), alpha)
  np.testing.assert_allclose(sums, 1.0, rtol=1e-5)
  np.testing.assert_allclose(
    alpha, alpha_dense[np.asarray(receivers), np.asarray(senders)], rtol=1e-4, atol=1e-6
  )
  assert np.isclose(alpha_dense[8, 8], 1.0).all()  # the isolated node attends to itself only

  got = layer.apply({"params": params}, x, EDGES)
  assert got.shape == (NUM_NODES, heads * d if concat else d)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_relabelling_the_nodes_permutes_the_outputs(name):
  model = create_model(name)
  graph = example_input(name, 12, jax.random.key(4))
  variables = jax.jit(model.init)(jax.random.key(0), graph)
  perm = np.random.default_rng(5).permutation(12)  # new node p is old node perm[p]
  new_label = np.argsort(perm)  # old node u is new node new_label[u]
  edges = np.asarray(graph["edges"])
  relabelled = {
    "features": graph["features"][perm],
    "edges": new_label[edges][np.random.default_rng(6).permutation(len(edges))].astype(np.int32),
  }
  apply = jax.jit(model.apply)
  out = np.asarray(apply(variables, graph))
  np.testing.assert_allclose(apply(variables, relabelled), out[perm], rtol=1e-5, atol=1e-5)
  # Not a tautology: the outputs differ from node to node.
  assert not np.allclose(out, out[perm])


@pytest.mark.parametrize("name", TINY)
def test_tiny_variants_train_every_parameter(name):
  # The registry tests run one variant per family fully; this covers both: every parameter has a
  # gradient, dropout acts in training only, and a few Adam steps fit random labels.
  model = create_model(name)
  graph = example_input(name, 16, jax.random.key(7))
  labels = jnp.arange(16) % 3
  params = jax.jit(model.init)(jax.random.key(0), graph)["params"]

  @jax.jit
  def outputs(params, rng):  # eval twice, train with two dropout keys
    apply = lambda train, key: model.apply({"params": params}, graph, train=train, rngs={"dropout": key})
    return apply(False, rng), apply(False, rng), apply(True, rng), apply(True, jax.random.fold_in(rng, 1))

  eval_a, eval_b, train_a, train_b = outputs(params, jax.random.key(1))
  np.testing.assert_array_equal(eval_a, eval_b)
  assert not np.allclose(train_a, train_b) and not np.allclose(train_a, eval_a)
  tx = optax.adam(0.02)

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      logits = model.apply({"params": p}, graph)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value, grads

  opt_state = tx.init(params)
  losses = []
  for i in range(30):
    params, opt_state, value, grads = step(params, opt_state)
    losses.append(float(value))
    if i == 0:
      for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert bool(jnp.any(g != 0)), f"no gradient reaches {jax.tree_util.keystr(path)}"
  assert losses[-1] < 0.8 * losses[0], losses


def count_params(name: str, graph) -> int:
  shapes = jax.eval_shape(lambda g: create_model(name).init(jax.random.key(0), g), graph)["params"]
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


def test_registration_and_parameter_counts():
  for name in ("gcn_cora", "gat_cora", *TINY):
    spec = model_spec(name)
    assert spec.kind == "graph" and not spec.per_example
  graph = jax.eval_shape(lambda: example_input("gcn_cora", 5))
  assert graph["features"].shape == (5, 1433) and graph["edges"].shape[1] == 2
  assert graph["edges"].dtype == jnp.int32
  assert count_params("gcn_cora", graph) == 1433 * 16 + 16 + 16 * 7 + 7 == 23_063
  # GAT: W (1433, 8 heads x 8) + a (8 x 16) + bias 64, then W (64, 7) + a (14) + bias 7.
  assert count_params("gat_cora", graph) == 1433 * 64 + 8 * 16 + 64 + 64 * 7 + 14 + 7 == 92_373
  edges = np.asarray(example_input("gcn_tiny", 6)["edges"])
  assert (edges[:, 0] != edges[:, 1]).all()  # no self loops: the layers add them
  assert {tuple(e) for e in edges} == {(v, u) for u, v in edges}  # both directions


def test_bad_inputs_are_zoo_errors():
  model = create_model("gcn_tiny")
  graph = example_input("gcn_tiny", 4)
  with pytest.raises(ZooError, match="'features'"):
    model.init(jax.random.key(0), graph["features"])
  with pytest.raises(ZooError, match=r"edges \(6,\)"):
    model.init(jax.random.key(0), {**graph, "edges": jnp.zeros(6, jnp.int32)})
  with pytest.raises(ZooError, match="attention_dropout"):
    create_model("gat_tiny", attention_dropout=1.0)


def cora_dir() -> Path | None:
  d = os.environ.get("ZOO_DATA_DIR")
  return Path(d) if d and (Path(d) / "planetoid" / "ind.cora.graph").is_file() else None


@pytest.mark.skipif(cora_dir() is None, reason="the Planetoid Cora files are not staged")
def test_gcn_reaches_the_papers_cora_accuracy():
  from zoo.data.planetoid import load_planetoid, row_normalize
  from zoo.regularizers import penalty

  data = load_planetoid("cora", data_dir=str(cora_dir()))
  graph = {"features": jnp.asarray(row_normalize(data.features)), "edges": jnp.asarray(data.edges)}
  labels, train, test = map(jnp.asarray, (data.labels, data.train_mask, data.test_mask))
  model = create_model("gcn_cora")
  params = jax.jit(model.init)(jax.random.key(0), graph)["params"]
  assert sum(p.size for p in jax.tree.leaves(params)) == 23_063
  # Kipf & Welling: Adam 0.01, 200 epochs, L2 5e-4 on the first layer's weights in the loss (so Adam sees
  # its gradient), dropout 0.5, row-normalised features; 81.5% test accuracy reported.
  tx = optax.adam(0.01)

  def loss(p, rng, graph):
    logits = model.apply({"params": p}, graph, train=True, rngs={"dropout": rng})
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    return jnp.sum(jnp.where(train, ce, 0.0)) / jnp.sum(train) + penalty(
      p, l2=5e-4, pattern="GCNLayer_0/*kernel"
    )

  @jax.jit
  def fit(params, graph):  # the 200 steps in one compiled loop
    def step(i, carry):
      params, opt_state = carry
      grads = jax.grad(loss)(params, jax.random.fold_in(jax.random.key(1), i), graph)
      updates, opt_state = tx.update(grads, opt_state)
      return optax.apply_updates(params, updates), opt_state

    return jax.lax.fori_loop(0, 200, step, (params, tx.init(params)))[0]

  start = time.process_time()  # CPU time, less at the mercy of other jobs on the machine than wall time
  params = fit(params, graph)
  predictions = jnp.argmax(jax.jit(model.apply)({"params": params}, graph), axis=-1)
  accuracy = float(jnp.sum((predictions == labels) & test) / jnp.sum(test))
  cpu_seconds = time.process_time() - start
  assert accuracy >= 0.78, accuracy
  # About 2 s to compile and 4-8 s to run here (2 cores shared with other jobs): a bound for regressions.
  assert cpu_seconds < 40, f"compiling and running 200 full-batch GCN steps on Cora took {cpu_seconds:.1f} s"
