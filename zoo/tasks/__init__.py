"""Tasks: what a config trains for (batch layout, loss, metrics). Each task is one registered entry; a new
task is one module in this package that decorates its factory with `register_task` (imported below)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from zoo.config import check_type
from zoo.registry import Registry, ZooError, call_with_checked_kwargs
from zoo.tasks.base import Task
from zoo.tasks.binary import BinaryTask
from zoo.tasks.classification import ClassificationTask
from zoo.tasks.language_model import LanguageModelTask
from zoo.tasks.regression import RegressionTask

TASKS: Registry = Registry("task")


def register_task(fn):
  return TASKS.register(fn)


def create_task(name: str, **kwargs) -> Task:
  return call_with_checked_kwargs("task", name, TASKS.get(name), kwargs)


def list_tasks(pattern: str = "*") -> list[str]:
  return TASKS.list(pattern)


@register_task
def classification(label_smoothing: float = 0.0, class_weights: Sequence[float] | None = None) -> Task:
  """Softmax cross-entropy over integer labels; metrics: loss and accuracy.

  Args:
    label_smoothing: mixes this much of the uniform distribution into the one-hot targets.
    class_weights: one non-negative weight per class (K); the training loss is then the weighted mean
      sum_i w[y_i] l_i / sum_i w[y_i] of the batch (the evaluation metrics stay unweighted).
  """
  label_smoothing = check_type(label_smoothing, float, "task.kwargs.label_smoothing")
  if not 0 <= label_smoothing < 1:
    raise ZooError(f"task.kwargs.label_smoothing must be in [0, 1), got {label_smoothing}")
  if class_weights is not None:
    class_weights = check_type(class_weights, tuple[float, ...], "task.kwargs.class_weights")
    if not class_weights or not all(math.isfinite(w) and w >= 0 for w in class_weights):
      raise ZooError(f"task.kwargs.class_weights must be finite and >= 0, one per class; got {class_weights}")
    if not any(class_weights):
      raise ZooError("task.kwargs.class_weights are all zero: nothing would be learned")
  return ClassificationTask(label_smoothing=label_smoothing, class_weights=class_weights)


@register_task
def binary(**kwargs) -> Task:
  """One sigmoid output unit (model num_classes=1) for 0/1 labels: sigmoid cross-entropy; metrics: loss
  and accuracy (logit > 0); report: per-class F1 and ROC-AUC."""
  if kwargs:
    raise ZooError(f"task 'binary' takes no arguments; got {', '.join(sorted(kwargs))}")
  return BinaryTask()


@register_task
def regression(loss: str = "mse", huber_delta: float = 1.0) -> Task:
  """Float targets (N,) or (N, T), model num_classes=T; metrics: loss, MSE, MAE, RMSE, R^2.

  Args:
    loss: the training loss: 'mse', 'huber' (quadratic within `huber_delta`, linear beyond) or 'mae'.
    huber_delta: the Huber loss's threshold.
  """
  huber_delta = check_type(huber_delta, float, "task.kwargs.huber_delta")
  return RegressionTask(objective=check_type(loss, str, "task.kwargs.loss"), huber_delta=huber_delta)


@register_task
def language_model(**kwargs) -> Task:
  """Next-token prediction: logits (B, T, V) against the next tokens (B, T); metrics: loss (nats per token),
  accuracy, bits per token and perplexity."""
  if kwargs:
    raise ZooError(f"task 'language_model' takes no arguments; got {', '.join(sorted(kwargs))}")
  return LanguageModelTask()


@register_task
def continual(**kwargs) -> Task:
  """A sequence of class splits learned in turn (EWC, progressive networks, fine-tuning) on which each split
  is a classification: trained by zoo.train.continual.train_continual, which checks these kwargs
  (ContinualOptions there: method, ewc_lambda, fisher, epochs_per_task, splits, ...)."""
  return ClassificationTask()


import importlib  # noqa: E402
import pkgutil  # noqa: E402

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
  "TASKS",
  "Task",
  "BinaryTask",
  "ClassificationTask",
  "LanguageModelTask",
  "RegressionTask",
  "register_task",
  "create_task",
  "list_tasks",
]
