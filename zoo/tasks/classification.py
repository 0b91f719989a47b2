"""Classification: softmax cross-entropy over integer labels, with optional label smoothing (Szegedy et al.
2016) and class weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from zoo.registry import ZooError
from zoo.tasks.base import Batch, Task


@dataclasses.dataclass(frozen=True)
class ClassificationTask(Task):
  """Batch: `input` (B, ...) and `label` (B,) int32. Outputs: logits (B, K).

  With `class_weights` (K floats), training minimises the weighted mean sum_i w[y_i] l_i / sum_i w[y_i]
  over the batch (as PyTorch's CrossEntropyLoss(weight=...) does); evaluation stays unweighted.
  """

  label_smoothing: float = 0.0
  class_weights: tuple[float, ...] | None = None

  def _losses(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ZooError(
        f"the classification task needs integer class labels, but the dataset holds {labels.dtype} "
        "targets; use task.name='regression'"
      )
    logits = logits.astype(jnp.float32)  # The loss is always computed in float32.
    if self.label_smoothing:
      num_classes = logits.shape[-1]
      targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), self.label_smoothing)
      return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

  def _weighted_mean(self, losses: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    if self.class_weights is None:
      return losses.mean()
    if len(self.class_weights) != num_classes:
      raise ZooError(
        f"task.kwargs.class_weights has {len(self.class_weights)} weights, but the model outputs "
        f"K={num_classes} classes; give one weight per class"
      )
    weights = jnp.asarray(self.class_weights, jnp.float32)[labels]  # (B,)
    total = weights.sum()
    # A batch holding only zero-weight classes contributes no loss (rather than 0/0).
    return jnp.where(total > 0, (weights * losses).sum() / jnp.where(total > 0, total, 1.0), 0.0)

  def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    loss = self._weighted_mean(self._losses(outputs, batch["label"]), batch["label"], outputs.shape[-1])
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
