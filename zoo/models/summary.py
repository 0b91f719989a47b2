"""A per-layer summary of any registered model: output shapes, parameters and FLOPs (XLA's cost analysis)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class LayerRow:
  path: str  # '/'-joined module names ('' for the whole model)
  module: str
  output_shape: tuple[int, ...]
  params: int  # trainable parameters of the layer and its children
  flops: float  # forward FLOPs of one call (a multiply-add counts 2), from XLA's cost analysis


@dataclasses.dataclass
class Summary:
  name: str
  input_shape: tuple[int, ...] | str  # one example's shape, or a description of a structured input
  rows: list[LayerRow]
  params: int  # trainable parameters
  state: int  # non-trainable variables (BatchNorm statistics, ...)
  flops: float  # the whole forward pass, per example

  def format(self) -> str:
    header = ("layer", "module", "output shape", "params", "FLOPs")
    body = [
      (r.path, r.module, "x".join(map(str, r.output_shape)), f"{r.params:,}", _si(r.flops)) for r in self.rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    line = lambda cells: "  ".join(
      str(c).rjust(w) if i >= 3 else str(c).ljust(w)
      for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    rule = "-" * len(line(header))
    shape = self.input_shape if isinstance(self.input_shape, str) else "x".join(map(str, self.input_shape))
    return "\n".join(
      [
        f"{self.name}: input {shape} (one example)",
        rule,
        line(header),
        rule,
        *map(line, body),
        rule,
        f"trainable parameters: {self.params:,}",
        f"non-trainable variables: {self.state:,}",
        f"forward FLOPs per example: {_si(self.flops)} ({self.flops / 2:,.0f} multiply-adds)",
      ]
    )


def registered_inputs(name: str) -> Any:
  """What `summarize` gets for registered model `name`: its image shape, or its example input with batch 1
  (abstract: nothing is computed)."""
  from zoo.models import example_input, model_spec

  spec = model_spec(name)
  return spec.input_shape if spec.example is None else jax.eval_shape(lambda: example_input(name, 1))


def _si(x: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if x >= scale:
      return f"{x / scale:.2f}{unit}"
  return f"{x:.0f}"


def _flops(fn, *args) -> float:
  return float(jax.jit(fn).lower(*args).cost_analysis().get("flops", 0.0))


def _size(tree: Any) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _subtree(variables: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
  out = {}
  for collection, tree in variables.items():
    for name in path:
      if not isinstance(tree, dict) or name not in tree:
        break
      tree = tree[name]
    else:
      out[collection] = tree
  return out


def summarize(model: nn.Module, inputs: Any, *, depth: int = 1, name: str = "") -> Summary:
  """Summarises `model` on one example, listing its submodules down to `depth`.

  `inputs`: one example's shape (a float32 input of that shape, batch 1), or the input itself as a pytree of
  arrays or `jax.ShapeDtypeStruct`s with a leading batch axis (token ids, a graph); FLOPs are then per
  whole input. Nothing is allocated: shapes come from `jax.eval_shape` and FLOPs from lowering (not running)
  each layer.
  """
  if isinstance(inputs, tuple) and all(isinstance(n, int) for n in inputs):
    x, input_shape = jax.ShapeDtypeStruct((1, *inputs), jnp.float32), inputs
  else:
    x = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), inputs)
    input_shape = ", ".join(
      f"{jax.tree_util.keystr(p) or 'input'} {'x'.join(map(str, a.shape))} {a.dtype}"
      for p, a in jax.tree_util.tree_leaves_with_path(x)
    )
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  calls: list[tuple[tuple[str, ...], nn.Module, tuple, dict, Any]] = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != "__call__" or context.module.scope is None:  # Helpers, unbound modules.
      return out
    path = tuple(context.module.path)
    if 0 < len(path) <= depth:
      calls.append((path, context.module, args, kwargs, out))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)

  rows, seen = [], set()
  for path, module, args, kwargs, out in calls:
    if path in seen:  # A module called twice (shared weights) is listed once.
      continue
    seen.add(path)
    sub_vars = _subtree(variables, path)
    unbound = module.clone(parent=None, name=None)
    # Arrays become abstract arguments; anything else (a `train` flag) stays a constant of the call.
    leaves, treedef = jax.tree.flatten((tuple(args), dict(kwargs)))
    is_array = [hasattr(a, "shape") and hasattr(a, "dtype") for a in leaves]
    arrays = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a, arr in zip(leaves, is_array, strict=True) if arr]

    def call(v, *arrays, m=unbound, leaves=leaves, is_array=is_array, treedef=treedef):
      it = iter(arrays)
      a, kw = jax.tree.unflatten(
        treedef, [next(it) if arr else x for x, arr in zip(leaves, is_array, strict=True)]
      )
      return m.apply(v, *a, **kw)

    flops = _flops(call, sub_vars, *arrays)
    shape = tuple(out.shape[1:]) if hasattr(out, "shape") else ()
    rows.append(
      LayerRow("/".join(path), type(module).__name__, shape, _size(sub_vars.get("params", {})), flops)
    )
  total = _flops(lambda v, x: model.apply(v, x, train=False), variables, x)
  state = _size({k: v for k, v in variables.items() if k != "params"})
  return Summary(name or type(model).__name__, input_shape, rows, _size(variables["params"]), state, total)
