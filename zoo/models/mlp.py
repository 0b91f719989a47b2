"""MLP (Rumelhart et al. 1986) with its norm (batch, layer, group, weight, spectral) and dropout by name."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.models import register_model
from zoo.models.layers import check_choice, get_activation, kernel_init_for
from zoo.models.regularized_layers import (
  AlphaDropout,
  DropConnectDense,
  SpectralNormDense,
  WeightNormDense,
  check_rate,
  normalization_layer,
  resolve_num_groups,
)
from zoo.registry import ZooError

Norm = Literal["none", "batch", "layer", "group", "weight", "spectral"]
DropoutKind = Literal["standard", "alpha", "dropconnect"]


class MLP(nn.Module):
  """Per hidden layer: Dense -> [norm] -> activation -> [dropout]; then a linear layer to the logits.

  Dimensions: B batch, D input features (any input (B, ...) is flattened: images (B, H, W, C) become
  (B, H*W*C)), K classes. The kernels' initialiser is matched to `activation` (see layers.kernel_init_for).

  `norm` acts on the hidden layers; the output layer stays a plain Dense, so that the logits' scale is
  free (spectrally normalised layers throughout would bound it, and with it the confidence softmax can
  reach):
  - 'batch' | 'layer' | 'group' normalise the Dense's output (Ioffe & Szegedy 2015; Ba et al. 2016; Wu &
    He 2018). 'group' makes `num_groups` groups of features; None picks the largest count up to 32 that
    divides every hidden width and leaves at least 2 features per group. `batch_norm=True` is the older
    spelling of norm='batch'.
  - 'weight' | 'spectral' reparametrise the Dense's kernel instead (Salimans & Kingma 2016; Miyato et al.
    2018). Spectral norm keeps its power-iteration vector in the 'spectral' collection, updated in
    training only, one iteration per step.
  `dropout` is the rate of `dropout_kind`:
  - 'standard': inverted dropout on the activations (Srivastava et al. 2014).
  - 'alpha': alpha dropout on the activations (Klambauer et al. 2017), which keeps the zero mean and unit
    variance that SELU networks rely on; it is meant for activation='selu' (other activations run, but
    their units are not standardised, so the moments are not kept).
  - 'dropconnect': DropConnect (Wan et al. 2013) on the hidden layers' kernels instead of the activations;
    with norm='weight' or 'spectral' it drops entries of the normalised kernel.
  """

  hidden_sizes: tuple[int, ...] = (100,)
  activation: str = "relu"
  dropout: float = 0.0
  batch_norm: bool = False
  norm: Norm = "none"
  dropout_kind: DropoutKind = "standard"
  num_groups: int | None = None
  num_classes: int = 10
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    # Every bad choice fails when the module is built, not inside init.
    get_activation(self.activation)
    check_choice(self.norm, get_args(Norm), "norm")
    check_choice(self.dropout_kind, get_args(DropoutKind), "dropout_kind")
    check_rate(self.dropout, "MLP dropout")
    if self.batch_norm and self.norm not in ("none", "batch"):
      raise ZooError(
        f"MLP: batch_norm=True means norm='batch' and conflicts with norm={self.norm!r}; set only norm"
      )
    if self._norm() == "group":
      resolve_num_groups(self.num_groups, dense_widths=self.hidden_sizes, where=self._where())
    super().__post_init__()

  def _norm(self) -> str:
    return "batch" if self.batch_norm else self.norm

  def _where(self) -> str:
    return f"MLP with hidden_sizes={tuple(self.hidden_sizes)}"

  def _hidden_dense(self, width: int, train: bool) -> Callable[[jax.Array], jax.Array]:
    """The hidden layer's affine map: Dense, or its weight-reparametrised / DropConnect form."""
    norm = self._norm()
    kw = dict(kernel_init=kernel_init_for(self.activation), dtype=self.dtype, param_dtype=self.param_dtype)
    dropconnect = self.dropout if self.dropout_kind == "dropconnect" else 0.0
    if norm == "weight":
      return functools.partial(WeightNormDense(width, dropconnect=dropconnect, **kw), train=train)
    if norm == "spectral":
      return functools.partial(SpectralNormDense(width, dropconnect=dropconnect, **kw), train=train)
    # A bias before BatchNorm is cancelled by its mean subtraction; BN's own offset replaces it. (Layer
    # and group norm subtract means over features, which do not cancel a per-feature bias.)
    use_bias = norm != "batch"
    if self.dropout_kind == "dropconnect":
      return functools.partial(
        DropConnectDense(width, rate=self.dropout, use_bias=use_bias, **kw), train=train
      )
    return nn.Dense(width, use_bias=use_bias, **kw)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    act, norm = get_activation(self.activation), self._norm()
    num_groups = (
      resolve_num_groups(self.num_groups, dense_widths=self.hidden_sizes, where=self._where())
      if norm == "group"
      else 0
    )
    x = x.reshape(x.shape[0], -1)  # (B, D)
    for width in self.hidden_sizes:
      x = self._hidden_dense(width, train)(x)  # (B, width)
      if norm in ("batch", "layer", "group"):
        x = normalization_layer(
          norm, train=train, num_groups=num_groups, dtype=self.dtype, param_dtype=self.param_dtype
        )(x)
      x = act(x)
      if self.dropout_kind == "standard":
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      elif self.dropout_kind == "alpha":
        x = AlphaDropout(self.dropout)(x, train=train)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)  # (B, K)
    return logits.astype(jnp.float32)


@register_model
def mlp(**kw) -> MLP:
  return MLP(**kw)
