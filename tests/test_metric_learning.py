"""The metric-learning task: in-batch pair losses and metrics against NumPy, the report's pairs and its
10-fold threshold protocol on embeddings whose answer is known, and a few training steps through the
trainer."""

from __future__ import annotations

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.models.siamese import contrastive_loss
from zoo.registry import ZooError
from zoo.tasks import create_task
from zoo.tasks.metric_learning import (
  best_threshold,
  contrastive_pair_losses,
  cross_validated_accuracy,
  sample_pairs,
)
from zoo.train import train_and_evaluate

LABELS = np.array([0, 1, 0, 2, 1, 0, 2, 3])


def _embeddings(seed: int = 0, n: int = len(LABELS), d: int = 3) -> np.ndarray:
  return np.random.default_rng(seed).normal(0, 0.6, (n, d)).astype(np.float32)


def _pairs(labels):
  """NumPy reference: (i, j, same) for every unordered pair i < j."""
  return [(i, j, labels[i] == labels[j]) for i, j in itertools.combinations(range(len(labels)), 2)]


def _reference(e: np.ndarray, labels: np.ndarray, margin: float, threshold: float) -> dict[str, float]:
  """Balanced contrastive loss and verification accuracy over all pairs, by loops."""
  e = e.astype(np.float64)
  same_losses, different_losses, same_correct, different_correct, same_d, different_d = [], [], [], [], [], []
  for i, j, same in _pairs(labels):
    d = np.linalg.norm(e[i] - e[j])
    if same:
      same_losses.append(0.5 * d**2)
      same_correct.append(d <= threshold)
      same_d.append(d)
    else:
      different_losses.append(0.5 * max(0.0, margin - d) ** 2)
      different_correct.append(d > threshold)
      different_d.append(d)
  return {
    "loss": (np.mean(same_losses) + np.mean(different_losses)) / 2,
    "accuracy": (np.mean(same_correct) + np.mean(different_correct)) / 2,
    "same_distance": np.mean(same_d),
    "different_distance": np.mean(different_d),
  }


def _batch(labels, mask=None) -> dict:
  batch = {"label": jnp.asarray(labels, jnp.int32)}
  if mask is not None:
    batch["mask"] = jnp.asarray(mask, jnp.float32)
  return batch


def test_contrastive_pair_losses_equal_the_models_contrastive_loss():
  e = _embeddings()
  same = LABELS[:, None] == LABELS[None, :]
  matrix = np.asarray(contrastive_pair_losses(jnp.asarray(e), jnp.asarray(same), 1.3))
  i, j = np.triu_indices(len(e), k=1)
  rows = contrastive_loss(e[i], e[j], same[i, j].astype(np.float32), margin=1.3)
  np.testing.assert_allclose(matrix[i, j], rows, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("threshold", [None, 0.7])
def test_contrastive_loss_and_metrics_against_numpy(threshold):
  margin = 1.5
  task = create_task("metric_learning", loss="contrastive", margin=margin, threshold=threshold)
  e = _embeddings()
  loss, metrics = jax.jit(task.loss)(jnp.asarray(e), _batch(LABELS))
  expected = _reference(e, LABELS, margin, margin / 2 if threshold is None else threshold)
  assert float(loss) == pytest.approx(expected["loss"], rel=1e-4)
  for key, value in expected.items():
    assert float(metrics[key]) == pytest.approx(value, rel=1e-4, abs=1e-6), key
  assert 0.0 < expected["accuracy"] < 1.0  # The embeddings are random: the test can tell thresholds apart.


def test_triplet_loss_is_batch_hard_against_numpy():
  margin = 0.4
  task = create_task("metric_learning", loss="triplet", margin=margin)
  e = _embeddings(seed=1).astype(np.float64)
  loss, metrics = task.loss(jnp.asarray(e, jnp.float32), _batch(LABELS))
  d = np.linalg.norm(e[:, None] - e[None, :], axis=-1)
  losses = []
  for a in range(len(e)):
    positives = [p for p in range(len(e)) if p != a and LABELS[p] == LABELS[a]]
    negatives = [n for n in range(len(e)) if LABELS[n] != LABELS[a]]
    if positives:  # Label 3 has one example: no positive, not an anchor.
      losses.append(max(0.0, max(d[a, positives]) - min(d[a, negatives]) + margin))
  assert len(losses) == len(e) - 1
  assert float(loss) == pytest.approx(np.mean(losses), rel=1e-4)
  # The default threshold is the batch's midpoint of the mean same and mean different distance.
  reference = _reference(e, LABELS, margin, threshold=0.0)
  midpoint = (reference["same_distance"] + reference["different_distance"]) / 2
  assert float(metrics["accuracy"]) == pytest.approx(_reference(e, LABELS, margin, midpoint)["accuracy"])


def test_gradients_are_finite_for_equal_embeddings():
  task = create_task("metric_learning")
  e = jnp.asarray(np.repeat(_embeddings()[:4], 2, axis=0))  # Pairs of identical rows: D = 0.
  grad = jax.grad(lambda e: task.loss(e, _batch(LABELS))[0])(e)
  assert np.isfinite(grad).all() and np.abs(grad).sum() > 0


@pytest.mark.parametrize("loss", ["contrastive", "triplet"])
def test_evaluation_masks_padding_and_adds_pairs_over_batches(loss):
  rng = np.random.default_rng(2)
  labels, e = rng.integers(0, 3, 12), rng.normal(0, 0.6, (12, 3)).astype(np.float32)
  # Evaluation batches of 7 (the second: 5 rows and 2 of padding); pairs are formed within each batch.
  batches = [np.arange(7), np.arange(7, 12)]
  pairs = [(rows[i], rows[j], same) for rows in batches for i, j, same in _pairs(labels[rows])]
  d = np.array([np.linalg.norm(e[i].astype(np.float64) - e[j]) for i, j, _ in pairs])
  same = np.array([s for *_, s in pairs])
  threshold = float(np.median(d))  # Some pairs of each kind on either side: accuracy is informative.
  task = create_task("metric_learning", loss=loss, threshold=threshold, margin=1.2)
  pad = lambda a: np.concatenate([a, np.zeros((2, *a.shape[1:]), a.dtype)])
  sums = [
    task.eval_metrics(jnp.asarray(e[batches[0]]), _batch(labels[batches[0]], np.ones(7))),
    # The padding rows' label 0 is a real label: only the mask leaves them out of the pairs.
    task.eval_metrics(jnp.asarray(pad(e[batches[1]])), _batch(pad(labels[batches[1]]), [1] * 5 + [0] * 2)),
  ]
  totals = jax.tree.map(lambda a, b: float(a + b), *sums)
  assert totals["count"] == 12
  metrics = task.summarize({k: v / totals["count"] for k, v in totals.items() if k != "count"})
  assert set(metrics) == {"loss", "accuracy", "same_distance", "different_distance"}
  correct = (d <= threshold) == same
  assert 0 < correct[same].mean() < 1 and 0 < correct[~same].mean() < 1
  assert metrics["accuracy"] == pytest.approx((correct[same].mean() + correct[~same].mean()) / 2, rel=1e-5)
  assert metrics["same_distance"] == pytest.approx(d[same].mean(), rel=1e-5)
  assert metrics["different_distance"] == pytest.approx(d[~same].mean(), rel=1e-5)
  if loss == "contrastive":
    expected = (np.mean(0.5 * d[same] ** 2) + np.mean(0.5 * np.maximum(1.2 - d[~same], 0) ** 2)) / 2
  else:  # The mean over the anchors of both batches (each batch's anchors have a positive there).
    per_anchor = []
    for rows in batches:
      dist = np.linalg.norm(e[rows][:, None].astype(np.float64) - e[rows][None], axis=-1)
      for a in range(len(rows)):
        pos = [p for p in range(len(rows)) if p != a and labels[rows][p] == labels[rows][a]]
        neg = [n for n in range(len(rows)) if labels[rows][n] != labels[rows][a]]
        if pos and neg:
          per_anchor.append(max(0.0, dist[a, pos].max() - dist[a, neg].min() + 1.2))
    expected = np.mean(per_anchor)
  assert metrics["loss"] == pytest.approx(expected, rel=1e-4)


def test_sample_pairs_are_balanced_and_deterministic():
  labels = np.random.default_rng(0).integers(0, 10, 500)
  first, second, same, fold = sample_pairs(labels, 1000, folds=10, seed=3)
  assert same.sum() == 500 and (~same).sum() == 500
  assert np.array_equal(labels[first] == labels[second], same)  # Same pairs share a label; others do not.
  assert not np.any(first == second)
  for k in range(10):  # Every fold holds 50 same and 50 different pairs.
    assert same[fold == k].sum() == 50 and (~same[fold == k]).sum() == 50
  again = sample_pairs(labels, 1000, folds=10, seed=3)
  assert all(np.array_equal(a, b) for a, b in zip((first, second, same, fold), again, strict=True))
  other = sample_pairs(labels, 1000, folds=10, seed=4)
  assert not np.array_equal(first, other[0])
  # Uniform: 10,000 pairs of 100 examples; every example is a first member about 100 times (sd ~10) and a
  # second one too; a sampler favouring some examples of a label would not be.
  first, second, same, _ = sample_pairs(labels[:100], 10_000, seed=0)
  for members in (first, second):
    counts = np.bincount(members, minlength=100)
    assert 50 < counts.min() and counts.max() < 150


def test_sample_pairs_needs_two_labels():
  with pytest.raises(ZooError, match="two labels"):
    sample_pairs(np.zeros(10, int), 100)


def test_best_threshold_is_exact():
  distances = np.array([0.1, 0.2, 0.2, 0.5, 0.9, 1.0])
  same = np.array([True, True, False, True, False, False])
  # Cuts after 0.1 / 0.2 / 0.5 score 4/6, 4/6, 5/6: the best is between 0.5 and 0.9.
  assert best_threshold(distances, same) == pytest.approx(0.7)
  assert best_threshold(distances, np.ones(6, bool)) == np.inf
  assert best_threshold(distances, np.zeros(6, bool)) == -np.inf


def test_cross_validation_on_known_answers():
  rng = np.random.default_rng(0)
  same = np.repeat([True, False], 1000)
  fold = np.tile(np.arange(10), 200)
  separable = np.where(same, rng.uniform(0, 1, 2000), rng.uniform(1.5, 3, 2000))
  accuracies, thresholds = cross_validated_accuracy(separable, same, fold)
  assert len(accuracies) == 10 and np.all(accuracies == 1.0)
  assert np.all((thresholds > 0.99) & (thresholds < 1.51))
  # Distances that ignore the label: chance, even though each threshold is the best on its 9 folds.
  accuracies, _ = cross_validated_accuracy(rng.uniform(0, 1, 2000), same, fold)
  assert abs(accuracies.mean() - 0.5) < 0.04
  # Overlapping distributions: the cross-validated accuracy is that of the Bayes threshold (0.5).
  overlapping = np.where(same, rng.normal(0, 0.5, 2000), rng.normal(1, 0.5, 2000))
  accuracies, thresholds = cross_validated_accuracy(overlapping, same, fold)
  assert accuracies.mean() == pytest.approx(0.841, abs=0.03)  # Phi(0.5 / 0.5)
  assert np.all(np.abs(thresholds - 0.5) < 0.15)


def test_write_report_on_known_embeddings(tmp_path):
  labels = np.arange(300) % 3
  task = create_task("metric_learning", report_pairs=600)
  centres = np.eye(3) * 10
  clustered = centres[labels] + np.random.default_rng(0).normal(0, 0.5, (300, 3))
  summary = task.write_report(clustered, labels, tmp_path)
  assert summary["verification_accuracy"] == 1.0 and summary["roc_auc"] == 1.0
  assert summary["pairs"] == 600 and summary["folds"] == 10
  text = (tmp_path / "report.txt").read_text()
  assert "verification accuracy 1.0000" in text and "ROC-AUC 1.0000" in text
  assert (tmp_path / "roc.png").stat().st_size > 1000
  noise = task.write_report(np.random.default_rng(1).normal(0, 1, (300, 3)), labels, tmp_path)
  assert abs(noise["verification_accuracy"] - 0.5) < 0.06 and abs(noise["roc_auc"] - 0.5) < 0.06


@pytest.mark.parametrize(
  "kwargs,key",
  [
    ({"loss": "contrastiv"}, "task.kwargs.loss"),
    ({"loss": 3}, "task.kwargs.loss"),
    ({"margin": -1.0}, "task.kwargs.margin"),
    ({"margin": "wide"}, "task.kwargs.margin"),
    ({"threshold": 0.0}, "task.kwargs.threshold"),
    ({"report_folds": 1}, "task.kwargs.report_folds"),
    ({"report_pairs": 10}, "task.kwargs.report_pairs"),
  ],
)
def test_bad_kwargs_name_the_key(kwargs, key):
  with pytest.raises(ZooError, match=key.replace(".", r"\.")):
    create_task("metric_learning", **kwargs)


def test_unknown_kwarg_and_wrong_outputs_are_named():
  with pytest.raises(ZooError, match="margn.*did you mean: margin"):
    create_task("metric_learning", margn=1.0)
  with pytest.raises(ZooError, match="did you mean: contrastive"):
    create_task("metric_learning", loss="contrastiv")
  with pytest.raises(ZooError, match=r"\(B, D\)"):
    create_task("metric_learning").loss(jnp.zeros((4, 2, 3)), _batch([0, 1, 0, 1]))


@pytest.mark.parametrize("loss", ["contrastive", "triplet"])
def test_trains_siamese_cnn_tiny_through_the_trainer(loss, tiny_config, tmp_path):
  config = tiny_config(
    model__name="siamese_cnn_tiny",
    model__kwargs={},
    data__normalization="scale",
    data__kwargs={"n_train": 256, "n_test": 100, "image_size": 8, "num_classes": 4},
    task__name="metric_learning",
    task__kwargs={"loss": loss, "report_pairs": 200},
    epochs=3,
  )
  result = train_and_evaluate(config, tmp_path, progress=False)
  assert result["step"] == 3 * 256 // 32
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["split"] == "train"]
  assert {"loss", "accuracy", "same_distance", "different_distance"} <= set(train[0])
  assert train[-1]["loss"] < train[0]["loss"]
  # Four well-separated generated classes: same-class pairs end up nearer than different-class ones.
  assert result["test"]["same_distance"] < result["test"]["different_distance"]
  report = result["report"]
  assert report["pairs"] == 200 and report["roc_auc"] > 0.9 and report["verification_accuracy"] > 0.8
  assert (tmp_path / "report.txt").exists() and (tmp_path / "roc.png").exists()
