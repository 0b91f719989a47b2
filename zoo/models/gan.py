"""Generative adversarial networks (Goodfellow et al. 2014) with MLP players; DCGAN (Radford et al. 2016)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.models import register_model
from zoo.models.blocks import ConvTranspose2x
from zoo.models.layers import check_choice, he_normal
from zoo.models.regularized_layers import check_rate
from zoo.registry import ZooError

NOISES = ("normal", "uniform")
OUTPUTS = ("tanh", "sigmoid")
LEAKY_SLOPE = 0.2  # Radford et al.'s LeakyReLU slope (the zoo's 'leaky_relu' activation has 0.01).

# --- pure functions: the players' noise and losses --------------------------------------------------------


def sample_latent(rng: jax.Array, batch_size: int, latent_dim: int, noise: str = "normal") -> jax.Array:
  """Generator inputs z (batch_size, latent_dim) float32: N(0, I) ('normal', Goodfellow et al.'s code's
  default) or U(-1, 1) ('uniform', DCGAN's)."""
  check_choice(noise, NOISES, "noise")
  shape = (batch_size, latent_dim)
  if noise == "uniform":
    return jax.random.uniform(rng, shape, jnp.float32, -1.0, 1.0)
  return jax.random.normal(rng, shape, jnp.float32)


def fixed_latent(batch_size: int, latent_dim: int, noise: str = "normal") -> jax.Array:
  """A deterministic z: row i drawn from `fold_in(key(0), i)`, so batch position i gets the same latent
  in any batch (what a GAN uses without a 'sample' stream; also a fixed grid to watch samples improve)."""
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(batch_size))
  return jax.vmap(lambda k: sample_latent(k, 1, latent_dim, noise)[0])(keys)


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """The discriminator's loss per example, -log D(x) - log(1 - D(G(z))) (Goodfellow et al. 2014, eq. 1),
  from logits: softplus(-real) + softplus(fake). (B,) float32."""
  return jax.nn.softplus(-real_logits.astype(jnp.float32)) + jax.nn.softplus(fake_logits.astype(jnp.float32))


def generator_loss(fake_logits: jax.Array) -> jax.Array:
  """The generator's non-saturating loss per example, -log D(G(z)) = softplus(-logit) (Goodfellow et al.
  2014, section 3: it has strong gradients early, when log(1 - D(G(z))) saturates). (B,) float32."""
  return jax.nn.softplus(-fake_logits.astype(jnp.float32))


# --- the adversarial pair ----------------------------------------------------------------------------------


class GAN(nn.Module):
  """A generator G (z -> images) and a discriminator D (images -> logits) in one module.

  Dimensions: B batch, Z `latent_dim`, (H, W, C) `image_shape`. Kind 'gan'. Subclasses define the
  players in `setup` as the submodules `generator` and `discriminator`, so each player has its own
  parameter (and, with batch norm, batch_stats) subtree: params["generator"], params["discriminator"],
  which a task updates with two optimisers.
  - `generate(z, train)` -> fake images (B, H, W, C) float32 in the output activation's range ([-1, 1]
    for tanh: real images for D must be scaled the same way, e.g. 2 x - 1 of [0, 1] inputs).
  - `discriminate(x, train)` -> real-vs-fake logits (B,) float32 (D(x) = sigmoid(logit)).
    Apply one player with `model.apply(variables, z, train, method="generate", mutable=["batch_stats"])`;
    the returned batch_stats hold both players' subtrees (the other unchanged).
  - `__call__(x, train)` (init, the registry tests) -> dict(fake=G(z), real_logits=D(x), fake_logits=
    D(G(z))), with z = `sample_latent` from the 'sample' rng stream, or without that stream the
    deterministic `fixed_latent` (not zeros: a zero z would give G's first layer no gradient, and a
    batch of equal z's nothing to batch-normalise). D sees the real and the fake batches separately, so
    in training its batch norm normalises each on its own statistics (as DCGAN's code does).
  Losses: `discriminator_loss(real_logits, fake_logits)`, `generator_loss(fake_logits)` per example.
  """

  latent_dim: int = 100
  noise: Literal["normal", "uniform"] = "normal"
  image_shape: tuple[int, ...] = (28, 28, 1)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    check_choice(self.noise, NOISES, "noise")
    if self.latent_dim < 1 or any(s < 1 for s in self.image_shape):
      raise ZooError(
        f"a GAN needs latent_dim >= 1 and a positive image_shape, got {self.latent_dim}, "
        f"{tuple(self.image_shape)}"
      )
    super().__post_init__()

  def generate(self, z: jax.Array, train: bool = False) -> jax.Array:
    """Images G(z), (B, H, W, C) float32, for latents z (B, Z)."""
    return self.generator(z, train=train).astype(jnp.float32)

  def discriminate(self, x: jax.Array, train: bool = False) -> jax.Array:
    """The logits (B,) float32 that images x (B, H, W, C) are real."""
    return self.discriminator(x, train=train).astype(jnp.float32)

  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    b = x.shape[0]
    if self.has_rng("sample"):
      z = sample_latent(self.make_rng("sample"), b, self.latent_dim, self.noise)
    else:
      z = fixed_latent(b, self.latent_dim, self.noise)
    fake = self.generate(z, train)
    real_logits, fake_logits = self.discriminate(x, train), self.discriminate(fake, train)
    return dict(fake=fake, real_logits=real_logits, fake_logits=fake_logits)


def symmetric_uniform(limit: float) -> Callable:
  """An initializer drawing U(-limit, limit) (pylearn2's IrregularUniform, as Goodfellow et al.'s code)."""

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -limit, limit)

  return init


def _output(x: jax.Array, output: str) -> jax.Array:
  return jnp.tanh(x) if output == "tanh" else jax.nn.sigmoid(x)


# --- MLP players (Goodfellow et al. 2014) -----------------------------------------------------------------


class MlpGenerator(nn.Module):
  """z (B, Z) -> [Dense -> ReLU] per `hidden_sizes` -> Dense H W C -> tanh or sigmoid -> (B, H, W, C)."""

  hidden_sizes: tuple[int, ...]
  image_shape: tuple[int, ...]
  output: str = "tanh"
  init_range: float | None = None  # kernels U(-r, r); None: He normal (the output layer LeCun normal)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    hidden_init = he_normal if self.init_range is None else symmetric_uniform(self.init_range)
    out_init = nn.linear.default_kernel_init if self.init_range is None else hidden_init
    for h in self.hidden_sizes:
      z = nn.relu(nn.Dense(h, kernel_init=hidden_init, **kw)(z))  # (B, h)
    x = nn.Dense(math.prod(self.image_shape), kernel_init=out_init, **kw)(z)  # (B, H W C)
    return _output(x, self.output).reshape(x.shape[0], *self.image_shape)


class MlpDiscriminator(nn.Module):
  """x (B, H, W, C) -> flatten -> dropout `input_dropout` -> [Dense -> LeakyReLU 0.2 (or maxout of
  `maxout_pieces`) -> dropout] per `hidden_sizes` -> Dense 1: logits (B,)."""

  hidden_sizes: tuple[int, ...]
  maxout_pieces: int = 0
  dropout: float = 0.0
  input_dropout: float = 0.0
  init_range: float | None = None  # kernels U(-r, r); None: He normal (the output layer LeCun normal)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    init = he_normal if self.init_range is None else symmetric_uniform(self.init_range)
    out_init = nn.linear.default_kernel_init if self.init_range is None else init
    kw = dict(kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.reshape(x.shape[0], -1)  # (B, H W C)
    x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
    for h in self.hidden_sizes:
      if self.maxout_pieces:
        # Maxout (Goodfellow et al. 2013): each unit is the max of `pieces` linear functions.
        y = nn.Dense(h * self.maxout_pieces, **kw)(x)  # (B, h pieces)
        x = jnp.max(y.reshape(y.shape[0], h, self.maxout_pieces), axis=-1)  # (B, h)
      else:
        x = nn.leaky_relu(nn.Dense(h, **kw)(x), LEAKY_SLOPE)  # (B, h)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(1, kernel_init=out_init, dtype=self.dtype, param_dtype=self.param_dtype)(x)[:, 0]  # (B,)


class MlpGAN(GAN):
  """Goodfellow et al.'s MNIST GAN (2014; the paper's code, github.com/goodfeli/adversarial, mnist.yaml):
  G: z of 100 -> 1200 ReLU -> 1200 ReLU -> 784; D: 784 -> 240 -> 240 -> 1, with dropout on D's inputs
  (0.2 on the image, 0.5 on the hidden layers; the code keeps them with probability 0.8 and 0.5).

  Defaults as there but for: G's output is tanh (images in [-1, 1]; `output='sigmoid'` is the paper's,
  for [0, 1]), and D's units are LeakyReLU 0.2 (the paper has maxout units of 5 pieces each:
  `maxout_pieces=5` restores them, 5x the hidden parameters); z ~ N(0, I) as the code's default noise.
  Kernels start as in the code: U(-0.05, 0.05) in G and U(-0.005, 0.005) in D (`generator_init_range`,
  `discriminator_init_range`; None gives He normal). He-initialised players collapsed here within a few
  hundred Adam steps (every sample the same image); the code's small ranges train.
  Outputs and methods as in GAN. 2,750,465 parameters at 28x28x1 (3,735,425 with maxout_pieces=5).
  """

  generator_sizes: tuple[int, ...] = (1200, 1200)
  discriminator_sizes: tuple[int, ...] = (240, 240)
  output: Literal["tanh", "sigmoid"] = "tanh"
  maxout_pieces: int = 0
  dropout: float = 0.5
  input_dropout: float = 0.2
  generator_init_range: float | None = 0.05
  discriminator_init_range: float | None = 0.005

  def __post_init__(self):
    check_choice(self.output, OUTPUTS, "output")
    check_rate(self.dropout, "mlp_gan dropout")
    check_rate(self.input_dropout, "mlp_gan input_dropout")
    if self.maxout_pieces < 0 or any(s < 1 for s in (*self.generator_sizes, *self.discriminator_sizes)):
      raise ZooError("mlp_gan: layer sizes must be at least 1 and maxout_pieces non-negative")
    super().__post_init__()

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.generator = MlpGenerator(
      tuple(self.generator_sizes), tuple(self.image_shape), self.output, self.generator_init_range, **kw
    )
    self.discriminator = MlpDiscriminator(
      tuple(self.discriminator_sizes),
      self.maxout_pieces,
      self.dropout,
      self.input_dropout,
      self.discriminator_init_range,
      **kw,
    )


# --- DCGAN (Radford et al. 2016) ----------------------------------------------------------------------------


def _dcgan_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
  # N(0, 0.02) (the paper's section 4), drawn as a matrix and reshaped: the same distribution, and XLA CPU
  # compiles the threefry draws of 4-D convolution kernels several times slower (see vit.py's _as_matrix).
  return 0.02 * jax.random.normal(key, (math.prod(shape[:-1]), shape[-1]), dtype).reshape(shape)


def _batch_norm(train: bool, dtype: Any, param_dtype: Any) -> nn.BatchNorm:
  return nn.BatchNorm(
    use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=param_dtype
  )


class DCGANGenerator(nn.Module):
  """z (B, Z) -> Dense to (H/2^S, W/2^S, features[0]) -> BN -> ReLU -> [ConvTranspose k x k stride 2 -> BN
  -> ReLU] per features[1:] -> ConvTranspose k x k stride 2 to C channels -> tanh: (B, H, W, C), S =
  len(features) upsamplings. The transposed convolutions are ConvTranspose2x (the same function and
  parameters as nn.ConvTranspose, several times faster on CPU)."""

  features: tuple[int, ...]
  image_shape: tuple[int, ...]
  kernel_size: int = 5
  output: str = "tanh"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    h, w, c = self.image_shape
    s, k = 2 ** len(self.features), self.kernel_size
    # No bias before batch norm: its offset replaces it (as DCGAN's code).
    kw = dict(use_bias=False, kernel_init=_dcgan_init, dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Dense(h // s * w // s * self.features[0], **kw)(z)  # "project and reshape"
    x = x.reshape(x.shape[0], h // s, w // s, self.features[0])  # (B, H/2^S, W/2^S, features[0])
    x = nn.relu(_batch_norm(train, self.dtype, self.param_dtype)(x))
    for f in self.features[1:]:
      x = ConvTranspose2x(f, k, **kw)(x)  # (B, 2h, 2w, f)
      x = nn.relu(_batch_norm(train, self.dtype, self.param_dtype)(x))
    x = ConvTranspose2x(c, k, **{**kw, "use_bias": True})(x)  # (B, H, W, C)
    return _output(x, self.output)  # (B, H, W, C)


class DCGANDiscriminator(nn.Module):
  """x (B, H, W, C) -> Conv k x k stride 2 (features[0]) -> LeakyReLU 0.2 -> [Conv k x k stride 2 -> BN ->
  LeakyReLU 0.2] per features[1:] -> flatten -> Dense 1: logits (B,)."""

  features: tuple[int, ...]
  kernel_size: int = 5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    k = self.kernel_size
    kw = dict(kernel_init=_dcgan_init, dtype=self.dtype, param_dtype=self.param_dtype)
    for i, f in enumerate(self.features):
      x = nn.Conv(f, (k, k), strides=2, padding="SAME", use_bias=i == 0, **kw)(x)  # (B, H/2, W/2, f)
      if i > 0:  # No batch norm on the input layer (the paper: it made training unstable).
        x = _batch_norm(train, self.dtype, self.param_dtype)(x)
      x = nn.leaky_relu(x, LEAKY_SLOPE)
    x = x.reshape(x.shape[0], -1)  # (B, H/2^S W/2^S features[-1])
    return nn.Dense(1, **kw)(x)[:, 0]  # (B,)


class DCGAN(GAN):
  """DCGAN (Radford et al. 2016): all-convolutional players with batch norm, no hidden Dense layers; G
  with ReLU and a tanh output, D with LeakyReLU 0.2; every weight from N(0, 0.02); z ~ U(-1, 1) of 100.

  Adapted to 28x28x1: the paper's 64x64 generator projects z to 4x4x1024 and upsamples four times;
  here z is projected to 7x7x`generator_features[0]` (128) and upsampled twice (7 -> 14 -> 28) by
  stride-2 5x5 transposed convolutions (64 channels, then C), the shapes of the authors' own MNIST
  model (Newmu/dcgan_code, mnist/train_cond_dcgan.py) without its class conditioning and its hidden
  Dense layers of 1024. D mirrors it: stride-2 5x5 convolutions of 64 and 128 channels (28 -> 14 -> 7),
  batch norm on all but the first, then the flattened features to one logit. H and W must be divisible
  by 2^len(generator_features). Outputs and methods as in GAN (the players' batch norm each keeps its own
  batch_stats subtree). 1,046,978 parameters at the defaults.
  """

  noise: Literal["normal", "uniform"] = "uniform"
  generator_features: tuple[int, ...] = (128, 64)
  discriminator_features: tuple[int, ...] = (64, 128)
  kernel_size: int = 5
  output: Literal["tanh", "sigmoid"] = "tanh"

  def __post_init__(self):
    check_choice(self.output, OUTPUTS, "output")
    sizes = (*self.generator_features, *self.discriminator_features, self.kernel_size)
    if not self.generator_features or not self.discriminator_features or any(s < 1 for s in sizes):
      raise ZooError("dcgan: generator_features and discriminator_features need positive widths")
    if len(self.image_shape) != 3:
      raise ZooError(f"dcgan makes images (H, W, C), not examples of shape {tuple(self.image_shape)}")
    s = 2 ** len(self.generator_features)
    if self.image_shape[0] % s or self.image_shape[1] % s:
      raise ZooError(
        f"dcgan: {len(self.generator_features)} upsamplings need H and W divisible by {s}, got "
        f"{tuple(self.image_shape)}"
      )
    super().__post_init__()

  def setup(self):
    kw = dict(kernel_size=self.kernel_size, dtype=self.dtype, param_dtype=self.param_dtype)
    self.generator = DCGANGenerator(
      tuple(self.generator_features), tuple(self.image_shape), output=self.output, **kw
    )
    self.discriminator = DCGANDiscriminator(tuple(self.discriminator_features), **kw)


def _make(cls: type[GAN], defaults: dict[str, Any], kw: dict[str, Any]) -> GAN:
  return cls(**{**defaults, **kw})


@register_model(kind="gan")
def mlp_gan(**kw) -> MlpGAN:
  return _make(MlpGAN, {}, kw)


@register_model(kind="gan")
def mlp_gan_tiny(**kw) -> MlpGAN:
  """A small MLP GAN for tests (one hidden layer of 32 per player, He-initialised: the code's tiny ranges
  would leave a few test steps barely moving it)."""
  sizes = dict(latent_dim=16, generator_sizes=(32,), discriminator_sizes=(32,))
  return _make(MlpGAN, dict(sizes, generator_init_range=None, discriminator_init_range=None), kw)


@register_model(kind="gan")
def dcgan(**kw) -> DCGAN:
  return _make(DCGAN, {}, kw)


@register_model(kind="gan")
def dcgan_tiny(**kw) -> DCGAN:
  return _make(DCGAN, dict(latent_dim=16, generator_features=(16, 8), discriminator_features=(8, 16)), kw)
