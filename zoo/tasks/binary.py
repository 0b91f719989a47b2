"""Binary classification with one output unit: sigmoid (logistic) cross-entropy; accuracy, F1, ROC-AUC."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from zoo.registry import ZooError
from zoo.tasks.base import Batch, Task


def _logits(outputs: jax.Array) -> jax.Array:
  """Float32 (B,) logits from outputs (B,) or (B, 1); checked at trace time from the shape."""
  if outputs.ndim == 2 and outputs.shape[1] == 1:
    outputs = outputs[:, 0]
  if outputs.ndim != 1:
    raise ZooError(
      f"the binary task needs one logit per example, but the model outputs shape {tuple(outputs.shape)}; "
      "set model.kwargs.num_classes=1 (or use task.name='classification' for a softmax over classes)"
    )
  return outputs.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class BinaryTask(Task):
  """Batch: `input` (B, ...) and `label` (B,) 0/1 (int32, or float probabilities). Outputs: one logit per
  example, (B, 1) or (B,); p(label = 1) = sigmoid(logit), so the prediction is 1 where the logit is > 0.

  A sigmoid unit, not a softmax over one unit: a softmax over a single output is constantly 1 and learns
  nothing (the reference documents' XOR network).
  """

  def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    logits, labels = _logits(outputs), batch["label"]
    loss = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)).mean()
    accuracy = ((logits > 0) == (labels > 0.5)).mean()
    return loss, {"loss": loss, "accuracy": accuracy}

  def eval_metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    logits, labels, mask = _logits(outputs), batch["label"], batch["mask"]
    losses = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))
    correct = ((logits > 0) == (labels > 0.5)).astype(jnp.float32)
    return {"loss": (losses * mask).sum(), "accuracy": (correct * mask).sum(), "count": mask.sum()}

  def write_report(self, outputs, labels, workdir) -> dict:
    """report.txt (precision/recall/F1 of both classes, ROC-AUC) and confusion.png, roc.png."""
    import numpy as np

    from zoo.tasks import reports

    logits = np.asarray(outputs, np.float32).reshape(len(outputs))
    classes = (np.asarray(labels) > 0.5).astype(np.int64)
    confusion = reports.confusion_matrix(classes, (logits > 0).astype(np.int64), 2)
    report = reports.per_class_report(confusion)
    text = reports.format_report(report)
    summary = {"macro_f1": float(report["macro"]["f1"]), "accuracy": float(report["accuracy"])}
    reports.save_confusion_png(confusion, Path(workdir) / "confusion.png")
    if len(np.unique(classes)) == 2:
      # The logits rank the examples as the probabilities do, without float32 sigmoid saturating to ties.
      summary["roc_auc"] = reports.roc_auc(classes, logits)
      reports.save_roc_png(classes, logits, Path(workdir) / "roc.png")
      text += f"\nROC-AUC {summary['roc_auc']:.4f}\n"
    (Path(workdir) / "report.txt").write_text(text)
    return summary
