"""Classification and regression reports against hand-computed values and brute-force references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from zoo.registry import ZooError
from zoo.tasks.reports import (
  ReportError,
  confusion_matrix,
  format_report,
  per_class_report,
  regression_metrics,
  roc_auc,
  roc_curve,
  save_confusion_png,
  save_roc_png,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Rows = true class. Support (3, 2, 4), predicted (3, 3, 3), true positives (2, 1, 3).
CONFUSION_3 = np.array([[2, 1, 0], [1, 1, 0], [0, 1, 3]])


def _labels_predictions_for(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  pairs = [
    (i, j) for i, j in itertools.product(range(len(confusion)), repeat=2) for _ in range(confusion[i, j])
  ]
  rng = np.random.default_rng(0)
  pairs = [pairs[k] for k in rng.permutation(len(pairs))]
  labels, predictions = zip(*pairs, strict=True)
  return np.array(labels), np.array(predictions)


def _brute_force_auc(labels, scores) -> float:
  positive = [s for s, y in zip(scores, labels, strict=True) if y == 1]
  negative = [s for s, y in zip(scores, labels, strict=True) if y == 0]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positive for n in negative)
  return wins / (len(positive) * len(negative))


def test_confusion_matrix_counts_rows_as_true_class():
  labels, predictions = _labels_predictions_for(CONFUSION_3)
  confusion = confusion_matrix(labels, predictions, 3)
  assert confusion.dtype == np.int64
  np.testing.assert_array_equal(confusion, CONFUSION_3)
  # Asymmetric on purpose: one true-0 predicted as 1 is not one true-1 predicted as 0.
  np.testing.assert_array_equal(confusion_matrix([0], [1], 2), [[0, 1], [0, 0]])
  np.testing.assert_array_equal(confusion_matrix([], [], 2), np.zeros((2, 2)))


@pytest.mark.parametrize(
  "labels, predictions, num_classes",
  [([0, 3], [0, 1], 3), ([0, -1], [0, 1], 3), ([0, 1], [0], 3), ([0.5], [0], 3), ([[0]], [[0]], 3)],
)
def test_confusion_matrix_rejects_bad_inputs(labels, predictions, num_classes):
  with pytest.raises(ReportError):
    confusion_matrix(np.array(labels), np.array(predictions), num_classes)


def test_per_class_report_on_hand_computed_three_classes():
  report = per_class_report(CONFUSION_3)
  np.testing.assert_allclose(report["precision"], [2 / 3, 1 / 3, 1.0])
  np.testing.assert_allclose(report["recall"], [2 / 3, 1 / 2, 3 / 4])
  np.testing.assert_allclose(report["f1"], [2 / 3, 2 / 5, 6 / 7])
  np.testing.assert_array_equal(report["support"], [3, 2, 4])
  assert report["accuracy"] == pytest.approx(6 / 9)

  macro = report["macro"]
  assert macro["precision"] == pytest.approx(2 / 3)
  assert macro["recall"] == pytest.approx(23 / 36)
  assert macro["f1"] == pytest.approx((2 / 3 + 2 / 5 + 6 / 7) / 3)
  assert macro["support"] == 9

  weighted = report["weighted"]
  assert weighted["precision"] == pytest.approx(20 / 27)
  assert weighted["recall"] == pytest.approx(6 / 9)  # Support-weighted recall is always the accuracy.
  assert weighted["f1"] == pytest.approx((3 * 2 / 3 + 2 * 2 / 5 + 4 * 6 / 7) / 9)
  assert weighted["support"] == 9


def test_per_class_report_zero_division_counts_as_zero():
  # Class 1 is never predicted (precision 0/0); class 2 never occurs nor is predicted (everything 0/0).
  report = per_class_report(np.array([[2, 0, 0], [1, 0, 0], [0, 0, 0]]))
  assert all(np.all(np.isfinite(report[k])) for k in ("precision", "recall", "f1"))
  np.testing.assert_allclose(report["precision"], [2 / 3, 0.0, 0.0])
  np.testing.assert_allclose(report["recall"], [1.0, 0.0, 0.0])
  np.testing.assert_allclose(report["f1"], [0.8, 0.0, 0.0])
  assert report["macro"]["f1"] == pytest.approx(0.8 / 3)
  assert report["weighted"]["f1"] == pytest.approx(0.8 * 2 / 3)
  empty = per_class_report(np.zeros((2, 2), dtype=np.int64))
  assert empty["accuracy"] == 0.0 and empty["weighted"]["precision"] == 0.0


def test_per_class_report_rejects_non_square():
  with pytest.raises(ReportError):
    per_class_report(np.zeros((2, 3)))


def test_format_report_matches_sklearn_layout():
  # The example and its output from sklearn.metrics.classification_report's documentation.
  confusion = confusion_matrix(np.array([0, 1, 2, 2, 2]), np.array([0, 0, 2, 2, 1]), 3)
  text = format_report(per_class_report(confusion), ["class 0", "class 1", "class 2"])
  expected = (
    "              precision    recall  f1-score   support\n"
    "\n"
    "     class 0       0.50      1.00      0.67         1\n"
    "     class 1       0.00      0.00      0.00         1\n"
    "     class 2       1.00      0.67      0.80         3\n"
    "\n"
    "    accuracy                           0.60         5\n"
    "   macro avg       0.50      0.56      0.49         5\n"
    "weighted avg       0.70      0.60      0.61         5\n"
  )
  assert text == expected
  assert "           0       0.50" in format_report(per_class_report(confusion))
  with pytest.raises(ReportError):
    format_report(per_class_report(confusion), ["only one name"])


def test_roc_auc_with_ties_matches_brute_force_over_pairs():
  labels = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 1])
  scores = np.array([0.9, 0.9, 0.7, 0.4, 0.4, 0.4, 0.2, 0.1, 0.3, 0.4])
  # By hand: 25 pairs; positives 0.9: 4.5, 0.7: 4, 0.4 (twice): 2 + 2 * 0.5 each, 0.2: 1 -> 15.5 / 25.
  assert _brute_force_auc(labels, scores) == pytest.approx(15.5 / 25)
  assert roc_auc(labels, scores) == pytest.approx(15.5 / 25, abs=1e-15)
  rng = np.random.default_rng(1)
  for _ in range(5):
    labels = rng.integers(0, 2, size=40)
    labels[:2] = [0, 1]
    scores = rng.integers(0, 6, size=40).astype(np.float32)  # Many ties.
    assert roc_auc(labels, scores) == pytest.approx(_brute_force_auc(labels, scores), abs=1e-12)


def test_roc_auc_sanity_values():
  labels = np.array([0, 0, 1, 1])
  assert roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
  assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
  assert roc_auc(labels, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
  assert roc_auc(labels.astype(bool), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_roc_auc_single_class_raises_value_error(labels):
  with pytest.raises(ValueError, match="both classes"):
    roc_auc(np.array(labels), np.array([0.1, 0.2, 0.3]))
  assert issubclass(ReportError, ZooError)


def test_roc_auc_rejects_non_binary_labels_and_nan():
  with pytest.raises(ReportError):
    roc_auc(np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]))
  with pytest.raises(ReportError):
    roc_auc(np.array([0, 1]), np.array([0.1, np.nan]))


def test_roc_curve_endpoints_monotonic_and_area_equals_auc():
  labels = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 1])
  scores = np.array([0.9, 0.9, 0.7, 0.4, 0.4, 0.4, 0.2, 0.1, 0.3, 0.4])
  fpr, tpr, thresholds = roc_curve(labels, scores)
  assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
  assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
  assert thresholds[0] == np.inf and np.all(np.diff(thresholds) < 0)
  np.testing.assert_array_equal(thresholds[1:], [0.9, 0.7, 0.4, 0.3, 0.2, 0.1])
  # At threshold 0.4 (score >= 0.4): positives 0.9, 0.7, 0.4, 0.4 of 5; negatives 0.9, 0.4, 0.4 of 5.
  assert (fpr[3], tpr[3]) == (3 / 5, 4 / 5)
  area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
  assert area == pytest.approx(roc_auc(labels, scores))


def test_roc_curve_single_class_raises():
  with pytest.raises(ValueError):
    roc_curve(np.array([0, 0]), np.array([0.1, 0.2]))


def test_regression_metrics_match_direct_formulas():
  rng = np.random.default_rng(2)
  targets = rng.normal(size=50)
  predictions = targets + rng.normal(scale=0.3, size=50)
  metrics = regression_metrics(targets, predictions)
  errors = predictions - targets
  assert metrics["mae"] == pytest.approx(np.mean(np.abs(errors)))
  assert metrics["mse"] == pytest.approx(np.mean(errors**2))
  assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)))
  r2 = 1 - np.sum(errors**2) / np.sum((targets - targets.mean()) ** 2)
  assert metrics["r2"] == pytest.approx(r2)
  # A hand example: errors (0, 1, -2); SS_tot of (1, 2, 3) is 2.
  small = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 1.0]))
  assert small == pytest.approx({"mae": 1.0, "mse": 5 / 3, "rmse": np.sqrt(5 / 3), "r2": 1 - 5 / 2})
  assert regression_metrics(targets, targets)["r2"] == 1.0
  assert regression_metrics(targets, np.full_like(targets, targets.mean()))["r2"] == pytest.approx(0.0)


def test_regression_r2_constant_targets_follows_sklearn_force_finite():
  constant = np.full(4, 2.0)
  assert regression_metrics(constant, constant)["r2"] == 1.0
  assert regression_metrics(constant, constant + 1.0)["r2"] == 0.0


def test_regression_metrics_multioutput_average_per_column():
  targets = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
  predictions = np.array([[1.0, 3.0], [3.0, 0.0], [1.0, 0.0]])
  metrics = regression_metrics(targets, predictions)
  # Column 0 is the hand example above; column 1 has errors (3, 0, 0) and a constant target.
  assert metrics["mse"] == pytest.approx((5 / 3 + 3) / 2)
  assert metrics["rmse"] == pytest.approx((np.sqrt(5 / 3) + np.sqrt(3)) / 2)
  assert metrics["r2"] == pytest.approx((1 - 5 / 2 + 0.0) / 2)
  with pytest.raises(ReportError):
    regression_metrics(targets, predictions[:, :1])


def _assert_png(path):
  data = path.read_bytes()
  assert data.startswith(PNG_SIGNATURE)
  assert len(data) > 1024


@pytest.mark.parametrize("normalize", [True, False])
def test_save_confusion_png_writes_a_png(tmp_path, normalize):
  out = save_confusion_png(CONFUSION_3, tmp_path / "sub" / "confusion.png", ["cat", "dog", "bird"], normalize)
  assert out == tmp_path / "sub" / "confusion.png"
  _assert_png(out)


def test_save_roc_png_writes_a_png(tmp_path):
  out = save_roc_png(
    np.array([0, 1, 0, 1, 1]), np.array([0.2, 0.9, 0.4, 0.3, 0.8]), str(tmp_path / "roc.png")
  )
  assert out == tmp_path / "roc.png"
  _assert_png(out)
