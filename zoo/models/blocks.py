"""Blocks several families share: stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic
Depth") and squeeze-and-excitation (Hu et al. 2018, "Squeeze-and-Excitation Networks")."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.models.layers import get_activation


class DropPath(nn.Module):
  """Drops a residual branch for whole examples with probability `rate` in training and scales the kept
  ones by 1 / (1 - rate) (timm's DropPath), so evaluation is the identity. Uses the 'dropout' rng stream.

  Apply it to the branch before the residual addition: `x + DropPath(rate)(branch(x), train)`.
  """

  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


class SqueezeExcite(nn.Module):
  """Global average pool -> 1x1 reduce to `squeeze_features` -> activation -> 1x1 expand -> sigmoid gate,
  multiplying the input's channels. Input (B, H, W, C).

  `squeeze_features` is given explicitly because the families differ in what they divide: EfficientNet
  takes 1/4 of the block's *input* channels, RegNetY 1/4 of its input width, SENet 1/16 of the output.
  """

  squeeze_features: int
  activation: str = "relu"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    s = jnp.mean(x, axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
    s = get_activation(self.activation)(nn.Conv(self.squeeze_features, (1, 1), name="reduce", **kw)(s))
    s = nn.sigmoid(nn.Conv(x.shape[-1], (1, 1), name="expand", **kw)(s))  # (B, 1, 1, C)
    return x * s.astype(x.dtype)
