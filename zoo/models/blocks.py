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


def _phases(k: int) -> tuple[tuple[tuple[int, int, int], ...], int, int]:
  """How lax's stride-2 SAME transposed convolution of a k-tap kernel reads its input, per output phase
  (even, odd positions): (first tap t0, number of taps m, input offset c), so that output 2i + phase is
  sum_j x[i + c + j] kernel[t0 + 2j]; and the (lowest offset, width) of a window covering both phases."""
  pad_before = k - 1 if k < 3 else -(-k // 2)  # lax's SAME padding of the dilated input (pad_len = k)
  phases = []
  for phase in (0, 1):
    t0 = (pad_before - phase) % 2
    phases.append((t0, len(range(t0, k, 2)), (phase + t0 - pad_before) // 2))
  used = [(m, c) for _, m, c in phases if m]
  lo = min(c for _, c in used)
  return tuple(phases), lo, max(c + m for m, c in used) - lo


class ConvTranspose2x(nn.Module):
  """A stride-2 SAME transposed convolution, (B, H, W, C) -> (B, 2H, 2W, features): the same values,
  parameter names and shapes ('kernel' (k, k, C, features), 'bias') as `nn.ConvTranspose(features, (k, k),
  strides=(2, 2), padding="SAME")`, so weights load either way.

  Computed as one stride-1 convolution of the undilated input giving the 4 output phases (even/odd rows
  x even/odd columns) as 4 x features channels, interleaved by a reshape (depth-to-space; Shi et al.
  2016's sub-pixel convolution is the same idea). XLA's transposed convolution convolves the zero-dilated
  input, 4x the work, and on CPU its kernel gradient is slower still. Measured on the shared 2-core CPU
  (loaded, so ratios only), forward + backward at batch 128: DCGAN's 7x7x128 -> 14x14x64 5x5 layer 10-12x
  faster this way; whole Adam steps of `dcgan` 4.3-4.7 s against 16-18 s, of `conv_autoencoder` and
  `vae_conv` 2-3x faster. (A 1-channel output layer alone is up to 2x slower this way; the total wins.)
  """

  features: int
  kernel_size: int = 3
  use_bias: bool = True
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, c_in, f = self.kernel_size, x.shape[-1], self.features
    kernel = self.param("kernel", self.kernel_init, (k, k, c_in, f), self.param_dtype).astype(self.dtype)
    phases, lo, width = _phases(k)
    # The 4 phases' sub-kernels kernel[t0::2, t0'::2], each zero-padded to its offset in a common window.
    subs = []
    for ta, ma, ca in phases:
      for tb, mb, cb in phases:
        if ma and mb:
          pads = ((ca - lo, width - ma - (ca - lo)), (cb - lo, width - mb - (cb - lo)), (0, 0), (0, 0))
          subs.append(jnp.pad(kernel[ta::2, tb::2], pads))  # (width, width, C, f)
        else:  # (a kernel of 1 tap leaves the odd outputs at 0)
          subs.append(jnp.zeros((width, width, c_in, f), self.dtype))
    w = jnp.stack(subs, axis=3)  # (width, width, C, 4, f)
    pad = (-lo, lo + width - 1)  # output i reads x[i + lo : i + lo + width]
    y = jax.lax.conv_general_dilated(
      x.astype(self.dtype),
      w.reshape(width, width, c_in, 4 * f),
      (1, 1),
      (pad, pad),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # (B, H, W, 4 f): channel (2 a + b) f + o is output (2i + a, 2j + b), channel o
    bsz, h, wd = y.shape[:3]
    y = y.reshape(bsz, h, wd, 2, 2, f).transpose(0, 1, 3, 2, 4, 5).reshape(bsz, 2 * h, 2 * wd, f)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (f,), self.param_dtype)
      y = y + bias.astype(self.dtype).reshape(1, 1, 1, f)
    return y
