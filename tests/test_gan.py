"""Tests of the GANs: the players' parameter subtrees and methods, the losses against NumPy, the noise,
and a few adversarial steps with two optimisers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo.models import create_model, model_spec
from zoo.models.gan import (
  discriminator_loss,
  fixed_latent,
  generator_loss,
  sample_latent,
)
from zoo.registry import ZooError

NAMES = ["mlp_gan", "mlp_gan_tiny", "dcgan", "dcgan_tiny"]
RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def toy_images(n: int = 16, seed: int = 0) -> jax.Array:
  """28x28x1 images in [-1, 1]: two random templates of 4x4 blocks."""
  rng = np.random.default_rng(seed)
  coarse = np.where(rng.random((2, 7, 7, 1)) < 0.3, 1.0, -1.0)
  templates = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
  return jnp.asarray(templates[np.arange(n) % 2], jnp.float32)


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", NAMES)
def test_outputs_and_the_players_subtrees(name):
  model = create_model(name)
  assert model_spec(name).kind == "gan"
  x = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(RNGS, x), x)
  for collection in variables.values():
    assert set(collection) == {"generator", "discriminator"}
  assert ("batch_stats" in variables) == name.startswith("dcgan")
  out = jax.eval_shape(model.apply, variables, x)
  assert {k: v.shape for k, v in out.items()} == {
    "fake": (3, 28, 28, 1),
    "real_logits": (3,),
    "fake_logits": (3,),
  }
  z = jax.ShapeDtypeStruct((5, model.latent_dim), jnp.float32)
  assert jax.eval_shape(lambda v, z: model.apply(v, z, method="generate"), variables, z).shape == (
    5,
    28,
    28,
    1,
  )
  assert jax.eval_shape(lambda v, x: model.apply(v, x, method="discriminate"), variables, x).shape == (3,)


def test_goodfellow_mnist_sizes():
  def params(**kw):
    model = create_model("mlp_gan", **kw)
    return jax.eval_shape(lambda: model.init(RNGS, jnp.zeros((1, 28, 28, 1))))["params"]

  # G: 100 -> 1200 -> 1200 -> 784 (goodfeli/adversarial mnist.yaml); D: 784 -> 240 -> 240 -> 1.
  p = params()
  assert count(p["generator"]) == (100 * 1200 + 1200) + (1200 * 1200 + 1200) + (1200 * 784 + 784)
  assert count(p["discriminator"]) == (784 * 240 + 240) + (240 * 240 + 240) + (240 + 1)
  # Maxout units of 5 pieces, as the paper's discriminator.
  p = params(maxout_pieces=5)
  assert count(p["discriminator"]) == (784 * 1200 + 1200) + (240 * 1200 + 1200) + (240 + 1)


def test_dcgan_layers_and_initialisation():
  model = create_model("dcgan")
  params = jax.jit(model.init)(RNGS, jnp.zeros((2, 28, 28, 1)))["params"]
  g, d = params["generator"], params["discriminator"]
  assert g["Dense_0"]["kernel"].shape == (100, 7 * 7 * 128) and "bias" not in g["Dense_0"]
  assert g["ConvTranspose2x_0"]["kernel"].shape == (5, 5, 128, 64)
  assert g["ConvTranspose2x_1"]["kernel"].shape == (5, 5, 64, 1)
  assert d["Conv_0"]["kernel"].shape == (5, 5, 1, 64) and d["Conv_1"]["kernel"].shape == (5, 5, 64, 128)
  assert set(d) == {"Conv_0", "Conv_1", "BatchNorm_0", "Dense_0"}  # no batch norm on D's input layer
  kernels = np.concatenate(
    [
      np.ravel(leaf)
      for path, leaf in jax.tree_util.tree_leaves_with_path(params)
      if jax.tree_util.keystr(path).endswith("['kernel']")
    ]
  )
  np.testing.assert_allclose(np.std(kernels), 0.02, rtol=0.02)  # N(0, 0.02), the paper's section 4
  assert abs(np.mean(kernels)) < 1e-3


def test_bad_fields_raise():
  with pytest.raises(ZooError, match="divisible by 4"):
    create_model("dcgan", image_shape=(30, 30, 1))
  with pytest.raises(ZooError, match="noise"):
    create_model("mlp_gan", noise="cauchy")
  with pytest.raises(ZooError, match="output"):
    create_model("dcgan", output="relu")


def test_losses_equal_the_papers_formulas():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(0, 3, 6), rng.normal(0, 3, 6)
  sigmoid = lambda t: 1 / (1 + np.exp(-t))
  expected_d = -np.log(sigmoid(real)) - np.log(1 - sigmoid(fake))
  expected_g = -np.log(sigmoid(fake))
  ours_d = discriminator_loss(jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32))
  np.testing.assert_allclose(ours_d, expected_d, rtol=1e-5)
  np.testing.assert_allclose(generator_loss(jnp.asarray(fake, jnp.float32)), expected_g, rtol=1e-5)
  # Stable where D is sure: no log(0).
  np.testing.assert_allclose(discriminator_loss(jnp.array([-200.0]), jnp.array([200.0])), [400.0])


def test_noise():
  z = sample_latent(jax.random.key(0), 4000, 8, "normal")
  assert z.shape == (4000, 8) and z.dtype == jnp.float32
  np.testing.assert_allclose([jnp.mean(z), jnp.std(z)], [0.0, 1.0], atol=0.02)
  u = sample_latent(jax.random.key(0), 4000, 8, "uniform")
  assert float(jnp.min(u)) >= -1.0 and float(jnp.max(u)) <= 1.0
  np.testing.assert_allclose(jnp.var(u), 1 / 3, rtol=0.03)  # U(-1, 1)
  # The fixed latent: deterministic, row i the same in any batch, rows different, not zero.
  a, b = fixed_latent(3, 8), fixed_latent(5, 8)
  np.testing.assert_array_equal(a, b[:3])
  assert not np.allclose(a[0], a[1]) and float(jnp.min(jnp.abs(a).sum(axis=1))) > 0


@pytest.mark.parametrize("name", ["mlp_gan_tiny", "dcgan_tiny"])
def test_call_equals_the_players_methods(name):
  model = create_model(name)
  x = toy_images(4)
  variables = jax.jit(model.init)(RNGS, x)

  @jax.jit
  def run(x):
    out = model.apply(variables, x)
    fake = model.apply(variables, fixed_latent(4, model.latent_dim, model.noise), method="generate")
    real_logits = model.apply(variables, x, method="discriminate")
    fake_logits = model.apply(variables, fake, method="discriminate")
    sampled = model.apply(variables, x, rngs={"sample": jax.random.key(5)})
    return out, fake, real_logits, fake_logits, sampled

  out, fake, real_logits, fake_logits, sampled = run(x)
  np.testing.assert_allclose(out["fake"], fake, atol=1e-6)
  np.testing.assert_allclose(out["real_logits"], real_logits, atol=1e-6)
  np.testing.assert_allclose(out["fake_logits"], fake_logits, atol=1e-5)
  # The 'sample' stream draws a new z.
  assert not np.allclose(sampled["fake"], out["fake"])
  assert float(jnp.max(jnp.abs(sampled["fake"]))) <= 1.0  # tanh images


def test_a_players_batch_norm_updates_only_its_own_statistics():
  model = create_model("dcgan_tiny")
  variables = jax.jit(model.init)(RNGS, toy_images(4))
  z = sample_latent(jax.random.key(0), 4, model.latent_dim)
  _, updates = model.apply(variables, z, True, method="generate", mutable=["batch_stats"])
  old, new = variables["batch_stats"], updates["batch_stats"]
  jax.tree.map(np.testing.assert_array_equal, new["discriminator"], old["discriminator"])
  assert not all(jax.tree.leaves(jax.tree.map(np.allclose, new["generator"], old["generator"])))


def test_mlp_discriminator_dropout_only_in_training():
  model = create_model("mlp_gan_tiny")
  x = toy_images(4)
  variables = jax.jit(model.init)(RNGS, x)
  d = lambda train, seed: model.apply(
    variables, x, train, method="discriminate", rngs={"dropout": jax.random.key(seed)}
  )
  np.testing.assert_array_equal(d(False, 0), d(False, 1))
  assert not np.allclose(d(True, 0), d(True, 1))


@pytest.mark.parametrize("name", ["mlp_gan_tiny", "dcgan_tiny"])
def test_two_optimisers_each_reduce_their_players_loss(name):
  """Discriminator steps (G fixed) reduce the discriminator's loss; generator steps (D fixed) the
  generator's: the two-player training a GAN task runs, one optimiser per parameter subtree."""
  model = create_model(name)
  x = toy_images(16)
  variables = jax.jit(model.init)(RNGS, x)
  tx = optax.adam(2e-3, b1=0.5)  # DCGAN's beta1 (a higher rate than its 2e-4: few steps)

  def make_step(player, objective):
    @jax.jit
    def step(variables, opt_state, i):
      rngs = {"sample": jax.random.fold_in(jax.random.key(2), i), "dropout": jax.random.key(3)}

      def loss(player_params):
        params = {**variables["params"], player: player_params}
        out, updates = model.apply(
          {**variables, "params": params}, x, train=True, rngs=rngs, mutable=["batch_stats"]
        )
        return jnp.mean(objective(out)), updates

      (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"][player])
      changes, opt_state = tx.update(grads, opt_state)
      params = {**variables["params"], player: optax.apply_updates(variables["params"][player], changes)}
      return {**variables, **updates, "params": params}, opt_state, value

    return step

  players = {
    "discriminator": lambda out: discriminator_loss(out["real_logits"], out["fake_logits"]),
    "generator": lambda out: generator_loss(out["fake_logits"]),
  }
  for player, objective in players.items():
    step, state, opt_state, losses = (
      make_step(player, objective),
      variables,
      tx.init(variables["params"][player]),
      [],
    )
    for i in range(12):
      state, opt_state, value = step(state, opt_state, i)
      losses.append(float(value))
    other = "generator" if player == "discriminator" else "discriminator"
    jax.tree.map(np.testing.assert_array_equal, state["params"][other], variables["params"][other])
    assert min(losses[-3:]) < 0.8 * losses[0], (player, losses)
