"""Small CNNs: LeNet-5 (LeCun et al. 1998), a reference MNIST CNN, a CNN with batch, layer or group norm."""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.models import register_model
from zoo.models.layers import POOLS, check_choice, get_activation, he_normal, kernel_init_for, max_pool
from zoo.models.regularized_layers import NORMALIZATIONS, normalization_layer, resolve_num_groups


class MnistCNN(nn.Module):
  """Conv 32 3x3 (VALID) + ReLU -> 2x2 max-pool -> flatten -> Dense 128 + ReLU -> Dense K.

  Dimensions: B batch, H, W, C image, K classes. At 28x28x1 it has 693,962 parameters, as in the
  reference notebook (320 conv + 692,352 hidden + 1,290 output). Optional dropout before each dense layer.
  """

  num_classes: int = 10
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # He initialisation for ReLU layers (the notebook's Keras default was Glorot uniform).
    x = nn.Conv(32, (3, 3), padding="VALID", kernel_init=he_normal, **kw)(x)  # (B, H-2, W-2, 32)
    x = max_pool(nn.relu(x), 2)  # (B, (H-2)/2, (W-2)/2, 32)
    x = x.reshape(x.shape[0], -1)  # (B, 5408) at 28x28
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.relu(nn.Dense(128, kernel_init=he_normal, **kw)(x))  # (B, 128)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, **kw)(x).astype(jnp.float32)  # (B, K)


class LeNet5(nn.Module):
  """LeNet-5: C1 6@5x5 -> S2 2x2 -> C3 16@5x5 -> S4 2x2 -> C5 120@5x5 -> F6 84 -> K outputs.

  Dimensions: B batch, H, W, C image, K classes. Deviations from the paper, as in most modern
  reimplementations:
  - Inputs smaller than 32x32 (MNIST's 28x28) are zero-padded to 32x32 in C1's convolution, as the paper
    centred the digits in a 32x32 field; at 28x28 this is exactly SAME padding. Zero is the mean pixel
    after normalisation (the paper also scaled inputs to a mean of about 0).
  - C3 sees all 6 maps of S2 (the paper's Table I connects each C3 map to 3-6 of them: 1,516 weights,
    not 2,416).
  - S2/S4 are plain average (or max) pools, without the paper's trainable coefficient, bias and squashing.
  - `activation` (default tanh) replaces the paper's scaled 1.7159 tanh(2x/3); the output layer gives
    logits for softmax cross-entropy instead of Euclidean RBF units.
  At 28x28x1 it has 61,706 parameters (156 + 2,416 + 48,120 + 10,164 + 850).
  """

  activation: str = "tanh"
  pool: Literal["avg", "max"] = "avg"
  num_classes: int = 10
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    get_activation(self.activation)
    check_choice(self.pool, tuple(POOLS), "pool")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(kernel_init=kernel_init_for(self.activation), dtype=self.dtype, param_dtype=self.param_dtype)
    act, pool = get_activation(self.activation), POOLS[self.pool]
    h, w = x.shape[-3:-1]
    pad = [((32 - n) // 2, 32 - n - (32 - n) // 2) if n < 32 else (0, 0) for n in (h, w)]
    x = act(nn.Conv(6, (5, 5), padding=pad, **kw)(x))  # C1: (B, 28, 28, 6)
    x = pool(x, 2)  # S2: (B, 14, 14, 6)
    x = act(nn.Conv(16, (5, 5), padding="VALID", **kw)(x))  # C3: (B, 10, 10, 16)
    x = pool(x, 2)  # S4: (B, 5, 5, 16)
    x = act(nn.Conv(120, (5, 5), padding="VALID", **kw)(x))  # C5: (B, 1, 1, 120)
    x = x.reshape(x.shape[0], -1)  # (B, 120)
    x = act(nn.Dense(84, **kw)(x))  # F6: (B, 84)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)  # (B, K)
    return logits.astype(jnp.float32)


class BatchNormCNN(nn.Module):
  """Per stage: [Conv 3x3 SAME -> norm -> ReLU] x `convs_per_stage` -> 2x2 `pool` (max or average); then
  flatten -> Dense `hidden` -> norm -> ReLU -> dropout -> Dense K.

  Dimensions: B batch, H, W, C image, K classes; each stage halves H and W and has `features[i]` channels.
  `norm` is BatchNorm by default (Ioffe & Szegedy 2015); 'layer' normalises each convolution's output over
  all its (H, W, C) units (Ba et al. 2016) and the hidden layer's over its features; 'group' over groups
  of channels (Wu & He 2018), `num_groups` of them (None: the largest count up to 32 that divides every
  width in `features` and `hidden` with at least 2 channels per group); 'none' leaves them out.
  Convolutions and the hidden layer have a bias only with norm='none': the norm's offset replaces it.
  The Flax examples' MNIST CNN is features=(32, 64), convs_per_stage=1, hidden=256, norm='none',
  dropout=0, pool='avg' (824,458 parameters at 28x28x1).
  """

  features: tuple[int, ...] = (32, 64)
  convs_per_stage: int = 2
  hidden: int = 128
  dropout: float = 0.3
  norm: Literal["batch", "layer", "group", "none"] = "batch"
  num_groups: int | None = None
  pool: Literal["max", "avg"] = "max"
  num_classes: int = 10
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    check_choice(self.norm, NORMALIZATIONS, "norm")
    check_choice(self.pool, POOLS, "pool")
    if self.norm == "group":
      self._num_groups()  # Widths it cannot divide fail when the module is built.
    super().__post_init__()

  def _num_groups(self) -> int:
    return resolve_num_groups(
      self.num_groups,
      conv_widths=self.features if self.convs_per_stage > 0 else (),
      dense_widths=(self.hidden,),
      where=f"bn_cnn with features={tuple(self.features)}, hidden={self.hidden}",
    )

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(
      use_bias=self.norm == "none", kernel_init=he_normal, dtype=self.dtype, param_dtype=self.param_dtype
    )
    num_groups = self._num_groups() if self.norm == "group" else 0

    def norm_relu(y: jax.Array, layer_axes: int | tuple[int, ...]) -> jax.Array:
      norm = normalization_layer(
        self.norm,
        train=train,
        num_groups=num_groups,
        layer_axes=layer_axes,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
      )
      return nn.relu(norm(y))

    for f in self.features:
      for _ in range(self.convs_per_stage):
        x = norm_relu(nn.Conv(f, (3, 3), padding="SAME", **kw)(x), (-3, -2, -1))  # (B, H, W, f)
      x = POOLS[self.pool](x, 2)  # (B, H/2, W/2, f)
    x = x.reshape(x.shape[0], -1)  # (B, H*W*f): 3136 at 28x28 with features (32, 64)
    x = norm_relu(nn.Dense(self.hidden, **kw)(x), -1)  # (B, hidden)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)  # (B, K)
    return logits.astype(jnp.float32)


@register_model
def mnist_cnn(**kw) -> MnistCNN:
  return MnistCNN(**kw)


@register_model
def lenet5(**kw) -> LeNet5:
  return LeNet5(**kw)


@register_model
def bn_cnn(**kw) -> BatchNormCNN:
  return BatchNormCNN(**kw)
