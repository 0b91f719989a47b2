"""Classification: softmax cross-entropy over integer labels, with optional label smoothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from zoo.tasks.base import Batch, Task


@dataclasses.dataclass(frozen=True)
class ClassificationTask(Task):
  """Batch: `input` (B, ...) and `label` (B,) int32. Outputs: logits (B, K)."""

  label_smoothing: float = 0.0

  def _losses(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    logits = logits.astype(jnp.float32)  # The loss is always computed in float32.
    if self.label_smoothing:
      num_classes = logits.shape[-1]
      targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), self.label_smoothing)
      return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

  def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    loss = self._losses(outputs, batch["label"]).mean()
    accuracy = (outputs.argmax(-1) == batch["label"]).mean()
    return loss, {"loss": loss, "accuracy": accuracy}

  def write_report(self, outputs, labels, workdir) -> dict:
    """report.txt (per-class precision/recall/F1) and confusion.png; ROC-AUC and roc.png for two classes."""
    import numpy as np

    from zoo.tasks import reports

    outputs, labels = np.asarray(outputs, np.float32), np.asarray(labels)
    confusion = reports.confusion_matrix(labels, outputs.argmax(-1), outputs.shape[-1])
    report = reports.per_class_report(confusion)
    text = reports.format_report(report)
    summary = {"macro_f1": float(report["macro"]["f1"]), "accuracy": float(report["accuracy"])}
    reports.save_confusion_png(confusion, Path(workdir) / "confusion.png")
    if outputs.shape[-1] == 2 and len(np.unique(labels)) == 2:
      scores = jax.nn.softmax(outputs, axis=-1)[:, 1]
      summary["roc_auc"] = reports.roc_auc(labels, np.asarray(scores))
      reports.save_roc_png(labels, np.asarray(scores), Path(workdir) / "roc.png")
      text += f"\nROC-AUC {summary['roc_auc']:.4f}\n"
    (Path(workdir) / "report.txt").write_text(text)
    return summary

  def eval_metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    mask = batch["mask"]
    correct = (outputs.argmax(-1) == batch["label"]).astype(jnp.float32)
    # Evaluation reports the plain cross-entropy, whatever smoothing training used.
    losses = optax.softmax_cross_entropy_with_integer_labels(outputs.astype(jnp.float32), batch["label"])
    return {"loss": (losses * mask).sum(), "accuracy": (correct * mask).sum(), "count": mask.sum()}
