"""EfficientNet B0-B3 (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks"): MBConv blocks with squeeze-and-excitation, compound-scaled as the TF reference implementation."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.models import register_model
from zoo.models.blocks import DepthwiseConv, DropPath, SqueezeExcite
from zoo.models.layers import check_choice
from zoo.registry import ZooError

# How a strided kxk convolution pads: 'same' is TensorFlow's SAME (the odd pixel after), as the reference;
# 'symmetric' PyTorch's k//2 on every side, as timm's `efficientnet_b*` and torchvision's models.
Padding = Literal["same", "symmetric"]

# One stage of the base network (the paper's Table 1, B0): (expand ratio, kernel, stride of its first
# block, output channels, repeats). Stages 3, 5 and 6 use 5x5 kernels.
Stage = tuple[int, int, int, int, int]
B0_STAGES: tuple[Stage, ...] = (
  (1, 3, 1, 16, 1),
  (6, 3, 2, 24, 2),
  (6, 5, 2, 40, 2),
  (6, 3, 2, 80, 3),
  (6, 5, 1, 112, 3),
  (6, 5, 2, 192, 4),
  (6, 3, 1, 320, 1),
)


# The TF reference's initialisers: convolutions N(0, 2 / fan_out) with fan_out = k * k * out / groups, and
# the classifier U(-1/sqrt(K), 1/sqrt(K)) with a zero bias. Flax computes a grouped kernel's fan-out as
# k * k * out, so a depthwise kernel (k, k, 1, C) takes its fan-in k * k instead, the reference's value.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
depthwise_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


# The TF reference's BatchNorm epsilon (PyTorch's default, 1e-5, is what timm's and torchvision's use).
TF_BN_EPSILON = 1e-3


def _batch_norm(train: bool, epsilon: float, **kw: Any) -> nn.BatchNorm:
  # The TF reference's BatchNorm: Keras's momentum 0.99 means what Flax's does, the old average's weight.
  return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=epsilon, **kw)


def _conv_padding(kernel: int, padding: str) -> str | tuple[tuple[int, int], tuple[int, int]]:
  """The padding argument of a kxk convolution: lax's 'SAME' or PyTorch's k//2 on both sides."""
  return "SAME" if padding == "same" else ((kernel // 2, kernel // 2), (kernel // 2, kernel // 2))


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Channels `filters` scaled by `width`, rounded to the nearest multiple of `divisor` (at least
  `divisor`), rounding up instead when the nearest one would lose more than 10% (the reference's rule)."""
  scaled = filters * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * scaled:
    rounded += divisor
  return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
  """A stage's block count scaled by `depth`, rounded up."""
  return int(math.ceil(depth * repeats))


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One MBConv block of a scaled network (`stage` and `index` count from 1)."""

  stage: int
  index: int
  in_features: int
  out_features: int
  expand_ratio: int
  kernel: int
  stride: int
  se_features: int  # Squeeze width: se_ratio times the block's *input* channels, not the expanded ones.
  drop_path: float  # Stochastic-depth rate of its residual branch (used only when it has a skip).

  @property
  def has_skip(self) -> bool:
    return self.stride == 1 and self.in_features == self.out_features


def block_specs(
  stages: tuple[Stage, ...] = B0_STAGES,
  width: float = 1.0,
  depth: float = 1.0,
  stem_features: int = 32,
  se_ratio: float = 0.25,
  drop_path_rate: float = 0.2,
  divisor: int = 8,
) -> list[BlockSpec]:
  """The scaled network's blocks in order. Block i of n drops its branch with rate drop_path_rate * i / n,
  growing linearly from 0 at the first block, as the reference's drop-connect rate."""
  raw = []
  in_features = round_filters(stem_features, width, divisor)
  for stage, (expand, kernel, stride, out, repeats) in enumerate(stages, start=1):
    out_features = round_filters(out, width, divisor)
    for r in range(round_repeats(repeats, depth)):
      # A stage's first block changes the width and strides; its repeats keep both.
      raw.append((stage, r + 1, in_features, out_features, expand, kernel, stride if r == 0 else 1))
      in_features = out_features
  n = len(raw)
  return [
    BlockSpec(*block, se_features=max(1, int(block[2] * se_ratio)), drop_path=drop_path_rate * i / n)
    for i, block in enumerate(raw)
  ]


class MBConv(nn.Module):
  """Mobile inverted bottleneck: [Conv 1x1 to e C -> BN -> swish] (only when e > 1) -> depthwise Conv kxk
  stride s -> BN -> swish -> squeeze-excite -> Conv 1x1 to C' -> BN (linear), plus the input through
  stochastic depth when s = 1 and C = C'. Input (B, H, W, C), output (B, H/s, W/s, C').
  `padding` and `bn_epsilon` as `EfficientNet`'s."""

  spec: BlockSpec
  padding: Padding = "same"
  bn_epsilon: float = TF_BN_EPSILON
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    spec = self.spec
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bn = dict(epsilon=self.bn_epsilon, **kw)
    hidden = spec.in_features * spec.expand_ratio
    y = x
    if spec.expand_ratio != 1:
      y = nn.Conv(hidden, (1, 1), use_bias=False, kernel_init=conv_init, name="expand_conv", **kw)(y)
      y = nn.silu(_batch_norm(train, name="expand_norm", **bn)(y))  # (B, H, W, eC)
    # Depthwise: one kxk filter per channel, as shifted slices (XLA CPU runs grouped convolutions slowly);
    # the same parameter as nn.Conv(feature_group_count=eC), so pretrained kernels load.
    y = DepthwiseConv(
      spec.kernel,
      spec.stride,
      padding=_conv_padding(spec.kernel, self.padding),
      kernel_init=depthwise_init,
      name="depthwise_conv",
      **kw,
    )(y)  # (B, H/s, W/s, eC)
    y = nn.silu(_batch_norm(train, name="depthwise_norm", **bn)(y))
    y = SqueezeExcite(spec.se_features, activation="swish", name="se", **kw)(y)
    project = nn.Conv(
      spec.out_features, (1, 1), use_bias=False, kernel_init=conv_init, name="project_conv", **kw
    )
    y = _batch_norm(train, name="project_norm", **bn)(project(y))  # (B, H/s, W/s, C'): linear, no activation
    if spec.has_skip:
      y = x + DropPath(spec.drop_path)(y, train)
    return y


class EfficientNet(nn.Module):
  """Conv 3x3/`stem_stride` -> BN -> swish -> MBConv stages -> Conv 1x1 to the head width -> BN -> swish ->
  global average pool -> dropout -> Dense K.

  Dimensions: B batch, H, W, C image, K classes. Compound scaling as the reference: every width (stem,
  stages, head) is `round_filters(c, width)` and every stage's repeats `round_repeats(r, depth)`; the
  input resolution is the registered input shape. BatchNorm momentum 0.99 and epsilon `bn_epsilon`, by
  default TF's 1e-3.

  `padding` is by default TF's 'SAME' (Flax's too), as in the reference whose weights these layouts come
  from: for a stride-2 convolution on an even input it pads one row/column more at the bottom/right than
  at the top/left, where PyTorch's symmetric k//2 padding ('symmetric') pads both sides equally (timm's
  `tf_` models emulate TF's). The two give the same shapes at every stride here; pretrained TF weights
  need 'same', PyTorch-trained ones (timm's `efficientnet_b*`, torchvision's) 'symmetric' with
  `bn_epsilon=1e-5`, PyTorch's default (zoo.interop.efficientnet picks these for imported weights).

  `drop_path_rate` is the reference's drop_connect_rate: stochastic depth on the residual branches, its
  rate growing linearly with the block's index (see `block_specs`). The squeeze-excite layers use Flax's
  default initialisation (`SqueezeExcite` is shared); everything else is initialised as in the reference.
  At 1000 classes: B0 5,288,548 parameters, B1 7,794,184, B2 9,109,994, B3 12,233,232 (as timm's).
  """

  width: float = 1.0
  depth: float = 1.0
  stages: tuple[tuple[int, int, int, int, int], ...] = B0_STAGES
  stem_features: int = 32
  stem_stride: int = 2
  head_features: int = 1280
  se_ratio: float = 0.25
  dropout: float = 0.2
  drop_path_rate: float = 0.2
  padding: Padding = "same"
  bn_epsilon: float = TF_BN_EPSILON
  num_classes: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if self.width <= 0 or self.depth <= 0:
      raise ZooError(f"efficientnet width and depth must be positive, got {self.width} and {self.depth}")
    if not self.stages:
      raise ZooError("efficientnet needs at least one stage")
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise ZooError(f"efficientnet drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
    check_choice(self.padding, get_args(Padding), "efficientnet padding")
    if not self.bn_epsilon > 0:
      raise ZooError(f"efficientnet bn_epsilon must be positive, got {self.bn_epsilon}")
    super().__post_init__()

  def blocks(self) -> list[BlockSpec]:
    """This network's MBConv blocks, in order."""
    return block_specs(
      self.stages, self.width, self.depth, self.stem_features, self.se_ratio, self.drop_path_rate
    )

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv_kw = dict(use_bias=False, kernel_init=conv_init, **kw)
    bn = dict(epsilon=self.bn_epsilon, **kw)
    stem = round_filters(self.stem_features, self.width)
    stem_pad = _conv_padding(3, self.padding)
    x = nn.Conv(stem, (3, 3), strides=self.stem_stride, padding=stem_pad, name="stem_conv", **conv_kw)(x)
    x = nn.silu(_batch_norm(train, name="stem_norm", **bn)(x))  # (B, H/s, W/s, 32 w)
    block_kw = dict(padding=self.padding, bn_epsilon=self.bn_epsilon, **kw)
    for spec in self.blocks():
      block = MBConv(spec, name=f"stage{spec.stage}_block{spec.index}", **block_kw)
      x = block(x, train=train)  # (B, h, w, c)
    head = round_filters(self.head_features, self.width)
    x = nn.Conv(head, (1, 1), name="head_conv", **conv_kw)(x)  # (B, h, w, 1280 w)
    x = jnp.mean(nn.silu(_batch_norm(train, name="head_norm", **bn)(x)), axis=(1, 2))  # (B, 1280 w)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(
      self.num_classes,
      kernel_init=dense_init,
      bias_init=nn.initializers.zeros,
      name="classifier",
      **kw,
    )(x)  # (B, K)
    return logits.astype(jnp.float32)


def _efficientnet(width: float, depth: float, dropout: float, kw: dict[str, Any]) -> EfficientNet:
  return EfficientNet(**{**dict(width=width, depth=depth, dropout=dropout), **kw})


# (width, depth, resolution, dropout) from the reference's efficientnet_params.
@register_model(input_shape=(224, 224, 3))
def efficientnet_b0(**kw) -> EfficientNet:
  return _efficientnet(1.0, 1.0, 0.2, kw)


@register_model(input_shape=(240, 240, 3))
def efficientnet_b1(**kw) -> EfficientNet:
  return _efficientnet(1.0, 1.1, 0.2, kw)


@register_model(input_shape=(260, 260, 3))
def efficientnet_b2(**kw) -> EfficientNet:
  return _efficientnet(1.1, 1.2, 0.3, kw)


@register_model(input_shape=(300, 300, 3))
def efficientnet_b3(**kw) -> EfficientNet:
  return _efficientnet(1.2, 1.4, 0.3, kw)


@register_model
def efficientnet_tiny(**kw) -> EfficientNet:
  """B0's layout at a quarter of its width and half its depth, with a stride-1 stem so that 28-32 px
  inputs end at 2x2 rather than B0's 1x1: for tests and quick runs on MNIST/CIFAR-sized images."""
  return _efficientnet(0.25, 0.5, 0.2, {**dict(stem_stride=1, num_classes=10), **kw})
