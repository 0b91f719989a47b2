"""`python -m zoo summary`: per-layer parameters and FLOPs, checked against hand counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.__main__ import main
from zoo.models import create_model, list_models
from zoo.models.summary import registered_inputs, summarize


def test_mnist_cnn_layers_match_hand_counts():
  s = summarize(create_model("mnist_cnn"), (28, 28, 1))
  rows = {r.path: r for r in s.rows}
  assert s.params == 693_962 and s.state == 0
  # Conv 3x3x1 -> 32 over a 26x26 output: 26*26*32*9 multiply-adds (+ the bias adds).
  assert rows["Conv_0"].params == 320 and rows["Conv_0"].output_shape == (26, 26, 32)
  assert 2 * 26 * 26 * 32 * 9 <= rows["Conv_0"].flops <= 2 * 26 * 26 * 32 * 10
  # Dense 5408 -> 128: one multiply-add per weight.
  assert rows["Dense_0"].params == 5408 * 128 + 128
  assert 2 * 5408 * 128 <= rows["Dense_0"].flops <= 2 * 5408 * 128 + 2 * 128
  assert sum(r.flops for r in s.rows) <= s.flops <= 1.2 * sum(r.flops for r in s.rows)


def test_batch_norm_statistics_are_not_trainable_parameters():
  s = summarize(create_model("bn_cnn"), (28, 28, 1))
  assert s.params == 468_138 and s.state == 640


def _small(name: str) -> bool:
  """Lowering every layer of the ImageNet-size models takes seconds each: the test takes the small ones."""
  inputs = registered_inputs(name)
  x = jax.ShapeDtypeStruct((1, *inputs), jnp.float32) if isinstance(inputs, tuple) else inputs
  shapes = jax.eval_shape(lambda x: create_model(name).init(jax.random.key(0), x), x)
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes)) <= 3_000_000


@pytest.mark.parametrize("name", [name for name in list_models() if _small(name)])
def test_every_small_registered_model_summarises(name):
  s = summarize(create_model(name), registered_inputs(name), depth=1)
  assert s.params > 0 and s.flops > 0 and s.rows
  assert s.flops >= 0.9 * sum(r.flops for r in s.rows)


def test_command_line(capsys):
  assert main(["summary", "mlp", "hidden_sizes=(64,)", "--input-shape", "8,8,1"]) == 0
  out = capsys.readouterr().out
  assert "Dense_0" in out and "trainable parameters: 4,810" in out and "FLOPs" in out
  assert main(["summary", "mlpp"]) == 2
  assert "did you mean: mlp" in capsys.readouterr().err
  assert main(["summary", "mlp", "--input-shape", "a,b"]) == 2
  assert main(["summary", "mlp", "hidden_sizes"]) == 2
