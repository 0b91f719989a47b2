"""Regularising layers: DropConnect (Wan et al. 2013), alpha dropout (Klambauer et al. 2017), weight norm
(Salimans & Kingma 2016), spectral norm (Miyato et al. 2018), and a normalisation layer chosen by name.

Dimensions: B batch, I input features, O output features (`features`).

Every module follows the zoo's `__call__(x, *, train: bool = False)`. Randomness comes from the 'dropout'
rng stream in training, as for `nn.Dropout`; SpectralNormDense keeps its power-iteration state in the
'spectral' collection, which the train step makes mutable (like 'batch_stats') and eval only reads:

  y, updates = model.apply({'params': p, 'spectral': s}, x, train=True, mutable=['spectral'],
                           rngs={'dropout': rng})
  y = model.apply({'params': p, 'spectral': s}, x)  # eval: deterministic, nothing updated

A model uses them as it would nn.Dense / nn.Dropout / nn.BatchNorm, e.g.

  x = DropConnectDense(256, rate=0.5)(x, train=train)
  x = AlphaDropout(0.05)(jax.nn.selu(x), train=train)
  x = normalization_layer(self.norm, train=train)(x)   # 'batch' | 'layer' | 'group' | 'none'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.registry import ZooError

# SELU's constants (Klambauer et al. 2017, eq. 14): selu(x) = lambda * (x if x > 0 else alpha * (e^x - 1)).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_LAMBDA = 1.0507009873554804934193349852946
# SELU's negative saturation value, lim_{x -> -inf} selu(x): the value alpha dropout sets dropped units to.
ALPHA_PRIME = -SELU_LAMBDA * SELU_ALPHA


def check_rate(rate: float, what: str) -> None:
  """Raises ZooError unless 0 <= rate < 1 (a rate of 1 would drop everything)."""
  if not 0.0 <= rate < 1.0:
    raise ZooError(f"{what} rate must be in [0, 1), got {rate}")


class DropConnectDense(nn.Module):
  """A Dense layer whose kernel entries are each dropped with probability `rate` in training.

  DropConnect (Wan et al. 2013) drops weights rather than activations. Kept weights are scaled by
  1/(1 - rate) (inverted scaling, as `nn.Dropout`), so the expected output in training equals the eval
  output, which is the plain Dense layer; Wan et al. instead approximate the eval output's distribution by
  a Gaussian and sample from it, a refinement left out here. One mask is drawn per call and shared by the
  batch: the paper's per-example masks would need a (B, I, O) tensor. The bias is never dropped.
  """

  features: int
  rate: float = 0.5
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    check_rate(self.rate, "DropConnect")
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)  # (I, O)
    if train and self.rate > 0:
      keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.rate, kernel.shape)
      kernel = jnp.where(keep, kernel / (1.0 - self.rate), jnp.zeros_like(kernel))
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jnp.dot(x, kernel)  # (B, O)
    return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,)) if bias is not None else y


def alpha_dropout(x: jax.Array, rate: float, rng: jax.Array | None, deterministic: bool) -> jax.Array:
  """Alpha dropout (Klambauer et al. 2017, section 'New dropout technique') for SELU networks.

  Dropped units are set to alpha' = -lambda * alpha (about -1.7581, SELU's saturation value) instead of 0,
  then everything goes through a * x + b with a = ((1 - rate)(1 + rate * alpha'^2))^(-1/2) and
  b = -a * alpha' * rate, which keeps mean 0 and variance 1 for inputs of mean 0 and variance 1 (so the
  self-normalising fixed point survives dropout, which plain dropout breaks). Identity when
  `deterministic` or rate == 0; rng is then not needed.
  """
  check_rate(rate, "alpha dropout")
  if deterministic or rate == 0:
    return x
  if rng is None:
    raise ValueError("alpha_dropout needs an rng when not deterministic")
  a = ((1.0 - rate) * (1.0 + rate * ALPHA_PRIME**2)) ** -0.5
  b = -a * ALPHA_PRIME * rate
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return (a * jnp.where(keep, x, jnp.asarray(ALPHA_PRIME, x.dtype)) + b).astype(x.dtype)


class AlphaDropout(nn.Module):
  """Alpha dropout as a module: `AlphaDropout(rate)(x, train=train)`; uses the 'dropout' rng stream."""

  rate: float = 0.05

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    deterministic = not train or self.rate == 0
    rng = None if deterministic else self.make_rng("dropout")
    return alpha_dropout(x, self.rate, rng, deterministic)


def _inner_dense(layer: WeightNormDense | SpectralNormDense) -> DropConnectDense:
  # Named 'Dense_0' whatever the rate, so the parameter tree does not depend on `dropconnect`; at rate 0
  # DropConnectDense is exactly nn.Dense. The wrapper normalises its kernel, then it drops entries of the
  # normalised kernel, so DropConnect's noise is on the weights the layer applies.
  return DropConnectDense(
    layer.features,
    rate=layer.dropconnect,
    use_bias=layer.use_bias,
    dtype=layer.dtype,
    param_dtype=layer.param_dtype,
    kernel_init=layer.kernel_init,
    name="Dense_0",
  )


class WeightNormDense(nn.Module):
  """Dense with the weight-norm reparametrisation w = g * v / ||v|| per output unit (Salimans & Kingma 2016).

  Built on `flax.linen.WeightNorm`: params are the direction v ('Dense_0/kernel', (I, O)), the bias, and
  the gains g ('WeightNorm_0/Dense_0/kernel/scale', (O,), initialised to 1, so every unit starts with unit
  norm). The paper's data-dependent initialisation of g and the bias is left out. `dropconnect` > 0 drops
  entries of w in training (DropConnectDense's rule).
  """

  features: int
  use_bias: bool = True
  dropconnect: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    # No dtype for the wrapper: it would store the kernel in it at init (flax writes the mapped kernel back);
    # the inner layer computes in self.dtype anyway.
    norm = nn.WeightNorm(_inner_dense(self), param_dtype=self.param_dtype)
    return norm(x, train=train)


class SpectralNormDense(nn.Module):
  """Dense with kernel W / sigma(W), sigma the largest singular value (Miyato et al. 2018).

  Built on `flax.linen.SpectralNorm`. sigma comes from `n_steps` power iterations per call started from
  the stored vector u (collection 'spectral'); in training u (and sigma) are written back, so the estimate
  sharpens over the run at one iteration per step, as in the paper. In eval nothing is written, and the
  same stored u gives the same output every call. `dropconnect` > 0 drops entries of W / sigma in training
  (DropConnectDense's rule); sigma is that of the whole kernel, not of a dropped one.
  """

  features: int
  n_steps: int = 1
  use_bias: bool = True
  dropconnect: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    norm = nn.SpectralNorm(  # No dtype, as in WeightNormDense.
      _inner_dense(self), n_steps=self.n_steps, param_dtype=self.param_dtype, collection_name="spectral"
    )
    # update_stats only in training, and only when the caller made 'spectral' mutable.
    return norm(x, train=train, update_stats=train and self.is_mutable_collection("spectral"))


NORMALIZATIONS = ("batch", "layer", "group", "none")


def normalization_layer(
  name: str,
  *,
  train: bool = False,
  momentum: float = 0.9,
  epsilon: float = 1e-5,
  num_groups: int = 32,
  layer_axes: int | tuple[int, ...] = -1,
  dtype: Any = None,
  param_dtype: Any = jnp.float32,
) -> Callable[[jax.Array], jax.Array]:
  """The normalisation a model names: 'batch' | 'layer' | 'group' | 'none', as a callable on x.

  Call it inside a compact method (it creates a submodule there):
  `x = normalization_layer(self.norm, train=train)(x)`. 'batch' uses batch statistics and updates the
  running averages in training, the running averages in eval (Ioffe & Szegedy 2015); 'layer' normalises
  over `layer_axes` (Ba et al. 2016): -1, the features, after a dense layer; (-3, -2, -1) after a
  convolution, all of a layer's (H, W, C) units as in the paper, with a scale and offset per channel
  either way; 'group' over groups of channels (Wu & He 2018), `num_groups` of them, which must divide the
  channel count (see `resolve_num_groups`); 'none' is the identity.
  """
  kw = dict(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype)
  if name == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, **kw)
  if name == "layer":
    return nn.LayerNorm(reduction_axes=layer_axes, feature_axes=-1, **kw)
  if name == "group":
    return nn.GroupNorm(num_groups=num_groups, **kw)
  if name == "none":
    return lambda x: x
  raise ZooError(f"unknown normalization {name!r}; choose one of {', '.join(NORMALIZATIONS)}")


MAX_GROUPS = 32  # Wu & He's (2018) default group count.


def resolve_num_groups(
  num_groups: int | None, *, conv_widths: Sequence[int] = (), dense_widths: Sequence[int] = (), where: str
) -> int:
  """The group count GroupNorm uses for layers of these widths (channels), checked; ZooError otherwise.

  Every width must be a multiple of the count. A dense layer's output has no spatial axes, so a group
  there needs at least 2 features: one feature alone normalises to a constant. None picks the largest
  count up to MAX_GROUPS that leaves every layer at least 2 channels per group (a convolution could take
  groups of 1, instance norm, but that is no default). `where` names the model and the fields that set
  the widths, for the message.
  """
  widths = (*conv_widths, *dense_widths)
  if not widths:  # Nothing is normalised.
    return num_groups or 1
  if num_groups is None:
    for g in range(MAX_GROUPS, 1, -1):
      if all(w % g == 0 and w // g >= 2 for w in widths):
        return g
    raise ZooError(
      f"{where}: norm='group' needs a group count that divides every normalised width, and none of "
      f"2..{MAX_GROUPS} does so with at least 2 channels per group; set num_groups (1 is layer norm) "
      "or change the widths"
    )
  bad = [w for w in conv_widths if num_groups < 1 or w % num_groups]
  bad += [w for w in dense_widths if num_groups < 1 or w % num_groups or w // num_groups < 2]
  if bad:
    raise ZooError(
      f"{where}: norm='group' with num_groups={num_groups} does not fit width(s) {bad}; num_groups must "
      "divide every normalised width, and leave at least 2 features per group after a dense layer"
    )
  return num_groups
