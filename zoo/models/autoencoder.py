"""Autoencoders: deep (Hinton & Salakhutdinov 2006), denoising (Vincent et al. 2008), sparse (Ng's
CS294A notes), convolutional; the variational autoencoder (Kingma & Welling 2014; beta-VAE, Higgins et al.
2017)."""

from __future__ import annotations

import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.models import register_model
from zoo.models.blocks import ConvTranspose2x
from zoo.models.layers import check_choice, get_activation, kernel_init_for
from zoo.registry import ZooError

NOISE_KINDS = ("none", "mask", "gaussian")


# --- pure functions (losses and sampling the tasks use) ----------------------------------------------------


def corrupt(x: jax.Array, kind: str, level: float, rng: jax.Array) -> jax.Array:
  """The denoising autoencoder's corruption of a batch (Vincent et al. 2008).

  kind 'mask': each input value is set to 0 independently with probability `level` (the paper zeroes a
  fixed fraction of each example's values; independent draws have the same expected fraction).
  'gaussian': isotropic additive noise of standard deviation `level`, in input units. 'none': x as is.
  """
  check_choice(kind, NOISE_KINDS, "noise_kind")
  if kind == "none" or level == 0.0:
    return x
  if kind == "mask":
    keep = jax.random.bernoulli(rng, 1.0 - level, x.shape)
    return jnp.where(keep, x, jnp.zeros((), x.dtype))
  return x + (level * jax.random.normal(rng, x.shape, jnp.float32)).astype(x.dtype)


def kl_sparsity(code_activations: jax.Array, rho: float | jax.Array, eps: float = 1e-6) -> jax.Array:
  """The sparse autoencoder's penalty (Ng's CS294A lecture notes "Sparse autoencoder", on sparsity):
  sum_j KL(rho || rho_hat_j) = sum_j rho log(rho / rho_hat_j) + (1 - rho) log((1 - rho) / (1 - rho_hat_j)),
  with rho_hat_j the mean activation of unit j over the batch (axis 0; every other axis is a unit).

  The activations must lie in (0, 1) (a sigmoid code: `code_activation='sigmoid'`); rho_hat is clipped
  to [eps, 1 - eps] so a dead or saturated unit gives a large, finite penalty. Returns a float32 scalar;
  the task multiplies it by its weight (the notes' beta).
  """
  if isinstance(rho, int | float) and not 0.0 < rho < 1.0:
    raise ZooError(f"the sparsity target rho must be in (0, 1), got {rho}")
  rho_hat = jnp.clip(jnp.mean(code_activations.astype(jnp.float32), axis=0), eps, 1.0 - eps)
  kl = rho * jnp.log(rho / rho_hat) + (1.0 - rho) * jnp.log((1.0 - rho) / (1.0 - rho_hat))
  return jnp.sum(kl)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, diag(exp(logvar))) || N(0, I)) per example, in closed form (Kingma & Welling 2014,
  appendix B): 0.5 * sum_k (exp(logvar_k) + mean_k^2 - 1 - logvar_k). (B, K) -> (B,) float32."""
  mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


def bernoulli_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """-log p(targets | logits) of independent Bernoulli pixels, summed per example: (B, ...) -> (B,).

  Binary cross-entropy from logits in its stable form softplus(l) - t l; targets in [0, 1] (binarised
  pixels, or grey levels as a continuous relaxation). float32.
  """
  logits, targets = logits.astype(jnp.float32), targets.astype(jnp.float32)
  per_value = jax.nn.softplus(logits) - targets * logits
  return jnp.sum(per_value.reshape(per_value.shape[0], -1), axis=-1)


def reparameterize(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
  """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I): a sample of the posterior that gradients pass
  through (Kingma & Welling 2014, section 2.4). float32, shaped like `mean`."""
  mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, jnp.float32)


# --- a fast stride-2 transposed convolution ------------------------------------------------------------


# --- encoder and decoder stacks -------------------------------------------------------------------------


def _check_positive(where: str, **values: int | tuple[int, ...]) -> None:
  for key, value in values.items():
    if any(v < 1 for v in (value if isinstance(value, tuple) else (value,))):
      raise ZooError(f"{where}: {key} must be at least 1, got {value}")


class ImageEncoder(nn.Module):
  """(B, H, W, C) -> [Conv k x k stride 2 SAME -> act] per `features` -> flatten -> [Dense -> act] per
  `hidden_sizes` -> Dense `out_features` (linear): (B, out_features). With no `features` any input
  (B, ...) is flattened, so vectors (B, D) work too."""

  features: tuple[int, ...]
  hidden_sizes: tuple[int, ...]
  out_features: int
  activation: str = "relu"
  kernel_size: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act, k = get_activation(self.activation), self.kernel_size
    kw = dict(kernel_init=kernel_init_for(self.activation), dtype=self.dtype, param_dtype=self.param_dtype)
    for f in self.features:
      x = act(nn.Conv(f, (k, k), strides=2, padding="SAME", **kw)(x))  # (B, H/2, W/2, f)
    x = x.reshape(x.shape[0], -1)  # (B, H' W' f)
    for h in self.hidden_sizes:
      x = act(nn.Dense(h, **kw)(x))  # (B, h)
    return nn.Dense(self.out_features, dtype=self.dtype, param_dtype=self.param_dtype)(x)


class ImageDecoder(nn.Module):
  """The mirror of an ImageEncoder with the same `features` and `hidden_sizes`: (B, K) -> [Dense -> act]
  per reversed `hidden_sizes` -> Dense to (H / 2^S, W / 2^S, features[-1]) -> act -> [ConvTranspose k x k
  stride 2 -> act] per reversed features[:-1] -> ConvTranspose to C channels (linear): (B, H, W, C) for
  S = len(features) stages. With no `features`: a linear Dense to prod(output_shape), reshaped."""

  features: tuple[int, ...]
  hidden_sizes: tuple[int, ...]
  output_shape: tuple[int, ...]
  activation: str = "relu"
  kernel_size: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    act, k = get_activation(self.activation), self.kernel_size
    kw = dict(kernel_init=kernel_init_for(self.activation), dtype=self.dtype, param_dtype=self.param_dtype)
    out_kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for h in reversed(self.hidden_sizes):
      z = act(nn.Dense(h, **kw)(z))  # (B, h)
    if not self.features:
      x = nn.Dense(math.prod(self.output_shape), **out_kw)(z)  # (B, prod(shape))
      return x.reshape(x.shape[0], *self.output_shape)
    h, w, c = _conv_image_shape(self.output_shape, len(self.features))
    s = 2 ** len(self.features)
    x = act(nn.Dense(h // s * w // s * self.features[-1], **kw)(z))
    x = x.reshape(x.shape[0], h // s, w // s, self.features[-1])  # (B, H/2^S, W/2^S, features[-1])
    for f in reversed(self.features[:-1]):
      x = act(ConvTranspose2x(f, k, **kw)(x))  # (B, 2h, 2w, f)
    return ConvTranspose2x(c, k, **out_kw)(x)  # (B, H, W, C)


def _conv_image_shape(shape: tuple[int, ...], stages: int) -> tuple[int, int, int]:
  if len(shape) != 3:
    raise ZooError(f"a convolutional autoencoder needs images (H, W, C), got examples of shape {shape}")
  h, w, c = shape
  s = 2**stages
  if h % s or w % s:
    raise ZooError(
      f"a convolutional autoencoder with {stages} stride-2 stages needs H and W divisible by {s}, "
      f"got {h}x{w} (use fewer `features`)"
    )
  return h, w, c


# --- autoencoders ----------------------------------------------------------------------------------------


class DenseAutoencoder(nn.Module):
  """A deep autoencoder of Dense layers (Hinton & Salakhutdinov 2006): flatten -> [Dense -> act] per
  `hidden_sizes` -> Dense `code_size` -> code activation -> the mirrored decoder -> reshape.

  Dimensions: B batch, (H, W, C) or (D,) an example, K = `code_size`. Kind 'autoencoder'. Output:
  dict(reconstruction=float32 (B, *example shape), code=float32 (B, K)).
  - `reconstruction` is the decoder's last, linear layer, never squashed: read it as Bernoulli logits
    (`bernoulli_nll(reconstruction, x)`, `sigmoid` to view it) when inputs are scaled to [0, 1] (the
    'scale' normalisation), or as the reconstructed value (squared error) for standardised inputs.
  - `code` is after `code_activation` (the paper's code units are linear): a sparse autoencoder takes
    'sigmoid' and its task adds `kl_sparsity(code, rho)` (Ng's notes).
  - Denoising (Vincent et al. 2008): with `noise_kind` 'mask' or 'gaussian', the input is corrupted
    (`corrupt`, `noise_level`) in training when the 'sample' rng stream is present; never in
    evaluation or without that stream (then the model is deterministic). The task compares the
    reconstruction with the clean input.
  The paper's MNIST network is 784-1000-500-250-30, logistic units, pre-trained as stacked RBMs; here
  `activation` (ReLU by default) replaces the logistic units, the network is trained directly (no RBM
  pre-training), and the code has 20 units by default (`code_size=30` for the paper's).
  """

  hidden_sizes: tuple[int, ...] = (1000, 500, 250)
  code_size: int = 20
  activation: str = "relu"
  code_activation: str = "linear"
  noise_kind: Literal["none", "mask", "gaussian"] = "none"
  noise_level: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    _check_autoencoder(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    return _autoencode(self, (), 3, x, train)


class ConvAutoencoder(nn.Module):
  """A convolutional autoencoder: [Conv k x k stride 2 -> act] per `features` -> flatten -> [Dense -> act]
  per `hidden_sizes` -> Dense `code_size` -> code activation -> the mirror image, with transposed
  convolutions (stride 2) in place of the convolutions; the last one is linear.

  Dimensions: B batch, H, W, C image (H and W divisible by 2^len(features): 28x28 with two stages goes
  28 -> 14 -> 7 and back), K = `code_size`. Kind 'autoencoder'; outputs, the code activation and
  denoising as in DenseAutoencoder: dict(reconstruction=float32 (B, H, W, C) linear outputs (Bernoulli
  logits for [0, 1] inputs, values for standardised ones), code=float32 (B, K)).
  """

  features: tuple[int, ...] = (32, 64)
  kernel_size: int = 3
  hidden_sizes: tuple[int, ...] = ()
  code_size: int = 20
  activation: str = "relu"
  code_activation: str = "linear"
  noise_kind: Literal["none", "mask", "gaussian"] = "none"
  noise_level: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    _check_autoencoder(self)
    _check_positive("conv autoencoder", features=tuple(self.features), kernel_size=self.kernel_size)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    return _autoencode(self, tuple(self.features), self.kernel_size, x, train)


def _check_autoencoder(m: DenseAutoencoder | ConvAutoencoder) -> None:
  get_activation(m.activation)
  get_activation(m.code_activation)
  check_choice(m.noise_kind, NOISE_KINDS, "noise_kind")
  _check_positive("autoencoder", code_size=m.code_size, hidden_sizes=tuple(m.hidden_sizes))
  if m.noise_kind == "mask" and not 0.0 <= m.noise_level < 1.0:
    raise ZooError(f"masking noise_level is the fraction of inputs zeroed: in [0, 1), got {m.noise_level}")
  if m.noise_level < 0.0:
    raise ZooError(f"noise_level must be non-negative, got {m.noise_level}")


def _autoencode(
  m: DenseAutoencoder | ConvAutoencoder, features: tuple[int, ...], k: int, x: jax.Array, train: bool
) -> dict[str, jax.Array]:
  # Called inside the module's compact __call__, so the stacks built here are its submodules.
  kw = dict(activation=m.activation, kernel_size=k, dtype=m.dtype, param_dtype=m.param_dtype)
  if train and m.noise_kind != "none" and m.has_rng("sample"):
    x = corrupt(x, m.noise_kind, m.noise_level, m.make_rng("sample"))
  if features:
    _conv_image_shape(x.shape[1:], len(features))  # A clear error before any shape mismatch.
  code = ImageEncoder(features, tuple(m.hidden_sizes), m.code_size, name="encoder", **kw)(x)
  code = get_activation(m.code_activation)(code)  # (B, K)
  decoder = ImageDecoder(features, tuple(m.hidden_sizes), tuple(x.shape[1:]), name="decoder", **kw)
  return dict(reconstruction=decoder(code).astype(jnp.float32), code=code.astype(jnp.float32))


# --- the variational autoencoder ------------------------------------------------------------------------


class VAE(nn.Module):
  """The variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes"): a Gaussian
  encoder q(z|x) = N(mean, diag(exp(logvar))) and a Bernoulli decoder p(x|z), both MLPs.

  Dimensions: B batch, (H, W, C) = `image_shape`, K = `latent_dim`. Kind 'vae'.
  - `__call__(x)` -> dict(logits=float32 (B, H, W, C) Bernoulli logits of p(x|z), mean=(B, K),
    logvar=(B, K), z=(B, K)), all float32. z = mean + exp(logvar / 2) * eps with eps from the 'sample'
    rng stream (`reparameterize`), in training and evaluation alike; without that stream z is the
    posterior mean and the model is deterministic.
  - `encode(x)` -> (mean, logvar); `decode(z)` -> logits (B, H, W, C), e.g. samples of the prior:
    `sigmoid(model.apply(variables, z, method="decode"))` with z ~ N(0, I).
  - The task's loss, the negative ELBO per example, is `bernoulli_nll(logits, x) + beta * gaussian_kl(mean,
    logvar)` with inputs scaled to [0, 1]; beta = 1 is the paper's, beta > 1 the beta-VAE (Higgins et
    al. 2017).
  The paper's MNIST model (section 5, appendix C) has one hidden layer of 500 tanh units in the encoder and
  in the decoder, the defaults here; its latent sizes ran from 3 to 200 (20 here). Its N(0, 0.01) weight
  initialisation is replaced by the activation's usual one (Glorot for tanh).
  """

  latent_dim: int = 20
  hidden_sizes: tuple[int, ...] = (500,)
  activation: str = "tanh"
  image_shape: tuple[int, ...] = (28, 28, 1)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    get_activation(self.activation)
    _check_positive("vae", latent_dim=self.latent_dim, hidden_sizes=tuple(self.hidden_sizes))
    _check_positive("vae", image_shape=tuple(self.image_shape))
    if self._features():
      _conv_image_shape(tuple(self.image_shape), len(self._features()))
    super().__post_init__()

  def _features(self) -> tuple[int, ...]:
    return ()

  def _kernel_size(self) -> int:
    return 3

  def setup(self):
    kw = dict(activation=self.activation, kernel_size=self._kernel_size())
    kw.update(dtype=self.dtype, param_dtype=self.param_dtype)
    hidden = tuple(self.hidden_sizes)
    # One Dense of 2K outputs split in two is the paper's two linear heads for the mean and log-variance.
    self.encoder = ImageEncoder(self._features(), hidden, 2 * self.latent_dim, **kw)
    self.decoder = ImageDecoder(self._features(), hidden, tuple(self.image_shape), **kw)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The posterior's mean and log-variance, each (B, K) float32."""
    if tuple(x.shape[1:]) != tuple(self.image_shape):
      raise ZooError(f"this VAE is built for examples of shape {tuple(self.image_shape)}, got {x.shape[1:]}")
    mean, logvar = jnp.split(self.encoder(x).astype(jnp.float32), 2, axis=-1)
    return mean, logvar

  def decode(self, z: jax.Array) -> jax.Array:
    """Bernoulli logits (B, H, W, C) float32 of p(x | z) for latents z (B, K)."""
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    del train  # No dropout or batch norm: only the 'sample' stream makes the forward pass random.
    mean, logvar = self.encode(x)
    z = reparameterize(mean, logvar, self.make_rng("sample")) if self.has_rng("sample") else mean
    return dict(logits=self.decode(z), mean=mean, logvar=logvar, z=z)


class ConvVAE(VAE):
  """A convolutional VAE: the encoder and decoder of ConvAutoencoder ([Conv stride 2 -> act] per
  `features`, optional Dense `hidden_sizes`; the mirror with transposed convolutions), the Gaussian
  latent and Bernoulli logits of VAE, with its outputs and methods (dict(logits, mean, logvar, z),
  `encode`, `decode`). H and W of `image_shape` must be divisible by 2^len(features)."""

  features: tuple[int, ...] = (32, 64)
  kernel_size: int = 3
  hidden_sizes: tuple[int, ...] = ()
  activation: str = "relu"

  def __post_init__(self):
    _check_positive("conv vae", features=tuple(self.features), kernel_size=self.kernel_size)
    super().__post_init__()

  def _features(self) -> tuple[int, ...]:
    return tuple(self.features)

  def _kernel_size(self) -> int:
    return self.kernel_size


def _make(cls: type[nn.Module], defaults: dict[str, Any], kw: dict[str, Any]) -> nn.Module:
  return cls(**{**defaults, **kw})


@register_model(kind="autoencoder")
def dense_autoencoder(**kw) -> DenseAutoencoder:
  """Hinton & Salakhutdinov's MNIST encoder sizes (1000, 500, 250), ReLU units, a 20-unit linear code."""
  return _make(DenseAutoencoder, {}, kw)


@register_model(kind="autoencoder")
def dense_autoencoder_tiny(**kw) -> DenseAutoencoder:
  return _make(DenseAutoencoder, dict(hidden_sizes=(32,), code_size=8), kw)


@register_model(kind="autoencoder")
def conv_autoencoder(**kw) -> ConvAutoencoder:
  """Two stride-2 stages of 32 and 64 channels (28 -> 14 -> 7), a 20-unit code."""
  return _make(ConvAutoencoder, {}, kw)


@register_model(kind="autoencoder")
def conv_autoencoder_tiny(**kw) -> ConvAutoencoder:
  return _make(ConvAutoencoder, dict(features=(8, 16), code_size=8), kw)


@register_model(kind="vae")
def vae_mlp(**kw) -> VAE:
  """Kingma & Welling's MNIST VAE: 500 tanh hidden units each side, a 20-dimensional latent."""
  return _make(VAE, {}, kw)


@register_model(kind="vae")
def vae_mlp_tiny(**kw) -> VAE:
  return _make(VAE, dict(hidden_sizes=(32,), latent_dim=4), kw)


@register_model(kind="vae")
def vae_conv(**kw) -> ConvVAE:
  """Two stride-2 stages of 32 and 64 channels (28 -> 14 -> 7), a 20-dimensional latent."""
  return _make(ConvVAE, {}, kw)


@register_model(kind="vae")
def vae_conv_tiny(**kw) -> ConvVAE:
  return _make(ConvVAE, dict(features=(8, 16), latent_dim=4), kw)
