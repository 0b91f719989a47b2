"""RegNetX and RegNetY (Radosavovic et al. 2020, "Designing Network Design Spaces")."""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.models import register_model
from zoo.models.blocks import SqueezeExcite
from zoo.models.layers import check_choice
from zoo.registry import ZooError

WidthRounding = Literal["pycls", "torchvision"]

# pycls's initialisation (also torchvision's): convolutions N(0, 2 / fan_out) with fan_out = k*k*out
# channels (flax counts the kernel's output axis times its receptive field, the same number, groups or
# not); the classifier N(0, 0.01^2) with a zero bias.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
head_init = nn.initializers.normal(0.01)


def _round_to_multiple(value: float, multiple: int, rounding: str) -> int:
  """The multiple of `multiple` nearest `value`: halves to even as pycls (Python's `round`), or halves up
  as torchvision's `_make_divisible` (which also never goes below `multiple` nor 10% below `value`)."""
  if rounding == "pycls":
    return int(round(value / multiple) * multiple)
  rounded = max(multiple, int(value + multiple / 2) // multiple * multiple)
  return rounded + multiple if rounded < 0.9 * value else rounded


def regnet_stages(
  w0: int,
  wa: float,
  wm: float,
  depth: int,
  group_width: int,
  quantum: int = 8,
  rounding: WidthRounding = "pycls",
) -> list[tuple[int, int, int]]:
  """The stages of a RegNet, as (width, blocks, group width) per stage, from the paper's linear rule.

  Block j < depth gets the continuous width u_j = w0 + wa * j, snapped to the geometric grid of w0:
  s_j = round(log(u_j / w0) / log(wm)), w_j = w0 * wm^s_j, rounded to a multiple of `quantum` (8). Runs of
  equal width form the stages. Then each stage's group width is clipped to its width and the width rounded
  to a multiple of the group width, so the grouped 3x3 convolution has a whole number of groups
  (pycls's `adjust_ws_gs_comp` with bottleneck ratio 1).

  `rounding` decides that last rounding's exact halves: 'pycls' (the authors' code and timm: halves to
  even) or 'torchvision' (halves up). They differ for RegNetX-400MF (392 / 16 = 24.5: 384 or 400 wide) and
  RegNetY-800MF, which is why the two libraries publish different parameter counts for those models.
  """
  if not (w0 > 0 and w0 % quantum == 0 and wa >= 0 and wm > 1 and depth >= 1 and group_width >= 1):
    raise ZooError(
      f"RegNet needs w0 > 0 and a multiple of {quantum}, wa >= 0, wm > 1, depth >= 1 and group_width >= 1; "
      f"got w0={w0}, wa={wa}, wm={wm}, depth={depth}, group_width={group_width}"
    )
  check_choice(rounding, get_args(WidthRounding), "width rounding")
  stages: list[list[int]] = []  # [width, blocks]
  for j in range(depth):
    s = round(math.log((w0 + wa * j) / w0) / math.log(wm))
    width = int(round(w0 * wm**s / quantum) * quantum)
    if stages and stages[-1][0] == width:
      stages[-1][1] += 1
    else:
      stages.append([width, 1])
  out = []
  for width, blocks in stages:
    g = min(group_width, width)
    out.append((_round_to_multiple(width, g, rounding), blocks, g))
  return out


class RegNetBlock(nn.Module):
  """The X block: 1x1 conv-BN-ReLU -> 3x3 grouped conv (stride `strides`, groups = features / group_width)
  -BN-ReLU -> [Y: squeeze-excitation] -> 1x1 conv-BN; added to the input (through a 1x1 conv with stride
  `strides` + BN where the shape changes), then ReLU. Bottleneck ratio 1: every conv is `features` wide.

  Dimensions: (B, H, W, C) -> (B, H/strides, W/strides, features). `se_ratio` > 0 makes it the Y block,
  squeezing to round(se_ratio * C) channels: 1/4 of the block's *input* width, as pycls.
  """

  features: int
  group_width: int
  strides: int = 1
  se_ratio: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(use_bias=False, kernel_init=conv_init, dtype=self.dtype, param_dtype=self.param_dtype)
    bn = dict(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    w, s = self.features, self.strides
    y = nn.relu(nn.BatchNorm(name="bn_a", **bn)(nn.Conv(w, (1, 1), name="conv_a", **kw)(x)))
    # PyTorch's padding 1 on both sides (flax's SAME would pad only after when striding an even size).
    y = nn.Conv(
      w, (3, 3), s, padding=((1, 1), (1, 1)), feature_group_count=w // self.group_width, name="conv_b", **kw
    )(y)  # (B, H/s, W/s, w)
    y = nn.relu(nn.BatchNorm(name="bn_b", **bn)(y))
    if self.se_ratio > 0:
      squeeze = int(round(self.se_ratio * x.shape[-1]))
      y = SqueezeExcite(squeeze, "relu", dtype=self.dtype, param_dtype=self.param_dtype, name="se")(y)
    y = nn.BatchNorm(name="bn_c", **bn)(nn.Conv(w, (1, 1), name="conv_c", **kw)(y))
    if x.shape[-1] != w or s != 1:
      x = nn.BatchNorm(name="proj_bn", **bn)(nn.Conv(w, (1, 1), s, name="proj_conv", **kw)(x))
    return nn.relu(x + y)


class RegNet(nn.Module):
  """RegNet: stem 3x3 conv (`stem_width`, stride `stem_stride`)-BN-ReLU -> stages of RegNetBlocks (the first
  block of each stage strides by 2) -> global average pool -> Dense K.

  Dimensions: B batch, H, W, C image, K classes. The stages' widths and depths come from (w0, wa, wm,
  depth, group_width) by the paper's quantised linear rule (see `regnet_stages`; `width_rounding` picks
  pycls's or torchvision's rounding of exact halves). `se_ratio` 0 gives RegNetX, 0.25 RegNetY. At 224x224
  the paper's stem strides by 2 and each of the 4 stages by 2 (output 7x7).
  """

  w0: int = 48
  wa: float = 27.89
  wm: float = 2.09
  depth: int = 16
  group_width: int = 8
  se_ratio: float = 0.25
  stem_width: int = 32
  stem_stride: int = 2
  width_rounding: WidthRounding = "pycls"
  num_classes: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    self.stages()  # Bad width parameters fail when the module is built.
    if self.se_ratio < 0 or self.stem_width < 1 or self.stem_stride < 1:
      raise ZooError(
        f"RegNet needs se_ratio >= 0, stem_width >= 1 and stem_stride >= 1; got se_ratio={self.se_ratio}, "
        f"stem_width={self.stem_width}, stem_stride={self.stem_stride}"
      )
    super().__post_init__()

  def stages(self) -> list[tuple[int, int, int]]:
    """(width, blocks, group width) per stage."""
    return regnet_stages(
      self.w0, self.wa, self.wm, self.depth, self.group_width, rounding=self.width_rounding
    )

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = nn.Conv(
      self.stem_width,
      (3, 3),
      self.stem_stride,
      padding=((1, 1), (1, 1)),
      use_bias=False,
      kernel_init=conv_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="stem_conv",
    )(x)  # (B, H/2, W/2, stem_width) with the paper's stride
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="stem_bn",
    )(x)
    x = nn.relu(x)
    for i, (width, blocks, group_width) in enumerate(self.stages()):
      for j in range(blocks):
        x = RegNetBlock(
          width,
          group_width,
          strides=2 if j == 0 else 1,
          se_ratio=self.se_ratio,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"s{i + 1}_b{j + 1}",
        )(x, train=train)  # (B, H', W', width), H' halved by each stage
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)  # (B, width of the last stage)
    logits = nn.Dense(
      self.num_classes, kernel_init=head_init, dtype=self.dtype, param_dtype=self.param_dtype, name="head"
    )(x)
    return logits.astype(jnp.float32)  # (B, K)


def _regnet(w0: int, wa: float, wm: float, depth: int, group_width: int, se_ratio: float, kw: dict) -> RegNet:
  args = dict(w0=w0, wa=wa, wm=wm, depth=depth, group_width=group_width, se_ratio=se_ratio)
  return RegNet(**{**args, **kw})


# The pycls model zoo's parameters (w0, wa, wm, depth, group width); Y adds SE with ratio 1/4.


@register_model(input_shape=(224, 224, 3))
def regnetx_200mf(**kw) -> RegNet:
  return _regnet(24, 36.44, 2.49, 13, 8, 0.0, kw)


@register_model(input_shape=(224, 224, 3))
def regnetx_400mf(**kw) -> RegNet:
  return _regnet(24, 24.48, 2.54, 22, 16, 0.0, kw)


@register_model(input_shape=(224, 224, 3))
def regnetx_600mf(**kw) -> RegNet:
  return _regnet(48, 36.97, 2.24, 16, 24, 0.0, kw)


@register_model(input_shape=(224, 224, 3))
def regnetx_800mf(**kw) -> RegNet:
  return _regnet(56, 35.73, 2.28, 16, 16, 0.0, kw)


@register_model(input_shape=(224, 224, 3))
def regnety_200mf(**kw) -> RegNet:
  return _regnet(24, 36.44, 2.49, 13, 8, 0.25, kw)


@register_model(input_shape=(224, 224, 3))
def regnety_400mf(**kw) -> RegNet:
  return _regnet(48, 27.89, 2.09, 16, 8, 0.25, kw)


@register_model(input_shape=(224, 224, 3))
def regnety_600mf(**kw) -> RegNet:
  return _regnet(48, 32.54, 2.32, 15, 16, 0.25, kw)


@register_model(input_shape=(224, 224, 3))
def regnety_800mf(**kw) -> RegNet:
  return _regnet(56, 38.84, 2.4, 14, 16, 0.25, kw)


@register_model
def regnet_tiny(**kw) -> RegNet:
  """A RegNetY for 28-32 px images: stride-1 stem, stages [16, 32, 64] x [1, 2, 3] (8 px groups), so
  28 -> 14 -> 7 -> 4 px."""
  args = dict(stem_width=16, stem_stride=1, num_classes=10)
  return _regnet(16, 12.0, 2.0, 6, 8, 0.25, {**args, **kw})
