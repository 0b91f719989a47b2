"""PyTorch weights in the zoo's models: torchvision and timm state dicts mapped onto Flax variables.

A converter (one per model family, registered for the zoo's model names it serves) reads the PyTorch state
dict through a `WeightMap` and says, tensor by tensor, which Flax variable each one becomes and how
(convolution kernels OIHW -> HWIO, dense matrices (out, in) -> (in, out), BatchNorm running statistics into
`batch_stats`, fused q/k/v projections split). The generic part here then checks the result against the
model's own variables: a Flax variable that got no tensor, a tensor that went nowhere, or a shape that does
not fit is an error that names it. Nothing is guessed from key order or shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from zoo.models import create_model, model_input_shape
from zoo.registry import Registry, ZooError

# Keys PyTorch keeps that carry no weights: BatchNorm's update counter.
IGNORED_SUFFIXES = ("num_batches_tracked",)

Converter = Callable[["WeightMap", str], dict[str, Any]]
CONVERTERS: Registry[Converter] = Registry("PyTorch weight converter")


def register_converter(*model_names: str) -> Callable[[Converter], Converter]:
  """Registers `fn(weights: WeightMap, model_name) -> model kwargs` for the zoo models `model_names`. It fills
  `weights` (put/conv/dense/batch_norm) and returns the keyword arguments the zoo model must be built with
  to be the checkpoint's architecture (num_classes from the head's shape, the source's padding, ...)."""

  def add(fn: Converter) -> Converter:
    for name in model_names:
      CONVERTERS.register(fn, name=name)
    return fn

  return add


def list_importable(pattern: str = "*") -> list[str]:
  """The zoo model names that `load_pytorch_weights` has a converter for."""
  return CONVERTERS.list(pattern)


class WeightMap:
  """A PyTorch state dict being mapped: every tensor taken is marked used, every Flax variable set once.

  Flax paths are '/'-joined: 'params/stem_conv/kernel', 'batch_stats/stem_bn/mean'.
  """

  def __init__(self, tensors: Mapping[str, np.ndarray]):
    self.tensors = dict(tensors)
    self.used: set[str] = set()
    self.assigned: dict[str, tuple[np.ndarray, str]] = {}  # Flax path -> (value, the torch key it came from)

  def __contains__(self, key: str) -> bool:
    return key in self.tensors

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._get(key).shape)

  def keys(self, prefix: str = "") -> list[str]:
    """The state dict's keys starting with `prefix`, in the file's order."""
    return [k for k in self.tensors if k.startswith(prefix)]

  def take(self, key: str) -> np.ndarray:
    """The tensor `key` as a NumPy array, marked used."""
    value = self._get(key)
    self.used.add(key)
    return value

  def put(self, path: str, key: str, transform: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> None:
    """Flax variable `path` <- transform(tensor `key`)."""
    if path in self.assigned:
      raise ValueError(f"converter bug: {path} set twice (from {self.assigned[path][1]} and {key})")
    self.assigned[path] = (np.asarray(transform(self.take(key))), key)

  def conv(self, path: str, key: str) -> None:
    """A convolution kernel: PyTorch's (O, I/groups, *spatial) -> Flax's (*spatial, I/groups, O)."""
    ndim = len(self.shape(key))
    self.put(path, key, lambda a: np.transpose(a, (*range(2, ndim), 1, 0)))

  def dense(self, path: str, key: str) -> None:
    """A linear layer's matrix: PyTorch's (out, in) -> Flax's (in, out)."""
    self.put(path, key, lambda a: a.T)

  def linear(self, flax_name: str, torch_prefix: str) -> None:
    """Linear `torch_prefix`.{weight, bias} -> params/{name}/{kernel, bias}."""
    self.dense(f"params/{flax_name}/kernel", f"{torch_prefix}.weight")
    self.put(f"params/{flax_name}/bias", f"{torch_prefix}.bias")

  def conv_with_bias(self, flax_name: str, torch_prefix: str) -> None:
    """Conv `torch_prefix`.{weight, bias} -> params/{name}/{kernel, bias}."""
    self.conv(f"params/{flax_name}/kernel", f"{torch_prefix}.weight")
    self.put(f"params/{flax_name}/bias", f"{torch_prefix}.bias")

  def batch_norm(self, flax_name: str, torch_prefix: str) -> None:
    """BatchNorm `torch_prefix`.{weight, bias, running_mean, running_var} -> params/{name}/{scale, bias} and
    batch_stats/{name}/{mean, var} (`flax_name` is the module's path below the collection, '/'-joined)."""
    self.put(f"params/{flax_name}/scale", f"{torch_prefix}.weight")
    self.put(f"params/{flax_name}/bias", f"{torch_prefix}.bias")
    self.put(f"batch_stats/{flax_name}/mean", f"{torch_prefix}.running_mean")
    self.put(f"batch_stats/{flax_name}/var", f"{torch_prefix}.running_var")

  def layer_norm(self, flax_name: str, torch_prefix: str) -> None:
    """LayerNorm `torch_prefix`.{weight, bias} -> params/{name}/{scale, bias}."""
    self.put(f"params/{flax_name}/scale", f"{torch_prefix}.weight")
    self.put(f"params/{flax_name}/bias", f"{torch_prefix}.bias")

  def _get(self, key: str) -> np.ndarray:
    if key not in self.tensors:
      near = _close(key, list(self.tensors))
      raise ZooError(f"the state dict has no tensor {key!r}{near}: is it a checkpoint of this architecture?")
    return self.tensors[key]


def _close(key: str, keys: list[str]) -> str:
  from zoo.registry import close_matches

  matches = close_matches(key, keys, n=3)
  return f" (nearest keys: {', '.join(matches)})" if matches else ""


def load_pytorch_weights(
  model_name: str, source: str | Path | Mapping[str, Any], **model_kwargs: Any
) -> tuple[Any, dict[str, Any]]:
  """A zoo model and its variables from PyTorch weights: `model, variables = load_pytorch_weights(...)`,
  then `model.apply(variables, images, train=False)` with images (B, H, W, C) float32.

  Args:
    model_name: a zoo model with a converter (`list_importable()`): e.g. 'resnet50', 'vit_b16'.
    source: a `.safetensors` file (read without PyTorch), a `.pth`/`.pt`/`.bin` file (read by a loader that
      accepts tensors and nothing else), or a state dict already in memory (tensors or arrays by key).
    model_kwargs: more fields of the zoo model (e.g. dtype). They override what the converter reads from the
      keys, for sources whose keys do not tell their variant (timm's `tf_efficientnet_b0` has
      `efficientnet_b0`'s keys but TF's padding: padding='same', bn_epsilon=1e-3); a field that changes a
      variable's shape (num_classes) then fails the shape check, naming the tensor.

  Raises ZooError naming the key for a tensor the model does not use, a variable no tensor fills, or a
  tensor of the wrong shape.
  """
  from zoo.interop.tensorfile import read_state_dict

  convert = CONVERTERS.get(model_name)
  tensors = read_state_dict(source)
  weights = WeightMap({k: v for k, v in tensors.items() if not k.endswith(IGNORED_SUFFIXES)})
  kwargs = convert(weights, model_name)
  kwargs = {**kwargs, **model_kwargs}
  model = create_model(model_name, **kwargs)
  variables = _assemble(model, model_name, weights)
  return model, variables


def converted_kwargs(model_name: str, source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
  """The zoo model fields that PyTorch weights `source` imply (what `load_pytorch_weights` builds with)."""
  from zoo.interop.tensorfile import read_state_dict

  weights = WeightMap({k: v for k, v in read_state_dict(source).items() if not k.endswith(IGNORED_SUFFIXES)})
  return CONVERTERS.get(model_name)(weights, model_name)


def _some(names: list[str], n: int = 8) -> str:
  return ", ".join(names[:n]) + (f" ... ({len(names) - n} more)" if len(names) > n else "")


def _assemble(model: Any, model_name: str, weights: WeightMap) -> dict[str, Any]:
  # The model's own variables (shapes only, nothing computed) are the specification the mapping must meet.
  shape = model_input_shape(model_name)
  x = jnp.zeros((1, *shape), jnp.float32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  expected = traverse_util.flatten_dict(jax.tree.map(lambda a: a, dict(abstract)), sep="/")
  unused = [k for k in weights.tensors if k not in weights.used]
  missing = [p for p in expected if p not in weights.assigned]
  problems = []
  if unused:
    problems.append(f"{len(unused)} tensor(s) of the state dict have no place in it: {_some(unused)}")
  if missing:
    problems.append(f"{len(missing)} of its variable(s) got no tensor: {_some(missing)}")
  if problems:
    raise ZooError(
      f"the state dict does not fit {model_name} (a checkpoint of another architecture or variant?): "
      + "; ".join(problems)
    )
  extra = [p for p in weights.assigned if p not in expected]
  if extra:  # A converter naming variables the model does not have: the converter's bug, not the user's.
    raise ValueError(f"converter bug: {model_name} has no variables {extra[:8]}")
  flat = {}
  for path, target in expected.items():
    value, key = weights.assigned[path]
    if tuple(value.shape) != tuple(target.shape):
      raise ZooError(
        f"tensor {key!r} has shape {tuple(weights.tensors[key].shape)}, which gives {path} the shape "
        f"{tuple(value.shape)} where {model_name} has {tuple(target.shape)}"
      )
    flat[path] = jnp.asarray(value, target.dtype)
  return traverse_util.unflatten_dict(flat, sep="/")
