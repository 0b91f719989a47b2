"""The model registry: `create_model(name, **overrides)` builds a registered module, fields checked."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.config import check_type
from zoo.models.layers import ACTIVATIONS, get_activation
from zoo.registry import Registry, ZooError, close_matches

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

_NOT_FIELDS = ("parent", "name")  # Flax's own dataclass fields, not the model's.


# The input shape (H, W, C) or (D,) each model is meant for (used by `zoo summary` and the tests).
INPUT_SHAPES: dict[str, tuple[int, ...]] = {}
DEFAULT_INPUT_SHAPE = (28, 28, 1)
CLASSIFIER = "classifier"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What a registered model takes and gives, for the registry-wide tests, `zoo summary` and benchmarks.

  kind: 'classifier' (the default): float inputs (B, *input_shape) -> float32 logits (B, num_classes),
    with a `num_classes` field; the registry tests train it with cross-entropy. Any other kind names the
    family of task the model serves ('lm', 'sequence', 'autoencoder', 'gan', 'embedding', 'graph', ...):
    the registry tests then check it generically (every float output finite and float32, every
    parameter reached by a gradient of the outputs, jit == eager) and its family's test file the rest.
  example: `example(batch_size, key) -> input` for inputs that are not standard-normal float arrays of
    `input_shape` (token ids, a graph, a pair of images): any pytree with a leading batch axis.
  per_example: whether, in evaluation, each example's output depends on that example only (false for a
    graph network, whose batch is one graph).
  """

  input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE
  kind: str = CLASSIFIER
  example: Callable[[int, Any], Any] | None = None
  per_example: bool = True


SPECS: dict[str, ModelSpec] = {}


def register_model(
  fn: Callable[..., nn.Module] | None = None,
  *,
  input_shape: tuple[int, ...] | None = None,
  kind: str = CLASSIFIER,
  example: Callable[[int, Any], Any] | None = None,
  per_example: bool = True,
):
  """Registers a variant function (`**overrides -> module`) under its `__name__`; a duplicate name raises.

  `@register_model` or `@register_model(input_shape=(224, 224, 3))`: the shape of one example the variant
  is meant for (default 28x28x1). `kind`, `example` and `per_example` describe models that are not image
  classifiers (see ModelSpec), e.g. `@register_model(kind="lm", example=tokens(vocab_size=65, length=32))`.
  """

  def add(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    MODELS.register(f)
    spec = ModelSpec(tuple(input_shape or DEFAULT_INPUT_SHAPE), kind, example, per_example)
    SPECS[f.__name__] = spec
    INPUT_SHAPES[f.__name__] = spec.input_shape
    return f

  return add if fn is None else add(fn)


def model_spec(name: str) -> ModelSpec:
  """What model `name` takes and gives (its registration)."""
  MODELS.get(name)  # A misspelt name fails with suggestions.
  return SPECS[name]


def model_input_shape(name: str) -> tuple[int, ...]:
  """The example shape model `name` is registered for."""
  return model_spec(name).input_shape


def example_input(name: str, batch_size: int = 2, key: Any = None) -> Any:
  """An input batch model `name` accepts: its registered `example`, else standard-normal float32 images
  (batch_size, *input_shape)."""
  spec = model_spec(name)
  key = jax.random.key(0) if key is None else key
  if spec.example is not None:
    return spec.example(batch_size, key)
  return jax.random.normal(key, (batch_size, *spec.input_shape), jnp.float32)


def tokens(vocab_size: int, length: int) -> Callable[[int, Any], jax.Array]:
  """An `example` for models that read token ids: int32 (B, length) in [0, vocab_size)."""
  return lambda batch_size, key: jax.random.randint(key, (batch_size, length), 0, vocab_size, jnp.int32)


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
  "ModelSpec",
  "SPECS",
  "example_input",
  "model_input_shape",
  "model_spec",
  "tokens",
  "create_model",
  "get_activation",
  "list_models",
  "model_fields",
  "register_model",
]
