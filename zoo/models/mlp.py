"""Multilayer perceptron (Rumelhart, Hinton & Williams 1986), optional BatchNorm (Ioffe & Szegedy 2015)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.models import register_model
from zoo.models.layers import get_activation, kernel_init_for


class MLP(nn.Module):
  """Per hidden layer: Dense -> [BatchNorm] -> activation -> [dropout]; then a linear layer to the logits.

  Dimensions: B batch, D input features (any input (B, ...) is flattened: images (B, H, W, C) become
  (B, H*W*C)), K classes. The kernels' initialiser is matched to `activation` (see layers.kernel_init_for).
  """

  hidden_sizes: tuple[int, ...] = (100,)
  activation: str = "relu"
  dropout: float = 0.0
  batch_norm: bool = False
  num_classes: int = 10
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    get_activation(self.activation)  # A misspelt name fails when the module is built, not inside init.
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    act = get_activation(self.activation)
    x = x.reshape(x.shape[0], -1)  # (B, D)
    for width in self.hidden_sizes:
      # A bias before BatchNorm is cancelled by its mean subtraction; BN's own offset replaces it.
      x = nn.Dense(
        width,
        use_bias=not self.batch_norm,
        kernel_init=kernel_init_for(self.activation),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
      )(x)
      if self.batch_norm:
        x = nn.BatchNorm(
          use_running_average=not train, momentum=0.9, dtype=self.dtype, param_dtype=self.param_dtype
        )(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(act(x))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)  # (B, K)
    return logits.astype(jnp.float32)


@register_model
def mlp(**kw) -> MLP:
  return MLP(**kw)
