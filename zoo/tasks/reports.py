"""Evaluation reports: confusion matrix, per-class precision/recall/F1, ROC/AUC, regression metrics, PNGs.

Pure numpy functions over arrays already on the host (no JAX, no sklearn). Conventions follow
scikit-learn where it has one: `zero_division=0` for precision/recall/F1, `force_finite=True` for R²,
and `multioutput="uniform_average"` for (N, D) regression targets.
"""

from __future__ import annotations

import pathlib

import numpy as np

from zoo.registry import ZooError


class ReportError(ZooError, ValueError):
  """Inputs a report cannot be computed from (shapes, label ranges, a single class for ROC)."""


def _as_1d(name: str, values) -> np.ndarray:
  array = np.asarray(values)
  if array.ndim != 1:
    raise ReportError(f"{name} must be one-dimensional, got shape {array.shape}.")
  return array


def _as_class_ids(name: str, values, num_classes: int) -> np.ndarray:
  array = _as_1d(name, values)
  if array.size and not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
    raise ReportError(f"{name} must hold integer class ids, got dtype {array.dtype}.")
  array = array.astype(np.int64)
  if array.size and (array.min() < 0 or array.max() >= num_classes):
    raise ReportError(
      f"{name} must lie in [0, {num_classes}) for num_classes={num_classes}, "
      f"got values from {array.min()} to {array.max()}."
    )
  return array


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts of (true, predicted) class pairs.

  Args:
    labels: (N,) integer true classes in [0, num_classes).
    predictions: (N,) integer predicted classes in [0, num_classes).
    num_classes: K.

  Returns:
    (K, K) int64; entry [i, j] counts examples of true class i predicted as j (rows = true class).
  """
  if num_classes < 1:
    raise ReportError(f"num_classes must be at least 1, got {num_classes}.")
  labels = _as_class_ids("labels", labels, num_classes)
  predictions = _as_class_ids("predictions", predictions, num_classes)
  if labels.shape != predictions.shape:
    raise ReportError(f"labels {labels.shape} and predictions {predictions.shape} differ in length.")
  flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
  return flat.reshape(num_classes, num_classes).astype(np.int64)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  # sklearn's zero_division=0: an undefined ratio (0/0, or x/0) counts as 0.0 rather than NaN.
  numerator = np.asarray(numerator, dtype=np.float64)
  denominator = np.asarray(denominator, dtype=np.float64)
  out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
  np.divide(numerator, denominator, out=out, where=denominator != 0)
  return out


def per_class_report(confusion: np.ndarray) -> dict:
  """Precision, recall, F1 and support per class, plus accuracy and macro/weighted averages.

  Args:
    confusion: (K, K) counts, rows = true class (as `confusion_matrix` returns).

  Returns:
    {"precision", "recall", "f1", "support"}: (K,) arrays (support int64); "accuracy": float;
    "macro" and "weighted": {"precision", "recall", "f1": float, "support": int (total)}.
    Undefined ratios are 0.0 (sklearn's zero_division=0). The macro average includes every class,
    even those with no support, as sklearn does when given labels=range(K).
  """
  confusion = np.asarray(confusion)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ReportError(f"confusion must be a square (K, K) matrix, got shape {confusion.shape}.")
  if np.any(confusion < 0):
    raise ReportError("confusion must hold non-negative counts.")
  true_positives = np.diag(confusion).astype(np.float64)
  support = confusion.sum(axis=1)
  predicted = confusion.sum(axis=0)
  false_positives = predicted - true_positives
  false_negatives = support - true_positives
  precision = _safe_divide(true_positives, predicted)
  recall = _safe_divide(true_positives, support)
  # F1 from counts, 2TP / (2TP + FP + FN): equal to 2PR/(P+R), without the rounding of P and R first.
  f1 = _safe_divide(2 * true_positives, 2 * true_positives + false_positives + false_negatives)
  total = float(support.sum())
  weights = _safe_divide(support, total)
  total_int = int(np.rint(total))
  return {
    "precision": precision,
    "recall": recall,
    "f1": f1,
    "support": np.rint(support).astype(np.int64),
    "accuracy": float(_safe_divide(true_positives.sum(), total)),
    "macro": {
      "precision": float(precision.mean()),
      "recall": float(recall.mean()),
      "f1": float(f1.mean()),
      "support": total_int,
    },
    "weighted": {
      "precision": float((precision * weights).sum()),
      "recall": float((recall * weights).sum()),
      "f1": float((f1 * weights).sum()),
      "support": total_int,
    },
  }


def format_report(report: dict, class_names: list[str] | None = None, *, digits: int = 2) -> str:
  """A text table laid out like sklearn's `classification_report`.

  Args:
    report: the dict from `per_class_report`.
    class_names: K row names; defaults to the class indices.
    digits: decimals for the ratios.
  """
  num_classes = len(report["support"])
  if class_names is None:
    class_names = [str(k) for k in range(num_classes)]
  class_names = [str(name) for name in class_names]
  if len(class_names) != num_classes:
    raise ReportError(f"class_names has {len(class_names)} names for {num_classes} classes.")
  headers = ["precision", "recall", "f1-score", "support"]
  width = max([len("weighted avg"), digits, *map(len, class_names)])
  head = f"{'':>{width}s} " + "".join(f" {h:>9}" for h in headers)
  row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}"
  lines = [head, ""]
  for k, name in enumerate(class_names):
    values = (report["precision"][k], report["recall"][k], report["f1"][k], int(report["support"][k]))
    lines.append(row.format(name, *values, width=width, digits=digits))
  lines.append("")
  total = report["macro"]["support"]
  accuracy = f"{report['accuracy']:>9.{digits}f}"
  lines.append(f"{'accuracy':>{width}s}  {'':>9s} {'':>9s} {accuracy} {total:>9}")
  for key, label in (("macro", "macro avg"), ("weighted", "weighted avg")):
    average = report[key]
    values = (average["precision"], average["recall"], average["f1"], int(average["support"]))
    lines.append(row.format(label, *values, width=width, digits=digits))
  return "\n".join(lines) + "\n"


def _binary_inputs(labels, scores) -> tuple[np.ndarray, np.ndarray]:
  labels = _as_1d("labels", labels)
  scores = _as_1d("scores", scores).astype(np.float64)
  if labels.shape != scores.shape:
    raise ReportError(f"labels {labels.shape} and scores {scores.shape} differ in length.")
  if not np.all(np.isin(labels, (0, 1))):
    raise ReportError("labels must be binary: 0/1 or False/True.")
  if np.any(np.isnan(scores)):
    raise ReportError("scores contain NaN.")
  positives = labels.astype(bool)
  num_positive = int(positives.sum())
  if num_positive == 0 or num_positive == positives.size:
    raise ReportError(
      "ROC needs both classes in labels; got only "
      f"{'positives' if num_positive else 'negatives'} ({positives.size} examples)."
    )
  return positives, scores


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve for binary labels, exactly, via the Mann-Whitney U statistic.

  AUC = P(score of a random positive > score of a random negative) + 0.5 P(tie). Ties share the
  average of the ranks they span.

  Args:
    labels: (N,) 0/1 or bool, 1 = positive.
    scores: (N,) higher = more positive.

  Raises:
    ReportError (a ValueError): only one class is present, or the inputs are malformed.
  """
  positives, scores = _binary_inputs(labels, scores)
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  # Twice the average rank of a tie group occupying 1-based ranks s+1..s+c is 2s + c + 1, an integer,
  # so U is computed in exact integer arithmetic and only the final ratio is rounded.
  starts = np.cumsum(counts) - counts
  doubled_rank = (2 * starts + counts + 1)[inverse]
  num_positive = int(positives.sum())
  num_negative = positives.size - num_positive
  doubled_u = int(doubled_rank[positives].sum()) - num_positive * (num_positive + 1)
  return doubled_u / (2 * num_positive * num_negative)


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The ROC curve at every distinct score (no points dropped).

  Args:
    labels: (N,) 0/1 or bool, 1 = positive.
    scores: (N,) higher = more positive; an example is predicted positive when score >= threshold.

  Returns:
    fpr, tpr, thresholds, each (M + 1,) for M distinct scores. thresholds decrease strictly, starting
    at +inf so the curve starts at (0, 0); it ends at (1, 1). Tied scores form one diagonal step,
    so the trapezoidal area under (fpr, tpr) equals `roc_auc`.
  """
  positives, scores = _binary_inputs(labels, scores)
  order = np.argsort(-scores, kind="stable")
  sorted_scores = scores[order]
  sorted_positives = positives[order]
  # The last index of each run of equal scores: where the threshold moves past a whole tie group.
  last_of_group = np.flatnonzero(np.diff(sorted_scores) != 0)
  last_of_group = np.append(last_of_group, sorted_scores.size - 1)
  true_positives = np.cumsum(sorted_positives)[last_of_group]
  false_positives = (last_of_group + 1) - true_positives
  tpr = np.concatenate([[0.0], true_positives / true_positives[-1]])
  fpr = np.concatenate([[0.0], false_positives / false_positives[-1]])
  thresholds = np.concatenate([[np.inf], sorted_scores[last_of_group]])
  return fpr, tpr, thresholds


def new_figure(width: float, height: float):
  # A bare Figure on an Agg canvas: no pyplot global state, no backend switch for the caller.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(width, height))
  FigureCanvasAgg(figure)
  return figure


def _prepare_path(path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  return path


# Beyond this many classes the cell annotations overlap and are left out.
_MAX_ANNOTATED_CLASSES = 30


def save_confusion_png(
  confusion: np.ndarray, path, class_names: list[str] | None = None, normalize: bool = True
) -> pathlib.Path:
  """Writes the confusion matrix as an annotated heat map PNG.

  Args:
    confusion: (K, K) counts, rows = true class.
    path: where to write; parent directories are created.
    class_names: K tick labels; defaults to the class indices.
    normalize: show each row as fractions of its true class (rows with no examples stay 0).

  Returns:
    The path written.
  """
  confusion = np.asarray(confusion)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ReportError(f"confusion must be a square (K, K) matrix, got shape {confusion.shape}.")
  num_classes = confusion.shape[0]
  if class_names is None:
    class_names = [str(k) for k in range(num_classes)]
  if len(class_names) != num_classes:
    raise ReportError(f"class_names has {len(class_names)} names for {num_classes} classes.")
  values = _safe_divide(confusion, confusion.sum(axis=1, keepdims=True)) if normalize else confusion
  side = min(max(4.0, 0.5 * num_classes + 2.0), 20.0)
  figure = new_figure(side + 1.0, side)
  axes = figure.add_subplot()
  image = axes.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
  figure.colorbar(image, ax=axes)
  axes.set_xticks(range(num_classes), labels=class_names, rotation=45, ha="right")
  axes.set_yticks(range(num_classes), labels=class_names)
  axes.set_xlabel("predicted")
  axes.set_ylabel("true")
  axes.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
  if num_classes <= _MAX_ANNOTATED_CLASSES:
    # White text on the darker half of the colour scale (fixed at [0, 1] when normalised).
    midpoint = 0.5 if normalize else float(values.max()) / 2
    for i in range(num_classes):
      for j in range(num_classes):
        text = f"{values[i, j]:.2f}" if normalize else f"{int(values[i, j])}"
        color = "white" if values[i, j] > midpoint else "black"
        axes.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
  figure.tight_layout()
  path = _prepare_path(path)
  figure.savefig(path, format="png", dpi=100)
  return path


def save_roc_png(labels: np.ndarray, scores: np.ndarray, path) -> pathlib.Path:
  """Writes the ROC curve, with the chance diagonal and the AUC in the legend, as a PNG.

  Returns:
    The path written.
  """
  fpr, tpr, _ = roc_curve(labels, scores)
  auc = roc_auc(labels, scores)
  figure = new_figure(5.0, 5.0)
  axes = figure.add_subplot()
  axes.plot(fpr, tpr, label=f"ROC (AUC = {auc:.3f})")
  axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="chance")
  axes.set_xlim(0.0, 1.0)
  axes.set_ylim(0.0, 1.0)
  axes.set_aspect("equal")
  axes.set_xlabel("false positive rate")
  axes.set_ylabel("true positive rate")
  axes.legend(loc="lower right")
  figure.tight_layout()
  path = _prepare_path(path)
  figure.savefig(path, format="png", dpi=100)
  return path


def regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict:
  """Mean absolute error, mean squared error, its root, and the coefficient of determination R².

  Args:
    targets: (N,) or (N, D).
    predictions: the same shape.

  Returns:
    {"mae", "mse", "rmse", "r2"} as floats. For (N, D) each metric is computed per output column and
    averaged (sklearn's multioutput="uniform_average"; so rmse is the mean of per-column RMSEs).
    R² = 1 - SS_res / SS_tot; a constant target column (SS_tot = 0) scores 1.0 if predicted exactly
    and 0.0 otherwise, rather than NaN or -inf (sklearn's force_finite=True).
  """
  targets = np.asarray(targets, dtype=np.float64)
  predictions = np.asarray(predictions, dtype=np.float64)
  if targets.shape != predictions.shape:
    raise ReportError(f"targets {targets.shape} and predictions {predictions.shape} differ in shape.")
  if targets.ndim not in (1, 2) or targets.shape[0] == 0:
    raise ReportError(f"targets must be (N,) or (N, D) with N > 0, got shape {targets.shape}.")
  targets = targets.reshape(targets.shape[0], -1)
  predictions = predictions.reshape(predictions.shape[0], -1)
  errors = predictions - targets
  mse = np.mean(errors**2, axis=0)
  ss_res = np.sum(errors**2, axis=0)
  ss_tot = np.sum((targets - targets.mean(axis=0)) ** 2, axis=0)
  r2 = np.where(ss_res == 0, 1.0, 0.0)
  np.subtract(1.0, ss_res / np.where(ss_tot == 0, 1.0, ss_tot), out=r2, where=ss_tot != 0)
  return {
    "mae": float(np.mean(np.abs(errors))),
    "mse": float(mse.mean()),
    "rmse": float(np.sqrt(mse).mean()),
    "r2": float(r2.mean()),
  }


__all__ = [
  "ReportError",
  "confusion_matrix",
  "per_class_report",
  "format_report",
  "roc_auc",
  "roc_curve",
  "save_confusion_png",
  "save_roc_png",
  "regression_metrics",
]


def image_grid(images: np.ndarray, rows: int | None = None) -> np.ndarray:
  """Images (N, H, W, C) with values in [0, 1] tiled row-major into one (rows * H + gaps, cols * W + gaps,
  C) image with a 1-pixel white gap between them; rows defaults to ceil(sqrt(N))."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  if images.ndim != 4:
    raise ZooError(f"an image grid takes images (N, H, W, C), got shape {images.shape}")
  n, h, w, c = images.shape
  rows = rows or int(np.ceil(np.sqrt(n)))
  cols = int(np.ceil(n / rows))
  grid = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, c), np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, cols)
    grid[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = image
  return grid


def save_image_grid(images: np.ndarray, path, rows: int | None = None) -> pathlib.Path:
  """Writes `image_grid(images, rows)` as an 8-bit PNG (grey for one channel, RGB for three)."""
  from PIL import Image

  path = _prepare_path(path)
  grid = np.round(image_grid(images, rows) * 255).astype(np.uint8)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
  return path
