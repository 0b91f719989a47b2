"""Continual learning (zoo/train/continual.py, zoo/models/progressive.py): the Fisher, the EWC penalty, the
progressive net's columns and laterals, the accuracy matrix, resuming, and the options' checks."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from zoo.config import Config, get_config
from zoo.data import Dataset
from zoo.models import create_model
from zoo.models.progressive import ProgressiveMLP
from zoo.registry import ZooError
from zoo.train.continual import (
  consolidate,
  continual_metrics,
  continual_options,
  ewc_penalty,
  fisher_diagonal,
  make_fisher_fn,
  make_task_logits,
  sample_labels,
  split_tasks,
  task_order,
  train_continual,
)

THREE_TASKS = ((0, 1), (2, 3), (4, 5))


def _dataset(n_train: int = 600, n_test: int = 150, num_classes: int = 6, seed: int = 0) -> Dataset:
  """Separable tabular classes: Gaussian blobs around random centres (8 features)."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 2, (num_classes, 8))

  def sample(n):
    y = (np.arange(n) % num_classes).astype(np.int32)
    return (centres[y] + rng.normal(0, 1, (n, 8))).astype(np.float32), y

  (x_train, y_train), (x_test, y_test) = sample(n_train), sample(n_test)
  return Dataset("blobs", x_train, y_train, x_test, y_test, num_classes=num_classes, pixel_max=1.0)


def _config(method: str, splits=THREE_TASKS, **task_kwargs) -> Config:
  c = Config()
  c.model.name = "progressive_mlp" if method == "progressive" else "mlp"
  c.model.kwargs = {"hidden_sizes": (16, 8)}
  c.data.batch_size = 20
  c.data.normalization = "none"
  c.task.name = "continual"
  c.task.kwargs = {"method": method, "splits": splits, "epochs_per_task": 2, **task_kwargs}
  c.optimizer.learning_rate = 1e-2
  c.log_every_steps = 5
  return c


def _run(method: str, tmp_path_factory) -> tuple[Config, Dataset, dict, Path]:
  config, ds = _config(method, ewc_lambda=100.0, fisher_samples=50), _dataset()
  workdir = tmp_path_factory.mktemp(method)
  return config, ds, train_continual(config, workdir, progress=False, dataset=ds), workdir


@pytest.fixture(scope="module")
def ewc_run(tmp_path_factory):
  """Three tasks of EWC: (config, dataset, result, workdir)."""
  return _run("ewc", tmp_path_factory)


@pytest.fixture(scope="module")
def progressive_run(tmp_path_factory):
  """Three tasks of a progressive net: (config, dataset, result, workdir)."""
  return _run("progressive", tmp_path_factory)


def _saved(workdir: Path, tasks_done: int) -> dict:
  """The record checkpointed after `tasks_done` tasks, read without a target."""
  return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(tasks_done) / "default")


def _tree_equal(a, b) -> bool:
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(leaves_a) == len(leaves_b) and all(
    np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True)
  )


# ---------------------------------------------------------------------------------------------------
# EWC.


def test_fisher_diagonal_is_the_mean_of_per_example_squared_gradients():
  # Softmax regression, whose gradient is known in closed form: d log p(y|x) / dW = x (e_y - p)^T and
  # d / db = e_y - p, with p = softmax(x W + b).
  rng = np.random.default_rng(0)
  x, w, b = rng.normal(size=(7, 4)), rng.normal(size=(4, 3)), rng.normal(size=3)
  y = np.array([0, 2, 1, 0, 1, 2, 0])
  weights = np.array([1, 1, 0, 1, 1, 1, 0], np.float32)  # Two examples left out (padding).
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  residual = np.eye(3)[y] - p  # (M, K)
  kept = weights / weights.sum()
  expected_w = np.einsum("m,mi,mk->ik", kept, x**2, residual**2)
  expected_b = np.einsum("m,mk->k", kept, residual**2)

  def log_likelihood(params, xi, yi):
    return jax.nn.log_softmax(xi @ params["w"] + params["b"])[yi]

  params = {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
  # A chunk that does not divide the 7 examples: the padding must not count, nor the weight-0 examples.
  fisher = jax.jit(functools.partial(fisher_diagonal, log_likelihood, chunk=3))(
    params, jnp.asarray(x, jnp.float32), jnp.asarray(y), jnp.asarray(weights)
  )
  np.testing.assert_allclose(fisher["w"], expected_w, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(fisher["b"], expected_b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", ["true", "empirical"])
def test_the_trainers_fisher_reads_the_tasks_head_with_sampled_or_true_labels(kind):
  # Two tasks of two classes: an MLP with 4 outputs read as 2 heads of 2; the Fisher of task 1.
  model = create_model("mlp", hidden_sizes=(5,), num_classes=4)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)
  labels = jnp.array([0, 1, 1, 0, 1, 1])
  params = jax.jit(model.init)(jax.random.key(1), x)["params"]
  task_logits = make_task_logits(lambda v: v, jnp.ones((2, 2), bool))
  index, weights, key = jnp.arange(6), jnp.ones(6), jax.random.key(5)
  fisher = make_fisher_fn(model, task_logits, kind)(params, x, labels, index, weights, jnp.int32(1), key)

  logits = jax.jit(model.apply)({"params": params}, x).reshape(6, 2, 2)[:, 1]  # Head 1.
  y = sample_labels(logits, key) if kind == "true" else labels
  # By hand: one example at a time (no vmap), head 1 = outputs 2 and 3.
  grad = jax.jit(jax.grad(lambda p, xm, ym: jax.nn.log_softmax(model.apply({"params": p}, xm)[0, 2:])[ym]))
  grads = [grad(params, x[m : m + 1], y[m]) for m in range(6)]
  expected = jax.tree.map(lambda *g: sum(np.square(v) for v in g) / 6, *grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), fisher, expected)
  # Head 0's weights never enter task 1's likelihood: their Fisher is exactly 0.
  kernel = fisher["Dense_1"]["kernel"]
  assert np.all(np.asarray(kernel[:, :2]) == 0) and np.any(np.asarray(kernel[:, 2:]) > 0)


def test_sampled_labels_follow_the_models_distribution():
  logits = jnp.tile(jnp.array([[1.0, -0.5, -jnp.inf]]), (40_000, 1))  # A masked class is never drawn.
  labels = np.asarray(sample_labels(logits, jax.random.key(0)))
  frequencies = np.bincount(labels, minlength=3) / len(labels)
  np.testing.assert_allclose(frequencies, np.asarray(jax.nn.softmax(logits[0])), atol=0.01)
  assert frequencies[2] == 0


def test_ewc_penalty_value_and_gradient_follow_the_formula():
  rng = np.random.default_rng(0)
  p = {"a": rng.normal(size=(3, 2)), "b": rng.normal(size=4)}
  f = {k: rng.uniform(size=(2, *v.shape)) for k, v in p.items()}  # Two stored penalties.
  a = {k: v[None] + rng.normal(size=(2, *v.shape)) for k, v in p.items()}
  lam = 7.0
  expected = lam / 2 * sum(np.sum(f[k][s] * (p[k] - a[k][s]) ** 2) for k in p for s in range(2))
  as_f32 = lambda tree: jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), tree)
  value, grads = jax.jit(jax.value_and_grad(ewc_penalty))(as_f32(p), as_f32(f), as_f32(a), lam)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  for k in p:  # lambda sum_s F_s (theta - theta*_s)
    np.testing.assert_allclose(grads[k], lam * sum(f[k][s] * (p[k] - a[k][s]) for s in range(2)), rtol=1e-5)
  # At the anchor, the penalty and its gradient vanish.
  at_anchor = jax.jit(jax.value_and_grad(ewc_penalty))(
    as_f32(p), as_f32(f), as_f32({k: np.stack([v, v]) for k, v in p.items()}), lam
  )
  assert float(at_anchor[0]) == 0.0 and all(np.all(g == 0) for g in jax.tree.leaves(at_anchor[1]))


def test_consolidate_separate_slots_and_online_accumulation():
  params = {"w": jnp.array([1.0, 2.0])}
  ewc = {"fisher": {"w": jnp.zeros((2, 2))}, "anchor": {"w": jnp.zeros((2, 2))}}
  ewc = consolidate(ewc, {"w": jnp.array([1.0, 1.0])}, params, slot=1)
  np.testing.assert_array_equal(ewc["fisher"]["w"], [[0, 0], [1, 1]])
  np.testing.assert_array_equal(ewc["anchor"]["w"], [[0, 0], [1, 2]])
  online = {"fisher": {"w": jnp.array([[4.0, 2.0]])}, "anchor": {"w": jnp.zeros((1, 2))}}
  online = consolidate(online, {"w": jnp.array([1.0, 3.0])}, params, slot=0, decay=0.5)
  np.testing.assert_array_equal(online["fisher"]["w"], [[3.0, 4.0]])  # 0.5 * old + new
  np.testing.assert_array_equal(online["anchor"]["w"], [[1.0, 2.0]])  # the newest parameters


# ---------------------------------------------------------------------------------------------------
# The progressive net.


@pytest.mark.parametrize("adapter", ["linear", "mlp"])
def test_progressive_laterals_have_the_papers_shapes(adapter):
  model = ProgressiveMLP(num_columns=3, hidden_sizes=(5, 4), num_classes=2, adapter=adapter)
  x = jnp.ones((2, 6))
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  assert model.apply({"params": jax.tree.map(jnp.zeros_like, params)}, x).shape == (2, 3, 2)
  assert set(params) == {"column_0", "column_1", "column_2"}
  assert not any(k.startswith("lateral") for k in params["column_0"])  # The first column has none.
  for k in (1, 2):
    column = params[f"column_{k}"]
    assert set(column) == {"layer_0", "layer_1", "layer_2", "lateral_1", "lateral_2"}  # None from x.
    widths_in, widths_out = (5, 4), (4, 2)  # Layer i reads layer i-1 (width widths_in[i - 1]) of columns < k.
    for i in (1, 2):
      lateral = column[f"lateral_{i}"]
      if adapter == "linear":  # One U^(k:j) per earlier column j.
        assert set(lateral) == {f"U_from_{j}" for j in range(k)}
        for j in range(k):
          assert lateral[f"U_from_{j}"]["kernel"].shape == (widths_in[i - 1], widths_out[i - 1])
      else:  # Scalars alpha_j, then V on the concatenation, then U.
        assert {f"alpha_from_{j}" for j in range(k)} <= set(lateral)
        assert lateral["V"]["kernel"].shape == (k * widths_in[i - 1], widths_in[i - 1])
        assert lateral["U"]["kernel"].shape == (widths_in[i - 1], widths_out[i - 1])


def test_a_column_reads_the_earlier_columns_and_never_the_later_ones():
  model = ProgressiveMLP(num_columns=3, hidden_sizes=(6, 5), num_classes=2)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
  params = jax.jit(model.init)(jax.random.key(1), x)["params"]
  apply = jax.jit(model.apply)
  out = apply({"params": params}, x)

  def perturbed(column, layer="layer_0"):
    p = dict(params)
    p[column] = dict(p[column], **{layer: jax.tree.map(lambda a: a + 0.5, p[column][layer])})
    return apply({"params": p}, x)

  # Column 0's hidden states reach columns 1 and 2 through the laterals...
  changed = perturbed("column_0")
  assert all(not np.allclose(changed[:, k], out[:, k]) for k in range(3))
  # ...and nothing of a later column reaches an earlier one.
  changed = perturbed("column_2")
  np.testing.assert_array_equal(changed[:, :2], out[:, :2])
  assert not np.allclose(changed[:, 2], out[:, 2])
  # Without the laterals, column 1 ignores column 0.
  no_laterals = jax.tree.map(lambda a: a, params)
  for k in (1, 2):
    no_laterals[f"column_{k}"] = {
      n: jax.tree.map(jnp.zeros_like, v) if n.startswith("lateral") else v
      for n, v in params[f"column_{k}"].items()
    }
  base = apply({"params": no_laterals}, x)
  p = dict(no_laterals, column_0=jax.tree.map(lambda a: a + 0.5, no_laterals["column_0"]))
  np.testing.assert_array_equal(apply({"params": p}, x)[:, 1:], base[:, 1:])
  # A model with fewer columns is the first columns of a bigger one.
  two = ProgressiveMLP(num_columns=2, hidden_sizes=(6, 5), num_classes=2)
  first_two = {k: params[k] for k in ("column_0", "column_1")}
  np.testing.assert_allclose(two.apply({"params": first_two}, x), out[:, :2], rtol=1e-6, atol=1e-6)


def test_progressive_training_freezes_the_earlier_columns(progressive_run):
  _, _, result, workdir = progressive_run
  saved = [_saved(workdir, k)["params"] for k in (1, 2, 3)]  # after tasks 0, 1, 2
  # Column 0 after the later tasks is bit for bit column 0 after the first; likewise column 1.
  assert _tree_equal(saved[0]["column_0"], saved[1]["column_0"])
  assert _tree_equal(saved[0]["column_0"], saved[2]["column_0"])
  assert _tree_equal(saved[1]["column_1"], saved[2]["column_1"])
  assert not _tree_equal(saved[1]["column_1"]["layer_0"], saved[2]["column_2"]["layer_0"])
  r = np.array(result["accuracy_matrix"], dtype=float)
  for j in range(3):  # Earlier tasks' accuracy never moves.
    assert np.all(r[j:, j] == r[j, j]), r
  assert result["bwt"] == 0.0 and result["average_accuracy"] > 0.8
  assert result["train_step_traces"] == 3  # One compiled step per column count.


# ---------------------------------------------------------------------------------------------------
# The trainer.


def test_accuracy_matrix_metrics():
  r = np.array([[0.9, np.nan, np.nan], [0.8, 0.95, np.nan], [0.7, 0.85, 0.99]])
  m = continual_metrics(r)
  assert m["average_accuracy"] == pytest.approx((0.7 + 0.85 + 0.99) / 3)
  assert m["bwt"] == pytest.approx(((0.7 - 0.9) + (0.85 - 0.95)) / 2)
  assert continual_metrics(np.array([[0.9]])) == {"average_accuracy": pytest.approx(0.9), "bwt": None}


def test_tasks_take_their_classes_with_local_labels():
  y_train, y_test = np.array([0, 3, 1, 2, 4, 3, 0]), np.array([4, 2, 1, 0])
  tasks = split_tasks(y_train, y_test, ((0, 1, 2), (3, 4)))
  np.testing.assert_array_equal(tasks.train_index[0], [0, 2, 3, 6])
  np.testing.assert_array_equal(tasks.train_labels[0][tasks.train_index[0]], [0, 1, 2, 0])
  np.testing.assert_array_equal(tasks.train_labels[1][tasks.train_index[1]], [0, 1, 0])  # classes 3, 4, 3
  np.testing.assert_array_equal(tasks.test_index[1], [0])
  np.testing.assert_array_equal(tasks.class_mask, [[True, True, True], [True, True, False]])
  with pytest.raises(ZooError, match=r"task 1 \(classes \[5, 6\]\) has no training examples"):
    split_tasks(y_train, y_test, ((0, 1), (5, 6)))


def test_task_order_is_one_permutation_per_epoch_padded_to_one_length():
  index = np.arange(10, 33)  # 23 examples: 4 batches of 5 per epoch, 3 left out each time.
  order = task_order(index, steps=6, batch_size=5, length=50, rng=np.random.default_rng(0))
  assert order.shape == (50,) and order.dtype == np.int32
  first, second = order[:20], order[20:30]
  assert len(set(first)) == 20 and set(first) <= set(index)  # One epoch: no repeats.
  assert len(set(second)) == 10 and set(second) <= set(index)
  assert np.all(order[30:] == 0)


def test_ewc_trains_every_task_with_one_compiled_step_and_writes_the_workdir(ewc_run):
  _, _, result, tmp_path = ewc_run
  assert result["train_step_traces"] == 1  # The task id is traced: all tasks share the step.
  r = np.array(result["accuracy_matrix"], dtype=float)
  assert np.all(np.isnan(r[np.triu_indices(3, 1)])) and np.all(np.diag(r) > 0.8)
  saved = json.loads((tmp_path / "result.json").read_text())
  assert saved["setting"] == "task-incremental" and saved["method"] == "ewc"
  assert saved["average_accuracy"] == pytest.approx(np.mean(r[2]))
  assert saved["bwt"] == pytest.approx(np.mean(r[2, :2] - np.diag(r)[:2]))
  assert saved["step"] == 3 * 2 * (200 // 20)  # 3 tasks, 2 epochs of 200 examples in batches of 20
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [rec for rec in records if rec["split"] == "train"]
  assert {"loss", "accuracy", "ewc_penalty", "task"} <= set(train[0])
  assert train[0]["ewc_penalty"] == 0 and train[-1]["ewc_penalty"] > 0  # No penalty before a Fisher.
  evaluations = [(rec["after_task"], rec["task"]) for rec in records if rec["split"].startswith("test/")]
  assert evaluations == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
  assert (tmp_path / "accuracy_matrix.png").stat().st_size > 1000


@pytest.mark.parametrize("run", ["ewc_run", "progressive_run"])
def test_a_rerun_resumes_after_the_last_finished_task_with_the_same_result(run, request, tmp_path):
  config, ds, full, workdir = request.getfixturevalue(run)
  # A run stopped after its first task: only that checkpoint remains (and metrics beyond it, dropped).
  shutil.copytree(workdir, tmp_path / "cut")
  for step in (2, 3):
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / str(step))
  resumed = train_continual(config, tmp_path / "cut", progress=False, dataset=ds)
  assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
  assert _tree_equal(resumed["params"], full["params"])
  assert resumed["train_step_traces"] == (1 if run == "ewc_run" else 2)  # Tasks 1 and 2 only.
  steps = lambda d: [json.loads(x)["step"] for x in (d / "metrics.jsonl").read_text().splitlines()]
  assert steps(tmp_path / "cut") == steps(workdir)
  # A finished run trains nothing more and reports the same.
  again = train_continual(config, tmp_path / "cut", progress=False, dataset=ds)
  assert again["train_step_traces"] == 0 and again["accuracy_matrix"] == full["accuracy_matrix"]


def test_splits_of_different_sizes_mask_the_unused_outputs(tmp_path):
  config = _config("finetune", splits=((0, 1, 2), (3, 4)))
  result = train_continual(config, tmp_path, progress=False, dataset=_dataset())
  assert result["accuracy_matrix"][1][1] > 0.8


# ---------------------------------------------------------------------------------------------------
# Checks.


@pytest.mark.parametrize(
  "kwargs,message",
  [
    ({"methd": "ewc"}, r"no argument 'methd'; did you mean: method"),
    ({"ewc_lamda": 1.0}, r"no argument 'ewc_lamda'; did you mean: ewc_lambda"),
    ({"method": "ewk"}, r"task.kwargs.method must be one of ewc, progressive, finetune; got 'ewk'"),
    ({"fisher": "exact"}, r"task.kwargs.fisher must be one of true, empirical"),
    ({"ewc_lambda": -1.0}, r"ewc_lambda must be finite and >= 0"),
    ({"epochs_per_task": 0}, r"epochs_per_task must be at least 1"),
    ({"epochs_per_task": 1.5}, r"config key 'task.kwargs.epochs_per_task' expects int"),
    ({"splits": ((0,), (1, 2))}, r"splits must be one or more tasks of 2\+ classes"),
    ({"splits": ((0, 0), (1, 2))}, r"repeats a class"),
  ],
)
def test_bad_options_name_the_key(kwargs, message):
  with pytest.raises(ZooError, match=message):
    continual_options(**kwargs)


def test_options_convert_lists():
  opts = continual_options(splits=[[0, 1], [2, 3, 4]], ewc_lambda=5)
  assert opts.splits == ((0, 1), (2, 3, 4)) and opts.ewc_lambda == 5.0 and opts.head_size == 3


@pytest.mark.parametrize(
  "change,message",
  [
    (lambda c: setattr(c.model, "name", "mlp"), r"method 'progressive' with model 'mlp'"),
    (lambda c: c.model.kwargs.update(num_classes=4), r"model.kwargs.num_classes is set by task 'continual'"),
    (lambda c: c.task.kwargs.update(splits=((0, 1), (6, 7))), r"splits name class 7, but 'blobs' has"),
    (lambda c: setattr(c.data, "augment", {"random_shift": {}}), r"does not support data.augment"),
    (lambda c: setattr(c.data, "batch_size", 1000), r"data.batch_size=1000 must be between 1 and"),
  ],
)
def test_bad_configs_fail_before_training(change, message, tmp_path):
  config = _config("progressive")
  change(config)
  with pytest.raises(ZooError, match=message):
    train_continual(config, tmp_path, progress=False, dataset=_dataset())


@pytest.mark.parametrize("name", ["split_mnist_ewc", "split_mnist_finetune", "split_mnist_progressive"])
def test_the_configs_run_split_mnist_with_their_method(name):
  config = get_config(name)
  opts = continual_options(**config.task.kwargs)
  assert config.task.name == "continual" and opts.splits == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
  assert opts.method == name.removeprefix("split_mnist_")
  assert config.model.name == ("progressive_mlp" if opts.method == "progressive" else "mlp")


def test_a_smoke_config_trains(tmp_path):
  # tests/test_configs.py trains every config's smoke variant (through train_and_evaluate); this one
  # checks the smoke shape: two tasks of two steps.
  config = get_config("split_mnist_ewc", smoke=True)
  result = train_continual(config, tmp_path, progress=False, dataset=_dataset(num_classes=10))
  assert result["step"] == config.steps == 4 and len(result["accuracy_matrix"]) == 2
  assert 0 <= result["test"]["accuracy"] <= 1 and result["test"]["loss"] > 0
