"""The model registry: `create_model(name, **overrides)` builds a registered module, fields checked."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from zoo.config import check_type
from zoo.models.layers import ACTIVATIONS, get_activation
from zoo.registry import Registry, ZooError, close_matches

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

_NOT_FIELDS = ("parent", "name")  # Flax's own dataclass fields, not the model's.


# The input shape (H, W, C) or (D,) each model is meant for (used by `zoo summary` and the tests).
INPUT_SHAPES: dict[str, tuple[int, ...]] = {}
DEFAULT_INPUT_SHAPE = (28, 28, 1)


def register_model(fn: Callable[..., nn.Module] | None = None, *, input_shape: tuple[int, ...] | None = None):
  """Registers a variant function (`**overrides -> module`) under its `__name__`; a duplicate name raises.

  `@register_model` or `@register_model(input_shape=(224, 224, 3))`: the shape of one example the variant
  is meant for (default 28x28x1).
  """

  def add(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    MODELS.register(f)
    INPUT_SHAPES[f.__name__] = tuple(input_shape or DEFAULT_INPUT_SHAPE)
    return f

  return add if fn is None else add(fn)


def model_input_shape(name: str) -> tuple[int, ...]:
  """The example shape model `name` is registered for."""
  MODELS.get(name)  # A misspelt name fails with suggestions.
  return INPUT_SHAPES[name]


def list_models(pattern: str = "*") -> list[str]:
  """Registered model names matching a shell-style pattern (or containing it as a substring), sorted."""
  return MODELS.list(pattern)


def model_fields(name: str) -> dict[str, Any]:
  """The fields of model `name`'s module, in declaration order, with their type annotations."""
  module = MODELS.get(name)()
  hints = typing.get_type_hints(type(module))
  return {f.name: hints[f.name] for f in dataclasses.fields(module) if f.init and f.name not in _NOT_FIELDS}


def create_model(name: str, **overrides: Any) -> nn.Module:
  """Builds model `name` with `overrides` of its module's fields.

  Every override is checked against the field's type annotation first (and converted: a list becomes a
  tuple, an int a float), so a misspelt or mistyped key fails here with a ZooError naming it.

  Args:
    name: a registered model name (see `list_models()`).
    **overrides: module fields, e.g. `hidden_sizes=(256, 128)`, `num_classes=100`.
  """
  fn = MODELS.get(name)
  fields = model_fields(name)
  checked = {}
  for key, value in overrides.items():
    if key not in fields:
      matches = close_matches(key, list(fields))
      hint = f"did you mean: {', '.join(matches)}?" if matches else f"its fields: {', '.join(fields)}"
      raise ZooError(f"model {name!r} has no field {key!r}; {hint}")
    checked[key] = check_type(value, fields[key], f"model.kwargs.{key}")
  return fn(**checked)


# Every module of this package is imported, so a family file registers its variants just by being here.
# The files import `register_model` from this (partially initialised) module, so this comes after it.
import importlib  # noqa: E402
import pkgutil  # noqa: E402

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
  "ACTIVATIONS",
  "MODELS",
  "INPUT_SHAPES",
  "model_input_shape",
  "create_model",
  "get_activation",
  "list_models",
  "model_fields",
  "register_model",
]
