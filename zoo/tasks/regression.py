"""Regression: mean squared error (or Huber, Huber 1964; or absolute error); MAE, MSE, RMSE and R^2."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from zoo.registry import ZooError
from zoo.tasks.base import Batch, Task

LOSSES = ("mse", "huber", "mae")

# Column j's sums in `eval_metrics` are named with this prefix and j (one set per target column).
_SQUARED_ERROR, _TARGET, _TARGET_SQUARED = "sq_err_", "y_", "y_sq_"
_MAX_PLOTTED_TARGETS = 8


def _aligned(outputs: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Predictions and targets as float32 (B, T): outputs (B, T) (or (B,)) against targets (B,) or (B, T).

  A (B,) target is one column, so it needs outputs of width 1; checked at trace time from the shapes.
  """
  if jnp.issubdtype(targets.dtype, jnp.integer):
    raise ZooError(
      "the regression task needs float targets, but the dataset holds integer class labels; "
      "use task.name='classification' (or 'binary'), or a regression dataset"
    )
  predictions = outputs.astype(jnp.float32)
  predictions = predictions[:, None] if predictions.ndim == 1 else predictions.reshape(len(predictions), -1)
  targets = targets.astype(jnp.float32)
  targets = targets[:, None] if targets.ndim == 1 else targets
  if predictions.shape != targets.shape:
    raise ZooError(
      f"the model outputs {predictions.shape[1]} values per example but the regression targets have "
      f"{targets.shape[1]}; set model.kwargs.num_classes={targets.shape[1]} (the number of targets)"
    )
  return predictions, targets  # (B, T), (B, T)


@dataclasses.dataclass(frozen=True)
class RegressionTask(Task):
  """Batch: `input` (B, ...) and `label` float32 targets (B,) or (B, T). Outputs: (B, T) predictions.

  `objective` is the training loss, averaged over examples and targets: 'mse' (squared error), 'huber'
  (squared below `huber_delta`, linear above: robust to outliers) or 'mae' (absolute error). Evaluation
  reports that loss and the exact MSE, MAE, RMSE and R^2 of the whole split; with T targets each metric is
  computed per target and averaged, as scikit-learn's multioutput='uniform_average' (so RMSE is the mean
  of the per-target RMSEs, and R^2 the mean of the per-target R^2).
  """

  objective: str = "mse"
  huber_delta: float = 1.0

  def __post_init__(self):
    if self.objective not in LOSSES:
      raise ZooError(f"task.kwargs.loss must be one of {', '.join(LOSSES)}; got {self.objective!r}")
    if not self.huber_delta > 0:
      raise ZooError(f"task.kwargs.huber_delta must be positive, got {self.huber_delta}")

  def _losses(self, predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-element losses, (B, T)."""
    if self.objective == "huber":
      return optax.huber_loss(predictions, targets, delta=self.huber_delta)
    if self.objective == "mae":
      return jnp.abs(predictions - targets)
    return optax.squared_error(predictions, targets)

  def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    predictions, targets = _aligned(outputs, batch["label"])
    loss = self._losses(predictions, targets).mean()
    errors = predictions - targets
    return loss, {"loss": loss, "mse": jnp.mean(errors**2), "mae": jnp.mean(jnp.abs(errors))}

  def eval_metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    predictions, targets = _aligned(outputs, batch["label"])
    mask = batch["mask"][:, None]  # (B, 1): padding rows contribute nothing to any sum.
    errors = predictions - targets
    per_example = lambda values: (values * mask).mean(-1).sum()  # The mean over targets, summed.
    sums = {
      "loss": per_example(self._losses(predictions, targets)),
      "mse": per_example(errors**2),
      "mae": per_example(jnp.abs(errors)),
      "count": mask.sum(),
    }
    # Per-target sums of the squared error, y and y^2: RMSE and R^2 need the whole split's totals
    # (a mean of per-batch RMSEs or R^2s is not the split's).
    for j in range(targets.shape[1]):
      sums[f"{_SQUARED_ERROR}{j}"] = (errors[:, j : j + 1] ** 2 * mask).sum()
      sums[f"{_TARGET}{j}"] = (targets[:, j : j + 1] * mask).sum()
      sums[f"{_TARGET_SQUARED}{j}"] = (targets[:, j : j + 1] ** 2 * mask).sum()
    return sums

  def summarize(self, means: dict[str, float]) -> dict[str, float]:
    """From per-example means: RMSE = sqrt(MSE) and R^2 = 1 - SSE / SST with SST / n = E[y^2] - E[y]^2.

    As scikit-learn's force_finite=True, a constant target scores R^2 = 1.0 if predicted exactly and 0.0
    otherwise. The sums are float32 and E[y^2] - E[y]^2 cancels: R^2 keeps about 7 - 2 log10(|mean(y)| /
    std(y)) digits (5 when the mean is 10 standard deviations from 0); standardised targets lose none.
    """
    num_targets = sum(1 for k in means if k.startswith(_SQUARED_ERROR))
    rmse, r2 = [], []
    for j in range(num_targets):
      mse = means[f"{_SQUARED_ERROR}{j}"]
      mean, mean_square = means[f"{_TARGET}{j}"], means[f"{_TARGET_SQUARED}{j}"]
      variance = mean_square - mean**2
      rmse.append(math.sqrt(max(mse, 0.0)))
      # Below float32's resolution of E[y^2] the variance is rounding noise: the target is constant.
      if variance <= 1e-6 * mean_square:
        r2.append(1.0 if mse == 0 else 0.0)
      else:
        r2.append(1.0 - mse / variance)
    return {
      "loss": means["loss"],
      "mse": means["mse"],
      "mae": means["mae"],
      "rmse": sum(rmse) / num_targets,
      "r2": sum(r2) / num_targets,
    }

  def write_report(self, outputs, labels, workdir) -> dict:
    """report.txt (MAE, MSE, RMSE, R^2) and predictions.png (predicted vs actual, residuals)."""
    import numpy as np

    from zoo.tasks import reports

    predictions = np.asarray(outputs, np.float64).reshape(len(outputs), -1)  # (N, T)
    targets = np.asarray(labels, np.float64)
    targets = targets.reshape(len(targets), -1)
    if predictions.shape != targets.shape:
      raise ZooError(f"regression report: predictions {predictions.shape} and targets {targets.shape} differ")
    summary = reports.regression_metrics(targets, predictions)
    lines = [f"mean over the {targets.shape[1]} targets:"] if targets.shape[1] > 1 else []
    lines += [f"{'MAE':<5} {summary['mae']:.6f}", f"{'MSE':<5} {summary['mse']:.6f}"]
    lines += [f"{'RMSE':<5} {summary['rmse']:.6f}", f"{'R^2':<5} {summary['r2']:.6f}"]
    if targets.shape[1] > 1:
      lines.append("\nper target:")
      for j in range(targets.shape[1]):
        column = reports.regression_metrics(targets[:, j], predictions[:, j])
        lines.append(f"{j:>3}: " + "  ".join(f"{k.upper()} {v:.6f}" for k, v in column.items()))
    lines.append(f"\n{len(targets)} test examples, {targets.shape[1]} target(s)")
    (Path(workdir) / "report.txt").write_text("\n".join(lines) + "\n")
    _save_predictions_png(targets, predictions, Path(workdir) / "predictions.png")
    return summary


def _save_predictions_png(targets, predictions, path: Path) -> Path:
  """Per target (the first few): predicted against actual with the identity line, and residuals
  (actual - predicted) against predicted with the zero line."""
  from zoo.tasks import reports

  shown = min(targets.shape[1], _MAX_PLOTTED_TARGETS)
  figure = reports.new_figure(10.0, 4.0 * shown)
  for j in range(shown):
    actual, predicted = targets[:, j], predictions[:, j]
    suffix = f" (target {j})" if targets.shape[1] > 1 else ""
    left = figure.add_subplot(shown, 2, 2 * j + 1)
    left.scatter(actual, predicted, s=8, alpha=0.5)
    low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    left.plot([low, high], [low, high], linestyle="--", color="gray", label="predicted = actual")
    left.set_xlabel("actual")
    left.set_ylabel("predicted")
    left.set_title("predicted vs actual" + suffix)
    left.legend(loc="upper left")
    right = figure.add_subplot(shown, 2, 2 * j + 2)
    right.scatter(predicted, actual - predicted, s=8, alpha=0.5)
    right.axhline(0.0, linestyle="--", color="gray")
    right.set_xlabel("predicted")
    right.set_ylabel("residual (actual - predicted)")
    right.set_title("residuals" + suffix)
  figure.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, format="png", dpi=100)
  return path
