"""The reference documents' simpler architectures: a VGG-style CNN (Simonyan & Zisserman 2015), highway
networks (Srivastava et al. 2015), residual and bottleneck residual MLPs (He et al. 2016) and a small
MobileNet of depthwise-separable convolutions (Howard et al. 2017)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.models import register_model
from zoo.models.blocks import DepthwiseConv
from zoo.models.layers import get_activation, he_normal, kernel_init_for, max_pool
from zoo.models.regularized_layers import check_rate
from zoo.registry import ZooError


def _batch_norm(train: bool, dtype: Any, param_dtype: Any, name: str | None = None) -> nn.BatchNorm:
  return nn.BatchNorm(
    use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=param_dtype, name=name
  )


def _check_positive(where: str, **values: int | tuple[int, ...]) -> None:
  for key, value in values.items():
    if any(v < 1 for v in (value if isinstance(value, tuple) else (value,))):
      raise ZooError(f"{where}: {key} must be at least 1, got {value}")


class VGGSmall(nn.Module):
  """The documents' VGG-style CNN: per block, [3x3 conv SAME -> BN -> ReLU] x `convs_per_block` -> 2x2
  max-pool -> dropout `conv_dropout`; then global average pool -> Dense 512 -> BN -> ReLU -> dropout ->
  Dense 256 -> ReLU -> dropout -> Dense K.

  Dimensions: B batch, H, W, C image, K classes; each block halves H and W (28 -> 14 -> 7 -> 3) and has
  `features[i]` channels (32, 64, 128 as the documents). VGG's stacks of 3x3 convolutions between 2x2
  pools (Simonyan & Zisserman 2015), with two changes the small images need or the documents make:
  - SAME padding: the documents' VALID convolutions shrink 28 px inputs to nothing by the third block.
  - Batch norm before every ReLU (Ioffe & Szegedy 2015), with bias-free convolutions; the documents put it
    after the ReLU of the first convolution of each block only.
  The global average pool (Lin et al. 2014) replaces VGG's flatten into 4096-wide layers.
  """

  features: tuple[int, ...] = (32, 64, 128)
  convs_per_block: int = 2
  hidden: tuple[int, ...] = (512, 256)
  conv_dropout: float = 0.25
  dropout: float = 0.5
  num_classes: int = 10
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    _check_positive("vgg_small", features=self.features, convs_per_block=self.convs_per_block)
    _check_positive("vgg_small", hidden=self.hidden)
    check_rate(self.conv_dropout, "vgg_small conv_dropout")
    check_rate(self.dropout, "vgg_small dropout")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(use_bias=False, kernel_init=he_normal, dtype=self.dtype, param_dtype=self.param_dtype)
    for f in self.features:
      for _ in range(self.convs_per_block):
        x = nn.Conv(f, (3, 3), padding="SAME", **kw)(x)  # (B, H, W, f)
        x = nn.relu(_batch_norm(train, self.dtype, self.param_dtype)(x))
      x = max_pool(x, 2)  # (B, H/2, W/2, f)
      x = nn.Dropout(self.conv_dropout, deterministic=not train)(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)  # (B, features[-1])
    for i, h in enumerate(self.hidden):
      # The first hidden layer is batch-normalised, as in the documents; its bias would be redundant.
      x = nn.Dense(h, **{**kw, "use_bias": i != 0})(x)  # (B, h)
      if i == 0:
        x = _batch_norm(train, self.dtype, self.param_dtype)(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return logits.astype(jnp.float32)  # (B, K)


class HighwayLayer(nn.Module):
  """y = H(x) T(x) + x (1 - T(x)), with H(x) = activation(x W_H + b_H) and the transform gate
  T(x) = sigmoid(x W_T + b_T) (Srivastava et al. 2015). Input and output (B, D): the carry needs equal widths.

  b_T starts at `gate_bias` < 0, so T is small and the layer starts close to carrying x through unchanged:
  the paper's remedy for training very deep stacks (-1 to -3; -2 in most of its experiments).
  """

  activation: str = "relu"
  gate_bias: float = -2.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = get_activation(self.activation)(
      nn.Dense(d, kernel_init=kernel_init_for(self.activation), name="transform", **kw)(x)
    )  # (B, D)
    t = nn.sigmoid(
      nn.Dense(
        d,
        kernel_init=kernel_init_for("sigmoid"),
        bias_init=nn.initializers.constant(self.gate_bias),
        name="gate",
        **kw,
      )(x)
    )  # (B, D), in (0, 1)
    return h * t + x * (1 - t)


class HighwayMLP(nn.Module):
  """Flatten -> Dense `width` + activation (a plain layer changes the width, as in the paper) ->
  `num_layers` HighwayLayers of width `width` -> Dense K.

  Dimensions: B batch, any input (B, ...) is flattened to (B, D); K classes.
  """

  width: int = 64
  num_layers: int = 10
  activation: str = "relu"
  gate_bias: float = -2.0
  num_classes: int = 10
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    get_activation(self.activation)
    _check_positive("highway_mlp", width=self.width)
    if self.num_layers < 0:
      raise ZooError(f"highway_mlp: num_layers must be >= 0, got {self.num_layers}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.reshape(x.shape[0], -1)  # (B, D)
    x = nn.Dense(self.width, kernel_init=kernel_init_for(self.activation), **kw)(x)
    x = get_activation(self.activation)(x)  # (B, width)
    for _ in range(self.num_layers):
      x = HighwayLayer(self.activation, self.gate_bias, **kw)(x)  # (B, width)
    return nn.Dense(self.num_classes, **kw)(x).astype(jnp.float32)  # (B, K)


class ResidualDenseBlock(nn.Module):
  """y = activation(shortcut(x) + Dense_2(dropout(activation(Dense_1(x))))), Dense_1 to `hidden` units and
  Dense_2 back to `features` (He et al. 2016's residual block, dense). The shortcut is the identity, or a
  linear projection where x's width differs from `features`.

  Dimensions: (B, D) -> (B, features). `hidden` < `features` makes it the bottleneck (reduce-expand) block;
  None means `features`. `zero_init` starts Dense_2 at zero, so the block starts as the identity on
  non-negative (post-ReLU) inputs (as Goyal et al. 2017 zero the last BN's scale); Dense_1 then gets no
  gradient until Dense_2 has moved away from zero.
  """

  features: int
  hidden: int | None = None
  activation: str = "relu"
  dropout: float = 0.0
  zero_init: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    act = get_activation(self.activation)
    y = act(nn.Dense(self.hidden or self.features, kernel_init=kernel_init_for(self.activation), **kw)(x))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)  # (B, hidden)
    last_init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
    y = nn.Dense(self.features, kernel_init=last_init, **kw)(y)  # (B, features)
    if x.shape[-1] != self.features:
      x = nn.Dense(self.features, use_bias=False, name="projection", **kw)(x)
    return act(x + y)


class ResidualMLP(nn.Module):
  """Flatten -> `num_blocks` ResidualDenseBlocks of width `width` (the first one projects the input's
  width in its shortcut) -> Dense K.

  Dimensions: B batch, any input (B, ...) flattened to (B, D); K classes. `hidden` is the blocks' inner
  width: None (= width) for the basic block, smaller for the bottleneck block (bottleneck_mlp: 256 -> 64
  -> 256, ResNet's reduction by 4).
  """

  width: int = 128
  num_blocks: int = 3
  hidden: int | None = None
  activation: str = "relu"
  dropout: float = 0.0
  zero_init_residual: bool = False
  num_classes: int = 10
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    get_activation(self.activation)
    check_rate(self.dropout, "residual MLP dropout")
    _check_positive("residual MLP", width=self.width, num_blocks=self.num_blocks)
    if self.hidden is not None:
      _check_positive("residual MLP", hidden=self.hidden)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.reshape(x.shape[0], -1)  # (B, D)
    for _ in range(self.num_blocks):
      x = ResidualDenseBlock(
        self.width, self.hidden, self.activation, self.dropout, self.zero_init_residual, **kw
      )(x, train=train)  # (B, width)
    return nn.Dense(self.num_classes, **kw)(x).astype(jnp.float32)  # (B, K)


class SeparableConv(nn.Module):
  """MobileNet's depthwise-separable convolution (Howard et al. 2017, Fig. 3): a depthwise 3x3 conv (one
  filter per input channel, stride `strides`) -> BN -> ReLU -> a pointwise 1x1 conv to `features` -> BN ->
  ReLU.

  Dimensions: (B, H, W, M) -> (B, H/strides, W/strides, N = features). Weights: D_K^2 M + M N against
  D_K^2 M N for a standard D_K x D_K convolution (the paper's eq. 5 over eq. 4: 1/N + 1/D_K^2).
  """

  features: int
  strides: int = 1
  kernel_size: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(use_bias=False, kernel_init=he_normal, dtype=self.dtype, param_dtype=self.param_dtype)
    k, pad = self.kernel_size, self.kernel_size // 2
    # Symmetric padding (SAME would pad only after when striding an even size).
    x = DepthwiseConv(
      k,
      self.strides,
      padding=((pad, pad), (pad, pad)),
      kernel_init=he_normal,
      name="depthwise",
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )(x)
    x = nn.relu(_batch_norm(train, self.dtype, self.param_dtype, "depthwise_bn")(x))  # (B, H/s, W/s, M)
    x = nn.Conv(self.features, (1, 1), name="pointwise", **kw)(x)
    return nn.relu(_batch_norm(train, self.dtype, self.param_dtype, "pointwise_bn")(x))  # (B, H/s, W/s, N)


class MobileNetSmall(nn.Module):
  """A small MobileNet (Howard et al. 2017) for 28-32 px images: 3x3 conv `stem_features` (stride 1, where
  the paper's 224 px network strides by 2) -> BN -> ReLU -> SeparableConv blocks (`features`, `strides`) ->
  global average pool -> Dense K.

  Dimensions: B batch, H, W, C image, K classes; by default 28 -> 28 -> 14 -> 7 px. `width_multiplier` is
  the paper's alpha: every width is int(alpha * width).
  """

  stem_features: int = 32
  features: tuple[int, ...] = (64, 128, 128, 256, 256)
  strides: tuple[int, ...] = (1, 2, 1, 2, 1)
  width_multiplier: float = 1.0
  num_classes: int = 10
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if len(self.features) != len(self.strides):
      raise ZooError(
        f"mobilenet_small: features {self.features} and strides {self.strides} need one entry per block"
      )
    widths = tuple(self._width(f) for f in (self.stem_features, *self.features))
    _check_positive("mobilenet_small", widths=widths, strides=self.strides)
    super().__post_init__()

  def _width(self, features: int) -> int:
    return int(self.width_multiplier * features)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    stem = self._width(self.stem_features)
    x = nn.Conv(stem, (3, 3), padding="SAME", use_bias=False, kernel_init=he_normal, **kw)(x)
    x = nn.relu(_batch_norm(train, self.dtype, self.param_dtype)(x))  # (B, H, W, stem)
    for f, s in zip(self.features, self.strides, strict=True):
      x = SeparableConv(self._width(f), s, **kw)(x, train=train)  # (B, H/s, W/s, f)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)  # (B, features[-1])
    return nn.Dense(self.num_classes, **kw)(x).astype(jnp.float32)  # (B, K)


@register_model
def vgg_small(**kw) -> VGGSmall:
  return VGGSmall(**kw)


@register_model
def highway_mlp(**kw) -> HighwayMLP:
  return HighwayMLP(**kw)


@register_model
def residual_mlp(**kw) -> ResidualMLP:
  return ResidualMLP(**kw)


@register_model
def bottleneck_mlp(**kw) -> ResidualMLP:
  return ResidualMLP(**{**dict(width=256, hidden=64, num_blocks=3), **kw})


@register_model
def mobilenet_small(**kw) -> MobileNetSmall:
  return MobileNetSmall(**kw)
