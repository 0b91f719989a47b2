"""Progressive neural networks (Rusu et al. 2016): one MLP column per task, lateral connections from the
hidden layers of every earlier column."""

from __future__ import annotations

from typing import Any, Literal, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.models import register_model
from zoo.models.layers import check_choice, get_activation, kernel_init_for
from zoo.registry import ZooError

Adapter = Literal["linear", "mlp"]


class LateralAdapter(nn.Module):
  """What column k's layer i receives from the earlier columns' layer i-1 (the paper's a_i^(k)).

  'linear' (the paper's Eq. 1): sum_{j<k} U^(k:j) h^(j), one bias-free Dense `U_from_{j}` per earlier
  column j. 'mlp' (the paper's non-linear adapter, Eq. 2): U act(V [alpha_j h^(j)]_{j<k} + c): each earlier
  column's activations are multiplied by a learned scalar alpha_j (initialised to a small random value, to
  put inputs of different scales on one footing), concatenated, projected by V onto `hidden` units, and
  mapped by U to the layer's width; the projection keeps the lateral parameters per layer of the order of
  one column's, however many columns come before.
  """

  width: int
  adapter: Adapter = "linear"
  hidden: int = 0  # 'mlp': the projection's width (the paper's n_l: a column's layer width)
  activation: str = "relu"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, earlier: list[jax.Array]) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.adapter == "linear":
      # LeCun normal (variance 1/fan_in) per earlier column: the laterals start about as strong as the column.
      return sum(
        nn.Dense(self.width, use_bias=False, name=f"U_from_{j}", **kw)(h) for j, h in enumerate(earlier)
      )
    scaled = []
    for j, h in enumerate(earlier):
      alpha = self.param(f"alpha_from_{j}", nn.initializers.uniform(0.1), (), self.param_dtype)
      scaled.append(h * alpha.astype(h.dtype))
    v = nn.Dense(self.hidden, kernel_init=kernel_init_for(self.activation), name="V", **kw)(
      jnp.concatenate(scaled, axis=-1)
    )  # (B, hidden)
    return nn.Dense(self.width, use_bias=False, name="U", **kw)(get_activation(self.activation)(v))


class Column(nn.Module):
  """One task's MLP; layer i > 0 adds the adapter of the earlier columns' layer i-1 (the output layer too).

  h_i = act(W_i h_{i-1} + b_i + a_i), with h_0 = x; the input layer takes no lateral, since every column
  sees the same x and W_1 already maps it freely.
  """

  hidden_sizes: tuple[int, ...]
  num_classes: int
  activation: str = "relu"
  adapter: Adapter = "linear"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, x: jax.Array, earlier: tuple[tuple[jax.Array, ...], ...]
  ) -> tuple[list[jax.Array], jax.Array]:
    """x (B, D); earlier[j][i]: earlier column j's hidden layer i. Returns (hidden layers, logits (B, K))."""
    act = get_activation(self.activation)
    widths = (*self.hidden_sizes, self.num_classes)
    hiddens: list[jax.Array] = []
    h = x
    for i, width in enumerate(widths):
      is_output = i == len(self.hidden_sizes)
      init = nn.initializers.lecun_normal() if is_output else kernel_init_for(self.activation)
      z = nn.Dense(
        width, kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype, name=f"layer_{i}"
      )(h)
      if i > 0 and earlier:
        z = z + LateralAdapter(
          width,
          self.adapter,
          hidden=self.hidden_sizes[i - 1],
          activation=self.activation,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"lateral_{i}",
        )([column[i - 1] for column in earlier])
      if is_output:
        return hiddens, z
      h = act(z)  # (B, width)
      hiddens.append(h)
    raise AssertionError("unreachable")


class ProgressiveMLP(nn.Module):
  """`num_columns` MLP columns; column k takes lateral connections from all columns j < k.

  Dimensions: B batch, D input features (images (B, H, W, C) are flattened), C columns (tasks), K classes
  per column's head. Returns the logits of every column, (B, C, K) float32: column k's head answers task k.

  Column j's logits depend on columns <= j only, so adding columns never changes an earlier task's outputs.
  Freezing the earlier columns while column k learns (the paper's transfer without forgetting) is the
  trainer's part: zoo.train.continual differentiates and updates column k's parameters only. Parameters are
  named `column_{k}/layer_{i}` (the column's own Dense layers) and `column_{k}/lateral_{i}/...` (its
  adapters), so the parameters of a model with k columns are those of the model with k + 1 minus the last.
  """

  num_columns: int = 1
  hidden_sizes: tuple[int, ...] = (256, 256)
  num_classes: int = 2
  activation: str = "relu"
  adapter: Adapter = "linear"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    get_activation(self.activation)
    check_choice(self.adapter, get_args(Adapter), "adapter")
    if self.num_columns < 1:
      raise ZooError(f"ProgressiveMLP: num_columns must be at least 1, got {self.num_columns}")
    if not self.hidden_sizes or min(self.hidden_sizes) < 1 or self.num_classes < 1:
      raise ZooError(
        f"ProgressiveMLP: hidden_sizes must be one or more positive widths and num_classes positive; got "
        f"hidden_sizes={tuple(self.hidden_sizes)}, num_classes={self.num_classes}"
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # No dropout or normalisation: train and eval modes agree.
    x = x.reshape(x.shape[0], -1)  # (B, D)
    hiddens: list[tuple[jax.Array, ...]] = []
    logits = []
    for k in range(self.num_columns):
      column = Column(
        tuple(self.hidden_sizes),
        self.num_classes,
        self.activation,
        self.adapter,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f"column_{k}",
      )
      h, out = column(x, tuple(hiddens))  # A snapshot: the list grows after the call.
      hiddens.append(tuple(h))
      logits.append(out.astype(jnp.float32))
    return jnp.stack(logits, axis=1)  # (B, C, K)


def column_name(k: int) -> str:
  """The parameter subtree of column k."""
  return f"column_{k}"


@register_model(kind="continual")
def progressive_mlp(**kw) -> ProgressiveMLP:
  """Five columns of 784-256-256-2 for split-MNIST's five 2-way tasks, linear lateral adapters."""
  return ProgressiveMLP(**{**dict(num_columns=5, hidden_sizes=(256, 256), num_classes=2), **kw})


@register_model(kind="continual")
def progressive_mlp_tiny(**kw) -> ProgressiveMLP:
  """Three small columns with the non-linear adapters: the family's test variant."""
  return ProgressiveMLP(**{**dict(num_columns=3, hidden_sizes=(16, 8), num_classes=2, adapter="mlp"), **kw})
