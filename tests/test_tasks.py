"""Tasks: regression metrics exact over padded splits, the binary task's loss, class weights, and the
regression and XOR problems trained end to end."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.config import Config, get_config
from zoo.data import Dataset, load_dataset
from zoo.registry import ZooError
from zoo.tasks import create_task, list_tasks, reports
from zoo.train import train_and_evaluate
from zoo.train.loop import _summarise, eval_batches


def _split_metrics(task, predictions: np.ndarray, targets: np.ndarray, batch_size: int) -> dict[str, float]:
  """The trainer's evaluation of a split: padded batches, `eval_metrics` summed, divided, summarised.

  The padding rows get large garbage values, so a metric that ignored the mask would be far off.
  """
  data = eval_batches(predictions, targets, batch_size)
  padding = data["mask"] == 0
  assert padding.any()  # The split must not fill its last batch, or the mask is not tested.
  garbage = lambda a: jnp.where(padding.reshape(*padding.shape, *[1] * (a.ndim - 2)), 1e3, a)
  data = dict(data, input=garbage(data["input"]), label=garbage(data["label"]))
  batch_metrics = jax.jit(lambda batch: task.eval_metrics(batch["input"], batch))
  totals = None
  for i in range(len(data["mask"])):
    metrics = batch_metrics({k: v[i] for k, v in data.items()})
    totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
  return _summarise(task, totals)


# --- regression ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_targets", [None, 1, 3])  # None: targets (N,) against outputs (N, 1).
def test_regression_metrics_match_numpy_over_a_padded_split(num_targets):
  rng = np.random.default_rng(0)
  n = 37  # 5 batches of 8, the last one with 3 padding rows.
  shape = (n,) if num_targets is None else (n, num_targets)
  # A mean far from 0 and batches that differ: R^2 from per-batch values would be visibly wrong.
  targets = 3.0 + 2.0 * rng.normal(size=shape) + np.linspace(0, 4, n).reshape(-1, *[1] * (len(shape) - 1))
  predictions = targets + rng.normal(0, 1.0, shape)
  targets, predictions = targets.astype(np.float32), predictions.astype(np.float32)
  outputs = predictions.reshape(n, -1)  # The model's (N, T).
  got = _split_metrics(create_task("regression"), outputs, targets, batch_size=8)
  want = reports.regression_metrics(targets, predictions)
  assert set(got) == {"loss", "mse", "mae", "rmse", "r2"}
  for key in ("mse", "mae", "rmse", "r2"):
    assert got[key] == pytest.approx(want[key], rel=1e-5), key
  assert got["loss"] == pytest.approx(want["mse"], rel=1e-5)
  if num_targets is None:
    assert got["rmse"] == pytest.approx(math.sqrt(got["mse"]), rel=1e-12)


def test_r2_is_the_whole_splits_not_a_mean_over_batches():
  # Two batches with opposite target means: each batch alone explains little of its own variance, the
  # whole split (whose variance is mostly between the batches) much more.
  targets = np.array([-5, -4, -6, -5, 5, 4, 6, 5, 0], np.float32)
  predictions = np.array([-4, -5, -5, -6, 4, 5, 5, 6, 0.5], np.float32)
  got = _split_metrics(create_task("regression"), predictions[:, None], targets, batch_size=4)
  assert got["r2"] == pytest.approx(reports.regression_metrics(targets, predictions)["r2"], rel=1e-6)
  assert got["r2"] > 0.9
  first_batch = reports.regression_metrics(targets[:4], predictions[:4])["r2"]
  assert first_batch < 0  # Averaging per-batch R^2s would be far from the split's.


def test_r2_of_a_constant_target_follows_scikit_learn():
  task = create_task("regression")
  targets = np.full(10, 2.5, np.float32)
  exact = _split_metrics(task, targets[:, None], targets, batch_size=4)
  assert exact["r2"] == 1.0 and exact["mse"] == 0.0
  off = _split_metrics(task, targets[:, None] + 0.1, targets, batch_size=4)
  assert off["r2"] == 0.0 and off["rmse"] == pytest.approx(0.1, rel=1e-5)


@pytest.mark.parametrize("loss, delta", [("mse", 1.0), ("huber", 0.5), ("mae", 1.0)])
def test_regression_training_losses(loss, delta):
  rng = np.random.default_rng(1)
  targets = rng.normal(size=16).astype(np.float32)
  outputs = (targets + 2 * rng.normal(size=16)).astype(np.float32)[:, None]  # (B, 1) against (B,)
  task = create_task("regression", loss=loss, huber_delta=delta)
  value, metrics = task.loss(jnp.asarray(outputs), {"label": jnp.asarray(targets)})
  error = np.abs(outputs[:, 0].astype(np.float64) - targets)
  want = {
    "mse": np.mean(error**2),
    "mae": np.mean(error),
    "huber": np.mean(np.where(error <= delta, 0.5 * error**2, delta * (error - 0.5 * delta))),
  }[loss]
  assert float(value) == pytest.approx(want, rel=1e-5)
  assert float(metrics["mse"]) == pytest.approx(np.mean(error**2), rel=1e-5)


def test_regression_checks_output_width_and_arguments():
  task = create_task("regression")
  with pytest.raises(ZooError, match="num_classes=1"):
    task.loss(jnp.zeros((4, 2)), {"label": jnp.zeros(4)})
  with pytest.raises(ZooError, match="num_classes=3"):
    task.loss(jnp.zeros((4, 2)), {"label": jnp.zeros((4, 3))})
  with pytest.raises(ZooError, match="float targets"):
    task.loss(jnp.zeros((4, 1)), {"label": jnp.zeros(4, jnp.int32)})
  with pytest.raises(ZooError, match="task.kwargs.loss"):
    create_task("regression", loss="l2")


def test_regression_report(tmp_path):
  rng = np.random.default_rng(2)
  targets = rng.normal(size=(50, 2)).astype(np.float32)
  predictions = targets + 0.3 * rng.normal(size=(50, 2)).astype(np.float32)
  summary = create_task("regression").write_report(predictions, targets, tmp_path)
  assert summary == pytest.approx(reports.regression_metrics(targets, predictions))
  text = (tmp_path / "report.txt").read_text()
  assert "R^2" in text and f"{summary['r2']:.6f}" in text and "per target" in text
  assert (tmp_path / "predictions.png").stat().st_size > 1000


# --- binary -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("logits_shape", [(12,), (12, 1)])
def test_binary_loss_and_accuracy_match_numpy(logits_shape):
  rng = np.random.default_rng(3)
  logits = (4 * rng.normal(size=12)).astype(np.float32)
  labels = rng.integers(0, 2, 12).astype(np.int32)
  task = create_task("binary")
  loss, metrics = task.loss(jnp.asarray(logits.reshape(logits_shape)), {"label": jnp.asarray(labels)})
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  want = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert float(metrics["accuracy"]) == pytest.approx(np.mean((logits > 0) == labels))
  got = _split_metrics(task, logits.reshape(logits_shape), labels, batch_size=5)
  assert got["loss"] == pytest.approx(want, rel=1e-5)
  assert got["accuracy"] == pytest.approx(np.mean((logits > 0) == labels))


def test_binary_needs_one_output_unit():
  with pytest.raises(ZooError, match="num_classes=1"):
    create_task("binary").loss(jnp.zeros((4, 2)), {"label": jnp.zeros(4, jnp.int32)})


# --- class weights ------------------------------------------------------------------------------------------


def _weighted_cross_entropy(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  losses = -log_probs[np.arange(len(labels)), labels]
  return float((weights[labels] * losses).sum() / weights[labels].sum())


def test_class_weights_give_the_weighted_mean_cross_entropy():
  rng = np.random.default_rng(4)
  logits = (3 * rng.normal(size=(20, 4))).astype(np.float32)
  labels = rng.integers(0, 4, 20).astype(np.int32)
  weights = np.array([0.5, 2.0, 1.0, 4.0])
  batch = {"label": jnp.asarray(labels), "mask": jnp.ones(20)}
  task = create_task("classification", class_weights=list(weights))
  loss, _ = jax.jit(task.loss)(jnp.asarray(logits), batch)
  assert float(loss) == pytest.approx(_weighted_cross_entropy(logits, labels, weights), rel=1e-5)
  unweighted = _weighted_cross_entropy(logits, labels, np.ones(4))
  assert abs(float(loss) - unweighted) > 1e-2  # The weights change the loss...
  sums = task.eval_metrics(jnp.asarray(logits), batch)
  assert float(sums["loss"]) / 20 == pytest.approx(unweighted, rel=1e-5)  # ...but not the evaluation.
  uniform, _ = create_task("classification", class_weights=(3.0,) * 4).loss(jnp.asarray(logits), batch)
  assert float(uniform) == pytest.approx(unweighted, rel=1e-5)


def test_class_weights_of_the_wrong_length_fail_clearly():
  task = create_task("classification", class_weights=[1.0, 2.0])
  batch = {"label": jnp.zeros(4, jnp.int32)}
  with pytest.raises(ZooError, match=r"task\.kwargs\.class_weights.*K=3"):
    jax.jit(task.loss)(jnp.zeros((4, 3)), batch)
  with pytest.raises(ZooError, match=r"task\.kwargs\.class_weights"):
    create_task("classification", class_weights=[1.0, -1.0])
  with pytest.raises(ZooError, match=r"task\.kwargs\.class_weights"):
    create_task("classification", class_weights="balanced")


# --- the datasets -------------------------------------------------------------------------------------------


def test_synthetic_regression_and_xor_datasets():
  assert {"binary", "classification", "regression"} <= set(list_tasks())
  ds = load_dataset("synthetic_regression", n_train=4000, n_test=50, features=12, seed=3)
  assert ds.is_regression and ds.num_classes == 1 and ds.input_shape == (12,)
  assert ds.y_train.shape == (4000,) and ds.y_train.dtype == np.float32
  # Standardised with the population's moments: close to 0 and 1, but not fitted to this sample.
  assert abs(ds.y_train.mean()) < 0.05 and abs(ds.y_train.std() - 1) < 0.05 and ds.y_train.mean() != 0
  again = load_dataset("synthetic_regression", n_train=4000, n_test=50, features=12, seed=3)
  assert np.array_equal(ds.x_test, again.x_test) and np.array_equal(ds.y_test, again.y_test)
  with pytest.raises(ZooError, match="features"):
    load_dataset("synthetic_regression", features=5)

  xor = load_dataset("xor")
  assert not xor.is_regression and xor.num_classes == 2
  np.testing.assert_array_equal(xor.x_train, [[0, 0], [0, 1], [1, 0], [1, 1]])
  np.testing.assert_array_equal(xor.y_train, [0, 1, 1, 0])
  np.testing.assert_array_equal(xor.x_test, xor.x_train)
  noisy = load_dataset("xor", n_train=40, n_test=8, noise=0.1)
  assert noisy.x_train.shape == (40, 2) and np.bincount(noisy.y_train).tolist() == [20, 20]
  assert 0 < np.abs(noisy.x_train - xor.x_train[np.arange(40) % 4]).max() < 1


def test_dataset_accepts_regression_targets_and_checks_them():
  x = np.zeros((4, 3), np.float32)
  Dataset("r", x, np.zeros(4, np.float32), x, np.zeros(4, np.float32), num_classes=1, pixel_max=1.0)
  Dataset("r", x, np.zeros((4, 2), np.float32), x, np.zeros((4, 2), np.float32), num_classes=2, pixel_max=1.0)
  bad = [
    (np.zeros(4, np.float32), 2),  # (N,) targets are one target
    (np.zeros((4, 2), np.float32), 3),  # T must be num_classes
    (np.zeros(4, np.float64), 1),  # float32 only
  ]
  for y, num_classes in bad:
    with pytest.raises(ValueError, match="inconsistent"):
      Dataset("r", x, y, x, y, num_classes=num_classes, pixel_max=1.0)
  with pytest.raises(ValueError, match="inconsistent"):  # Both splits hold the same kind of labels.
    Dataset("r", x, np.zeros(4, np.float32), x, np.zeros(4, np.int32), num_classes=1, pixel_max=1.0)


# --- end to end ---------------------------------------------------------------------------------------------


def _tabular_config(**overrides) -> Config:
  c = Config()
  c.model.kwargs = {"hidden_sizes": (32,), "activation": "silu"}
  c.data.name = "synthetic_regression"
  c.data.kwargs = {"n_train": 512, "n_test": 200}
  c.data.normalization = "feature"
  c.data.batch_size = 64
  c.data.eval_batch_size = 64  # 200 = 3 full batches and a padded one.
  c.task.name = "regression"
  c.optimizer.learning_rate = 1e-2
  c.epochs = 40
  c.eval_every_epochs = 40
  c.log_every_steps = 40
  for key, value in overrides.items():
    setattr(c, key, value)
  return c


def test_regression_trains_end_to_end(tmp_path):
  result = train_and_evaluate(_tabular_config(), tmp_path, progress=False)
  assert result["test"]["r2"] > 0.7  # The noise caps it at ~0.92; predicting the mean gives ~0.
  assert result["report"]["r2"] == pytest.approx(result["test"]["r2"], abs=1e-5)
  assert result["report"]["rmse"] == pytest.approx(result["test"]["rmse"], rel=1e-5)
  assert "R^2" in (tmp_path / "report.txt").read_text() and (tmp_path / "predictions.png").exists()


def test_multi_target_regression_trains_end_to_end(tmp_path):
  base = load_dataset("synthetic_regression", n_train=512, n_test=100)
  twice = lambda y: np.stack([y, -2 * y], axis=1)  # (N, 2): the model gets num_classes=2 outputs.
  ds = Dataset("two", base.x_train, twice(base.y_train), base.x_test, twice(base.y_test), 2, 1.0)
  result = train_and_evaluate(_tabular_config(), tmp_path, progress=False, dataset=ds)
  assert result["state"].params["Dense_1"]["kernel"].shape == (32, 2)
  assert result["test"]["r2"] > 0.7
  assert result["report"]["r2"] == pytest.approx(result["test"]["r2"], abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_xor_reaches_accuracy_one(seed, tmp_path):
  config = get_config("xor_mlp")
  config.seed, config.epochs, config.eval_every_epochs = seed, 300, 300
  result = train_and_evaluate(config, tmp_path, progress=False)
  assert result["test"]["accuracy"] == 1.0 and result["test"]["loss"] < 0.1
  assert result["report"]["roc_auc"] == 1.0
