"""The reconstruction tasks (autoencoder, VAE), several-player gradients and shared-context (graph)
datasets, through the trainer."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from zoo.data import Dataset
from zoo.registry import ZooError
from zoo.tasks import create_task
from zoo.train import loop
from zoo.train.steps import player_gradients


def _np_bernoulli_nll(logits, x):
  p = 1 / (1 + np.exp(-logits))
  return -(x * np.log(p) + (1 - x) * np.log(1 - p)).reshape(len(x), -1).sum(-1)


def test_vae_loss_is_the_negative_elbo_with_a_beta_weighted_kl():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 3, 3, 1)).astype(np.float32)
  x = (rng.random((4, 3, 3, 1)) > 0.5).astype(np.float32)
  mean, logvar = rng.normal(size=(4, 2)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
  outputs = {k: jnp.asarray(v) for k, v in dict(logits=logits, mean=mean, logvar=logvar).items()}
  nll = _np_bernoulli_nll(logits, x)
  kl = 0.5 * (np.exp(logvar) + mean**2 - 1 - logvar).sum(-1)
  loss, metrics = create_task("vae", beta=4.0).loss(outputs, {"input": jnp.asarray(x)})
  np.testing.assert_allclose(float(loss), (nll + 4 * kl).mean(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["neg_elbo"]), (nll + kl).mean(), rtol=1e-5)
  mask = np.array([1, 1, 0, 0], np.float32)
  sums = create_task("vae").eval_metrics(outputs, {"input": jnp.asarray(x), "mask": jnp.asarray(mask)})
  assert float(sums["count"]) == 2
  np.testing.assert_allclose(float(sums["neg_elbo"]), (nll + kl)[:2].sum(), rtol=1e-5)


def test_sparse_autoencoder_loss_adds_the_weighted_kl_sparsity():
  rng = np.random.default_rng(1)
  rec = rng.normal(size=(6, 4)).astype(np.float32)
  x = rng.random((6, 4)).astype(np.float32)
  code = rng.uniform(0.01, 0.99, (6, 3)).astype(np.float32)
  rho, rho_hat = 0.1, code.mean(0)
  kl = (rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat))).sum()
  task = create_task("autoencoder", sparsity_weight=0.5, sparsity_target=rho)
  loss, metrics = task.loss({"reconstruction": jnp.asarray(rec), "code": jnp.asarray(code)}, {"input": x})
  np.testing.assert_allclose(float(loss), _np_bernoulli_nll(rec, x).mean() + 0.5 * kl, rtol=1e-5)
  mse = create_task("autoencoder", likelihood="mse")
  loss, _ = mse.loss({"reconstruction": jnp.asarray(rec), "code": jnp.asarray(code)}, {"input": x})
  np.testing.assert_allclose(float(loss), ((rec - x) ** 2).sum(-1).mean(), rtol=1e-5)


@pytest.mark.parametrize(
  "name, kwargs, key",
  [
    ("vae", {"beta": -1.0}, "beta"),
    ("vae", {"num_samples": 0}, "num_samples"),
    ("vae", {"bta": 2.0}, "bta"),
    ("autoencoder", {"likelihood": "l2"}, "likelihood"),
    ("autoencoder", {"sparsity_target": 1.5}, "sparsity_target"),
  ],
)
def test_bad_task_arguments_name_the_key(name, kwargs, key):
  with pytest.raises(ZooError, match=key):
    create_task(name, **kwargs)


def test_each_player_gets_the_gradient_of_its_own_loss_only():
  params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([3.0])}

  def loss_fn(p):  # a's loss depends on b and b's on a: cross terms must not leak into the gradients.
    la = jnp.sum(p["a"] ** 2) * p["b"][0]
    lb = jnp.sum(p["a"]) * p["b"][0] ** 3
    return {"a": la, "b": lb}, {"aux": la + lb}

  grads, aux = player_gradients(loss_fn, params, ("a", "b"))
  np.testing.assert_allclose(grads["a"], 2 * np.array([1.0, 2.0]) * 3.0)
  np.testing.assert_allclose(grads["b"], [3.0 * 3.0**2 * 3.0])
  assert float(aux["aux"]) == pytest.approx(5 * 3 + 3 * 27)
  with pytest.raises(ZooError, match="players"):
    player_gradients(loss_fn, params, ("a",))


def test_vae_trains_evaluates_reproducibly_and_writes_samples_and_scores(tiny_config, tmp_path):
  config = tiny_config(model__name="vae_mlp_tiny", task__name="vae", data__normalization="scale")
  config.model.kwargs = {"image_shape": (8, 8, 1)}
  config.epochs = 3
  result = loop.train_and_evaluate(config, tmp_path / "run", progress=False)
  history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  train = [r["neg_elbo"] for r in history if r["split"] == "train"]
  assert train[-1] < train[0]  # it learns
  assert (tmp_path / "run" / "samples.png").is_file()
  scores = np.load(tmp_path / "run" / "scores.npy")
  assert scores.shape == (64,) and np.all(np.isfinite(scores))
  assert result["report"]["samples"] == "samples.png"
  # The evaluation's 'sample' keys are fixed: evaluating the same parameters twice gives the same bound.
  exp = loop.build(config)
  from zoo.train.steps import make_eval_fn

  evaluate = make_eval_fn(exp.model, exp.task, exp.preprocess)
  data = loop.eval_batches(exp.dataset.x_test, exp.dataset.y_test, 32)
  variables = result["state"].variables()
  first, second = evaluate(variables, data), evaluate(variables, data)
  assert float(first["neg_elbo"]) == float(second["neg_elbo"])
  # The score of each example is its negative ELBO: their mean is the reported test bound.
  assert scores.mean() == pytest.approx(result["test"]["neg_elbo"], rel=1e-4)


def _two_cluster_graph(n: int = 60, seed: int = 0) -> Dataset:
  """Nodes of two classes, edges mostly within a class, features noisy class indicators."""
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 2).astype(np.int32)
  features = (np.eye(2)[labels] + rng.normal(0, 1.5, (n, 2))).astype(np.float32)
  features = np.concatenate([features, rng.normal(0, 1, (n, 6)).astype(np.float32)], axis=1)
  same = [(i, j) for i in range(n) for j in range(i + 1, n) if labels[i] == labels[j]]
  pairs = [pair for pair in same if rng.random() < 0.15]
  edges = np.array(pairs + [(j, i) for i, j in pairs], np.int32)
  ids = rng.permutation(n).astype(np.int32)
  train, val, test = ids[:20], ids[20:30], ids[30:]
  return Dataset(
    "two_clusters", train, labels[train], test, labels[test], 2, 1.0,
    x_val=val, y_val=labels[val], context={"features": features, "edges": edges},
  )  # fmt: skip


def test_a_graph_context_goes_whole_to_the_model_and_the_batch_picks_the_nodes(tiny_config, tmp_path):
  ds = _two_cluster_graph()
  config = tiny_config(model__name="gcn_tiny", data__batch_size=20, data__eval_batch_size=40)
  config.model.kwargs = {"dropout": 0.0}
  config.epochs, config.optimizer.learning_rate = 60, 0.05
  result = loop.train_and_evaluate(config, tmp_path / "run", progress=False, dataset=ds)
  assert result["test"]["accuracy"] >= 0.9  # the graph's edges carry the class: neighbours average out noise
  exp = loop.build(config, dataset=ds)
  graph = {k: jnp.asarray(v) for k, v in ds.context.items()}
  variables = result["state"].variables()
  every_node = exp.model.apply(variables, graph)
  some = exp.model.apply(variables, {**graph, "index": jnp.asarray(ds.x_test[:5])})
  np.testing.assert_allclose(some, every_node[ds.x_test[:5]], rtol=1e-6)
  with pytest.raises(ZooError, match="indices into its context"):
    config.data.augment = {"horizontal_flip": {}}
    loop.build(config, dataset=ds)
