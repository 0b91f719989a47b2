"""Tasks: what a config trains for (batch layout, loss, metrics). Each task is one registered entry."""

from __future__ import annotations

from zoo.registry import Registry, call_with_checked_kwargs
from zoo.tasks.base import Task
from zoo.tasks.classification import ClassificationTask

TASKS: Registry = Registry("task")


def register_task(fn):
  return TASKS.register(fn)


def create_task(name: str, **kwargs) -> Task:
  return call_with_checked_kwargs("task", name, TASKS.get(name), kwargs)


def list_tasks(pattern: str = "*") -> list[str]:
  return TASKS.list(pattern)


@register_task
def classification(label_smoothing: float = 0.0) -> Task:
  """Softmax cross-entropy over integer labels; metrics: loss and accuracy."""
  return ClassificationTask(label_smoothing=label_smoothing)


__all__ = ["TASKS", "Task", "ClassificationTask", "register_task", "create_task", "list_tasks"]
