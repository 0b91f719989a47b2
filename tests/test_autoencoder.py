"""Tests of the autoencoders and the VAE: the loss functions against NumPy, denoising and sampling
semantics, and a few training steps of the small variants."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo.models import create_model, model_spec
from zoo.models.autoencoder import (
  ConvTranspose2x,
  bernoulli_nll,
  corrupt,
  gaussian_kl,
  kl_sparsity,
  reparameterize,
)
from zoo.registry import ZooError

AUTOENCODERS = ["dense_autoencoder", "dense_autoencoder_tiny", "conv_autoencoder", "conv_autoencoder_tiny"]
VAES = ["vae_mlp", "vae_mlp_tiny", "vae_conv", "vae_conv_tiny"]


def toy_images(n: int = 16, seed: int = 0) -> jax.Array:
  """Binary 28x28x1 images: four random templates of 4x4 blocks, pixels flipped with probability 0.05."""
  rng = np.random.default_rng(seed)
  coarse = rng.random((4, 7, 7, 1)) < 0.3
  templates = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)  # (4, 28, 28, 1)
  flips = rng.random((n, 28, 28, 1)) < 0.05
  return jnp.asarray(templates[np.arange(n) % 4] ^ flips, jnp.float32)


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------------
# Shapes and registration.


@pytest.mark.parametrize("name", AUTOENCODERS + VAES)
def test_outputs_of_every_variant(name):
  model = create_model(name)
  x = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  out = jax.eval_shape(model.apply, variables, x)
  assert model_spec(name).kind == ("vae" if name.startswith("vae") else "autoencoder")
  k = model.latent_dim if name.startswith("vae") else model.code_size
  expected = (
    {"logits": (3, 28, 28, 1), "mean": (3, k), "logvar": (3, k), "z": (3, k)}
    if name.startswith("vae")
    else {"reconstruction": (3, 28, 28, 1), "code": (3, k)}
  )
  assert {key: v.shape for key, v in out.items()} == expected
  assert {v.dtype for v in out.values()} == {jnp.dtype(jnp.float32)}
  assert set(variables) == {"params"}


def test_paper_sizes():
  # Kingma & Welling's MNIST VAE: 784 -> 500 -> (20, 20); 20 -> 500 -> 784.
  vae = create_model("vae_mlp")
  variables = jax.eval_shape(lambda: vae.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
  assert count(variables) == (784 * 500 + 500) + (500 * 40 + 40) + (20 * 500 + 500) + (500 * 784 + 784)
  # Hinton & Salakhutdinov's 784-1000-500-250-30 with code_size=30, mirrored.
  ae = create_model("dense_autoencoder", code_size=30)
  variables = jax.eval_shape(lambda: ae.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
  sizes = [784, 1000, 500, 250, 30]
  layers = list(zip(sizes, sizes[1:], strict=False))
  assert count(variables) == 2 * sum(i * o for i, o in layers) + sum(o + i for i, o in layers)


def test_dense_autoencoder_takes_any_example_shape():
  model = create_model("dense_autoencoder_tiny")
  for shape in [(2, 10), (2, 8, 8, 3)]:
    out = jax.eval_shape(lambda x, m=model: m.init_with_output(jax.random.key(0), x)[0], jnp.zeros(shape))
    assert out["reconstruction"].shape == shape


def test_bad_shapes_and_fields_raise():
  x = jnp.zeros((1, 28, 28, 1))
  with pytest.raises(ZooError, match="divisible by 8"):
    create_model("conv_autoencoder", features=(8, 8, 8)).init(jax.random.key(0), x)
  with pytest.raises(ZooError, match="divisible by 8"):
    create_model("vae_conv", features=(8, 8, 8))
  with pytest.raises(ZooError, match="shape"):
    create_model("vae_mlp_tiny").init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(ZooError, match="noise_level"):
    create_model("dense_autoencoder", noise_kind="mask", noise_level=1.0)
  with pytest.raises(ZooError, match="noise_kind"):
    create_model("dense_autoencoder", noise_kind="salt")
  with pytest.raises(ZooError, match="rho"):
    kl_sparsity(jnp.full((2, 3), 0.5), 1.5)


# ---------------------------------------------------------------------------------------------------
# The pure functions against NumPy.


def test_gaussian_kl_closed_form_and_monte_carlo():
  rng = np.random.default_rng(0)
  mean = rng.normal(0, 1, (3, 4))
  logvar = rng.normal(0, 0.5, (3, 4))
  ours = np.asarray(gaussian_kl(jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32)))
  # Exact: KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2) / 2 - 1/2 per dimension, summed.
  var = np.exp(logvar)
  exact = np.sum(-0.5 * logvar + 0.5 * (var + mean**2) - 0.5, axis=-1)
  np.testing.assert_allclose(ours, exact, rtol=1e-5)
  # Monte Carlo: E_q[log q(z) - log p(z)] with z ~ q, 200k samples.
  n = 200_000
  z = mean + np.sqrt(var) * rng.normal(0, 1, (n, 3, 4))
  log_q = -0.5 * (np.log(2 * np.pi) + logvar + (z - mean) ** 2 / var)
  log_p = -0.5 * (np.log(2 * np.pi) + z**2)
  estimate = np.mean(np.sum(log_q - log_p, axis=-1), axis=0)
  np.testing.assert_allclose(ours, estimate, atol=0.03)
  assert ours.shape == (3,) and np.all(ours > 0)
  np.testing.assert_allclose(gaussian_kl(jnp.zeros((2, 5)), jnp.zeros((2, 5))), 0.0)


def test_bernoulli_nll_equals_binary_cross_entropy():
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 3, (2, 4, 4, 1))
  targets = rng.random((2, 4, 4, 1))  # grey levels, not only 0 and 1
  p = 1 / (1 + np.exp(-logits))
  expected = -np.sum(targets * np.log(p) + (1 - targets) * np.log(1 - p), axis=(1, 2, 3))
  ours = bernoulli_nll(jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32))
  np.testing.assert_allclose(ours, expected, rtol=1e-5)
  # Stable at extreme logits: log(1 + e^100) = 100, not inf.
  extreme = bernoulli_nll(jnp.array([[100.0, -100.0]]), jnp.array([[0.0, 1.0]]))
  np.testing.assert_allclose(extreme, [200.0], rtol=1e-6)


def test_kl_sparsity_equals_the_notes_formula():
  rng = np.random.default_rng(2)
  acts = rng.uniform(0.01, 0.99, (8, 5))
  rho = 0.05
  rho_hat = acts.mean(axis=0)
  expected = np.sum(rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat)))
  np.testing.assert_allclose(kl_sparsity(jnp.asarray(acts, jnp.float32), rho), expected, rtol=1e-5)
  # Zero exactly when every unit's mean activation is rho; finite for dead units.
  np.testing.assert_allclose(kl_sparsity(jnp.full((4, 3), 0.2), 0.2), 0.0, atol=1e-6)
  assert np.isfinite(float(kl_sparsity(jnp.zeros((4, 3)), 0.2)))


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_conv_transpose_2x_equals_flax_conv_transpose(k):
  x = jax.random.normal(jax.random.key(k), (2, 5, 4, 3))  # odd and even sizes
  flax_layer = nn.ConvTranspose(4, (k, k), strides=(2, 2), padding="SAME")
  variables = flax_layer.init(jax.random.key(0), x)
  variables = jax.tree.map(lambda a: a + 0.1, variables)  # a non-zero bias too

  @jax.jit
  def value_and_grads(variables, x):
    return [
      jax.value_and_grad(lambda v, x, m=m: jnp.sum(jnp.sin(m.apply(v, x))), argnums=(0, 1))(variables, x)
      for m in (flax_layer, ConvTranspose2x(4, k))
    ]

  (ref, ref_grads), (ours, our_grads) = value_and_grads(variables, x)  # same parameters, loaded either way
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), our_grads, ref_grads)
  assert jax.eval_shape(ConvTranspose2x(4, k).apply, variables, x).shape == (2, 10, 8, 4)


def test_corruption():
  x = jnp.ones((16, 28, 28, 1))
  masked = jax.jit(corrupt, static_argnums=(1, 2))(x, "mask", 0.3, jax.random.key(0))
  assert set(np.unique(masked)) <= {0.0, 1.0}
  np.testing.assert_allclose(float(jnp.mean(masked == 0)), 0.3, atol=0.02)
  noisy = jax.jit(corrupt, static_argnums=(1, 2))(x, "gaussian", 0.5, jax.random.key(0))
  np.testing.assert_allclose(float(jnp.std(noisy - x)), 0.5, rtol=0.05)
  np.testing.assert_array_equal(corrupt(x, "none", 0.5, jax.random.key(0)), x)


def test_reparameterize_moments():
  mean, logvar = jnp.array([[1.0, -2.0]]), jnp.array([[0.0, np.log(0.25)]])
  keys = jax.random.split(jax.random.key(0), 20_000)
  z = jax.vmap(lambda k: reparameterize(mean, logvar, k)[0])(keys)  # (N, 2)
  np.testing.assert_allclose(jnp.mean(z, axis=0), [1.0, -2.0], atol=0.02)
  np.testing.assert_allclose(jnp.std(z, axis=0), [1.0, 0.5], rtol=0.02)


# ---------------------------------------------------------------------------------------------------
# The models' randomness: only with the 'sample' stream.


def test_denoising_only_in_training_with_the_sample_stream():
  model = create_model("conv_autoencoder_tiny", noise_kind="mask", noise_level=0.5)
  x = toy_images(4)
  variables = model.init(jax.random.key(0), x)

  @jax.jit
  def apply(x, rngs):  # (eval, train) reconstructions
    return tuple(model.apply(variables, x, train=t, rngs=rngs)["reconstruction"] for t in (False, True))

  clean, no_stream = apply(x, {})
  np.testing.assert_array_equal(no_stream, clean)  # no 'sample' stream: no noise
  evaluation, noisy = apply(x, {"sample": jax.random.key(1)})
  np.testing.assert_array_equal(evaluation, clean)
  assert not np.allclose(clean, noisy)


def test_vae_uses_the_posterior_mean_without_the_sample_stream():
  model = create_model("vae_mlp_tiny")
  x = toy_images(64)
  variables = model.init(jax.random.key(0), x)
  out = model.apply(variables, x, train=True)
  np.testing.assert_array_equal(out["z"], out["mean"])
  mean, logvar = model.apply(variables, x, method="encode")
  np.testing.assert_array_equal(mean, out["mean"])
  np.testing.assert_array_equal(logvar, out["logvar"])
  np.testing.assert_allclose(model.apply(variables, out["z"], method="decode"), out["logits"], atol=1e-6)
  sampled = model.apply(variables, x, rngs={"sample": jax.random.key(3)})
  np.testing.assert_array_equal(sampled["mean"], out["mean"])
  eps = (sampled["z"] - sampled["mean"]) / jnp.exp(0.5 * sampled["logvar"])  # (64, 4): standard normal
  assert abs(float(jnp.mean(eps))) < 0.15 and abs(float(jnp.std(eps)) - 1.0) < 0.1
  np.testing.assert_allclose(
    model.apply(variables, sampled["z"], method="decode"), sampled["logits"], atol=1e-6
  )


# ---------------------------------------------------------------------------------------------------
# A few training steps reduce the loss each model is meant for.


def fit(model, x, objective, steps: int = 25, lr: float = 1e-2, sample: bool = False):
  """Adam steps on `objective(outputs)`; returns the losses and the parameters, and checks that every
  parameter gets a gradient at the first step."""
  params = model.init(jax.random.key(0), x)["params"]
  tx = optax.adam(lr)

  @jax.jit
  def step(params, opt_state, i):
    rngs = {"sample": jax.random.fold_in(jax.random.key(1), i)} if sample else {}
    loss = lambda p: objective(model.apply({"params": p}, x, train=True, rngs=rngs))
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value, grads

  opt_state, losses = tx.init(params), []
  for i in range(steps):
    params, opt_state, value, grads = step(params, opt_state, i)
    losses.append(float(value))
    if i == 0:
      for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert bool(jnp.any(g != 0)), f"no gradient reaches {jax.tree_util.keystr(path)}"
  return losses, params


@pytest.mark.parametrize("name", ["dense_autoencoder_tiny", "conv_autoencoder_tiny"])
def test_autoencoder_training_reduces_the_reconstruction_loss(name):
  x = toy_images()
  losses, _ = fit(create_model(name), x, lambda out: jnp.mean(bernoulli_nll(out["reconstruction"], x)))
  # Below the ~490 nats of predicting each pixel's marginal: the code tells the templates apart.
  assert np.isfinite(losses).all() and losses[-1] < 0.75 * losses[0], losses


def test_denoising_autoencoder_learns_to_reconstruct_the_clean_input():
  x = toy_images()
  model = create_model("dense_autoencoder_tiny", noise_kind="gaussian", noise_level=0.3)
  losses, _ = fit(model, x, lambda out: jnp.mean(bernoulli_nll(out["reconstruction"], x)), sample=True)
  assert losses[-1] < 0.7 * losses[0], losses


def test_sparse_autoencoder_reduces_reconstruction_plus_sparsity():
  x = toy_images()
  model = create_model("dense_autoencoder_tiny", code_activation="sigmoid")
  kl = lambda out: kl_sparsity(out["code"], 0.05)
  losses, params = fit(
    model, x, lambda out: jnp.mean(bernoulli_nll(out["reconstruction"], x)) + 100.0 * kl(out)
  )
  assert losses[-1] < 0.7 * losses[0], losses
  before = kl(model.apply(model.init(jax.random.key(0), x), x))
  after = kl(model.apply({"params": params}, x))
  assert float(after) < 0.5 * float(before), (before, after)
  # The codes' mean activations move towards rho = 0.05 from sigmoid's 0.5 at initialisation.
  assert float(jnp.mean(model.apply({"params": params}, x)["code"])) < 0.3


@pytest.mark.parametrize("name", ["vae_mlp_tiny", "vae_conv_tiny"])
def test_vae_training_reduces_the_negative_elbo(name):
  x = toy_images()

  def negative_elbo(out):
    return jnp.mean(bernoulli_nll(out["logits"], x) + gaussian_kl(out["mean"], out["logvar"]))

  losses, _ = fit(create_model(name), x, negative_elbo, sample=True)
  assert np.isfinite(losses).all() and min(losses[-5:]) < 0.8 * losses[0], losses
