"""Blocks several families share: stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic
Depth"), squeeze-and-excitation (Hu et al. 2018, "Squeeze-and-Excitation Networks"), the Transformer's
two-layer GELU MLP and the exact GELU."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.models.layers import get_activation


def gelu(x: jax.Array) -> jax.Array:
  """The exact (erf) GELU of Hendrycks & Gimpel, as the ViT and Mixer papers' models and timm use; the
  zoo's "gelu" activation is the tanh approximation (differs by < 1e-3)."""
  return jax.nn.gelu(x, approximate=False)


class MlpBlock(nn.Module):
  """Dense `mlp_dim` -> GELU -> dropout -> Dense back to the input's last dimension -> dropout.

  Acts on the last axis only, so each row of the other axes is transformed independently (a Transformer's
  MLP gets (B, N, D); Mixer's token-mixing MLP gets (B, D, N), the patches' axis last). The initialisers
  are fields because the families differ: ViT uses Xavier-uniform kernels and N(0, 1e-6) biases, Mixer
  flax's defaults.
  """

  mlp_dim: int
  dropout: float = 0.0
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(
      kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype, param_dtype=self.param_dtype
    )
    y = gelu(nn.Dense(self.mlp_dim, **kw)(x))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.Dense(x.shape[-1], **kw)(y)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


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


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow's (and lax's) SAME: ceil(size / stride) outputs, the odd pixel of padding after."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class DepthwiseConv(nn.Module):
  """A depthwise convolution (one `kernel_size` filter per channel, Howard et al. 2017) written as a sum
  of k*k shifted, strided slices times per-channel weights. Same values, parameter name and shape
  ('kernel' (k, k, 1, C), 'bias' (C,)) as `nn.Conv(C, (k, k), feature_group_count=C)`, so weights load
  either way; on XLA CPU, where grouped convolutions are slow, it measured ~5x faster for a whole
  EfficientNet step (benchmarks in README). Input (B, H, W, C).

  `padding`: "SAME" (TensorFlow's: the odd pixel after) or ((top, bottom), (left, right)).
  """

  kernel_size: int = 3
  strides: int = 1
  padding: str | tuple[tuple[int, int], tuple[int, int]] = "SAME"
  use_bias: bool = False
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel_size, self.strides
    b, h, w, c = x.shape
    kernel = self.param("kernel", self.kernel_init, (k, k, 1, c), self.param_dtype)
    pads = (_same_padding(h, k, s), _same_padding(w, k, s)) if self.padding == "SAME" else tuple(self.padding)
    x = jnp.pad(x.astype(self.dtype), ((0, 0), *pads, (0, 0)))
    out_h = (x.shape[1] - k) // s + 1
    out_w = (x.shape[2] - k) // s + 1
    weights = kernel.astype(self.dtype).reshape(k, k, 1, 1, 1, c)  # weights[i, j]: (1, 1, 1, C)
    y = jnp.zeros((b, out_h, out_w, c), self.dtype)
    for i in range(k):
      for j in range(k):
        window = jax.lax.slice(
          x, (0, i, j, 0), (b, i + s * (out_h - 1) + 1, j + s * (out_w - 1) + 1, c), (1, s, s, 1)
        )  # (B, out_h, out_w, C)
        y = y + window * weights[i, j]
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
      y = y + bias.astype(self.dtype).reshape(1, 1, 1, c)
    return y
