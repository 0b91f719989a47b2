"""Tests of the GAN task (losses against NumPy, each player's gradient in the trainer's step, the samples it
writes) and of scoring samples with a trained classifier (zoo.train.sample_score)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from zoo.config import Config
from zoo.data.datasets import normalization_stats, synthetic_images
from zoo.models import create_model
from zoo.models.gan import fixed_latent, sample_latent
from zoo.registry import ZooError
from zoo.tasks import create_task
from zoo.tasks.gan import SAMPLE_BATCH
from zoo.train import build, create_train_state, train_and_evaluate
from zoo.train.restore import load_run
from zoo.train.sample_score import (
  score_probabilities,
  score_samples,
  score_samples_file,
)
from zoo.train.steps import make_batch_train_step, train_rngs

softplus = lambda t: np.log1p(np.exp(-np.abs(t))) + np.maximum(t, 0)  # stable log(1 + e^t)
sigmoid = lambda t: 1 / (1 + np.exp(-t))


def logits(seed: int = 0, n: int = 8):
  rng = np.random.default_rng(seed)
  real, fake = rng.normal(0, 3, n).astype(np.float32), rng.normal(0, 3, n).astype(np.float32)
  return real, fake, {"fake": jnp.zeros((n, 2, 2, 1)), "real_logits": real, "fake_logits": fake}


@pytest.mark.parametrize("generator_loss", ["non_saturating", "minimax"])
def test_losses_and_metrics_against_numpy(generator_loss):
  real, fake, outputs = logits()
  task = create_task("gan", generator_loss=generator_loss, label_smoothing=0.1)
  losses, metrics = task.loss(outputs, {})
  # The discriminator: cross-entropy with real targets 0.9 (one-sided smoothing), fake targets 0.
  d = -(0.9 * np.log(sigmoid(real)) + 0.1 * np.log(1 - sigmoid(real))) - np.log(1 - sigmoid(fake))
  g = -np.log(sigmoid(fake)) if generator_loss == "non_saturating" else np.log(1 - sigmoid(fake))
  np.testing.assert_allclose(losses["discriminator"], d.mean(), rtol=1e-5)
  np.testing.assert_allclose(losses["generator"], g.mean(), rtol=1e-5)
  expected = {
    "loss": d.mean() + g.mean(),
    "d_loss": d.mean(),
    "g_loss": g.mean(),
    "d_real_accuracy": (real > 0).mean(),
    "d_fake_accuracy": (fake < 0).mean(),
    "accuracy": ((real > 0).mean() + (fake < 0).mean()) / 2,
    "d_real": sigmoid(real).mean(),
    "d_fake": sigmoid(fake).mean(),
  }
  assert set(metrics) == set(expected)
  for key, value in expected.items():
    np.testing.assert_allclose(metrics[key], value, rtol=1e-5, atol=1e-7, err_msg=key)

  # Evaluation: sums over the real rows, the unsmoothed discriminator loss.
  mask = np.array([1, 1, 1, 0, 1, 1, 0, 1], np.float32)
  sums = task.eval_metrics(outputs, {"mask": jnp.asarray(mask)})
  plain_d = softplus(-real) + softplus(fake)
  np.testing.assert_allclose(sums["d_loss"], (plain_d * mask).sum(), rtol=1e-5)
  np.testing.assert_allclose(sums["g_loss"], (g * mask).sum(), rtol=1e-5)
  np.testing.assert_allclose(sums["d_fake"], (sigmoid(fake) * mask).sum(), rtol=1e-5)
  assert float(sums["count"]) == 6
  # Stable where D is sure: no log(0).
  far = {"fake": None, "real_logits": jnp.array([-200.0]), "fake_logits": jnp.array([200.0])}
  np.testing.assert_allclose(task.loss(far, {})[0]["discriminator"], 400.0 + 0.1 * -200.0)


def test_one_train_step_moves_each_player_along_its_own_gradient():
  """The trainer's step with SGD at rate 1: each player's change is minus the gradient of its own loss
  w.r.t. its own parameters, taken by hand with the other player's parameters fixed."""
  c = Config()
  c.model.name = "mlp_gan_tiny"
  c.model.kwargs = {"image_shape": (8, 8, 1)}
  c.data.name, c.data.kwargs = "synthetic_images", {"n_train": 32, "n_test": 8, "image_size": 8}
  c.data.normalization, c.data.batch_size = "symmetric", 16
  c.task.name = "gan"
  c.optimizer.name, c.optimizer.learning_rate = "sgd", 1.0
  exp = build(c)
  x = jnp.asarray(exp.dataset.x_train[:16])
  state = create_train_state(exp.model, exp.tx, exp.preprocess(x), jax.random.key(0))
  before = jax.device_get(state.params)
  step = make_batch_train_step(
    exp.model, exp.tx, exp.task, exp.schedule, steps_per_epoch=2, preprocess=exp.preprocess
  )
  rng = jax.random.key(7)
  after, metrics = step(state, {"input": x, "label": jnp.zeros(16, jnp.int32)}, rng)
  after = jax.device_get(after.params)

  # The step's keys, as zoo.train.steps derives them at step 0 (dropout, and the latents' 'sample').
  rngs = train_rngs(jax.random.split(jax.random.fold_in(rng, 0))[0], ("sample",))
  inputs = exp.preprocess(x)
  assert float(inputs.min()) >= -1 and float(inputs.max()) <= 1 and float(inputs.min()) < -0.5

  def outputs(params):
    return exp.model.apply({"params": params}, inputs, train=True, rngs=rngs)

  def g_loss(generator):
    out = outputs({"generator": generator, "discriminator": before["discriminator"]})
    return jnp.mean(jnp.logaddexp(0.0, -out["fake_logits"]))

  def d_loss(discriminator):
    out = outputs({"generator": before["generator"], "discriminator": discriminator})
    return jnp.mean(jnp.logaddexp(0.0, -out["real_logits"]) + jnp.logaddexp(0.0, out["fake_logits"]))

  (g_value, g_grad), (d_value, d_grad) = (
    jax.jit(jax.value_and_grad(g_loss))(before["generator"]),
    jax.jit(jax.value_and_grad(d_loss))(before["discriminator"]),
  )
  grads = {"generator": g_grad, "discriminator": d_grad}
  for player, grad in grads.items():
    moved = jax.tree.map(lambda a, b: a - b, before[player], after[player])
    assert max(float(np.abs(m).max()) for m in jax.tree.leaves(moved)) > 1e-3, player
    jax.tree.map(lambda m, g: np.testing.assert_allclose(m, g, atol=2e-6, rtol=1e-4), moved, grad)
  np.testing.assert_allclose(metrics["g_loss"], g_value, rtol=1e-5)
  np.testing.assert_allclose(metrics["d_loss"], d_value, rtol=1e-5)


@pytest.mark.parametrize("output", ["tanh", "sigmoid"])
def test_write_samples(output, tmp_path):
  model = create_model("mlp_gan_tiny", output=output)
  variables = jax.jit(model.init)({"params": jax.random.key(0)}, jnp.zeros((2, 28, 28, 1)))
  n = SAMPLE_BATCH + 100  # Two generator batches, the second cut short.
  task = create_task("gan", num_samples=16, saved_samples=n)
  rng = jax.random.key(3)
  summary = task.write_samples(model, variables, tmp_path, rng)
  assert summary == {"samples": "samples.png", "samples_npz": "samples.npz", "saved_samples": n}

  generate = lambda z: np.asarray(model.apply(variables, z, method="generate"))
  unit = (lambda x: (x + 1) / 2) if output == "tanh" else (lambda x: x)
  png = np.asarray(Image.open(tmp_path / "samples.png"))
  assert png.ndim == 2 and png.shape[0] >= 4 * 28 and png.shape[1] >= 4 * 28  # a 4 x 4 grid, grey
  # The first tile: the fixed latent's first image, mapped to [0, 1] and to 0..255.
  expected = np.round(unit(generate(fixed_latent(16, model.latent_dim, model.noise)))[0, :, :, 0] * 255)
  np.testing.assert_allclose(png[:28, :28], expected, atol=1)

  with np.load(tmp_path / "samples.npz") as data:
    images = data["images"]
  assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
  first = unit(
    generate(sample_latent(jax.random.fold_in(rng, 0), SAMPLE_BATCH, model.latent_dim, model.noise))
  )
  np.testing.assert_allclose(images[:5], np.round(first[:5] * 255), atol=1)
  assert images.std() > 1  # samples differ
  assert not np.array_equal(images[SAMPLE_BATCH], images[0])  # the second batch has its own latents


def test_training_writes_the_report(tmp_path):
  c = Config()
  c.model.name = "mlp_gan_tiny"
  c.model.kwargs = {"image_shape": (8, 8, 1)}
  c.data.name, c.data.kwargs = "synthetic_images", {"n_train": 64, "n_test": 16, "image_size": 8}
  c.data.normalization, c.data.batch_size, c.data.eval_batch_size = "symmetric", 16, 16
  c.task.name, c.task.kwargs = "gan", {"saved_samples": 50, "num_samples": 9}
  c.optimizer.kwargs = {"b1": 0.5}
  c.steps = 4
  result = train_and_evaluate(c, tmp_path, progress=False)
  assert result["report"]["samples"] == "samples.png" and (tmp_path / "samples.png").is_file()
  with np.load(tmp_path / "samples.npz") as data:
    assert data["images"].shape == (50, 8, 8, 1)
  assert {"d_loss", "g_loss", "d_real", "d_fake", "accuracy"} <= set(result["test"])
  np.testing.assert_allclose(
    result["test"]["loss"], result["test"]["d_loss"] + result["test"]["g_loss"], rtol=1e-5
  )


def test_symmetric_normalisation_maps_pixels_to_plus_minus_one():
  mean, std = normalization_stats(np.zeros((0, 2, 2, 1), np.uint8), "symmetric", 255.0)
  np.testing.assert_allclose((np.array([0.0, 127.5, 255.0]) - mean) / std, [-1.0, 0.0, 1.0])
  with pytest.raises(ZooError, match="pixel_max"):
    normalization_stats(np.zeros((1, 2)), "symmetric", 0.0)


def test_bad_kwargs_and_outputs_name_the_key():
  for kwargs, key in [
    ({"generator_loss": "wasserstein"}, "task.kwargs.generator_loss"),
    ({"label_smoothing": 1.0}, "task.kwargs.label_smoothing"),
    ({"label_smoothing": "a lot"}, "task.kwargs.label_smoothing"),
    ({"num_samples": 0}, "task.kwargs.num_samples"),
    ({"saved_samples": -1}, "task.kwargs.saved_samples"),
    ({"num_sample": 10}, "num_sample"),
  ]:
    with pytest.raises(ZooError, match=key):
      create_task("gan", **kwargs)
  with pytest.raises(ZooError, match="GAN model"):
    create_task("gan").loss(jnp.zeros((4, 10)), {})


# --- scoring samples --------------------------------------------------------------------------------------


def test_score_probabilities_on_constructed_inputs():
  eye = np.eye(10)
  one_class = score_probabilities(np.tile(eye[3], (20, 1)))
  assert one_class["confident_share"] == 1 and one_class["histogram"] == [0, 0, 0, 20] + [0] * 6
  assert one_class["histogram_entropy_nats"] == 0 and one_class["classifier_score"] == pytest.approx(1.0)
  spread = score_probabilities(np.tile(eye, (2, 1)))  # every class twice, each certain
  assert spread["histogram"] == [2] * 10
  assert spread["histogram_entropy_nats"] == pytest.approx(math.log(10))
  assert spread["histogram_entropy_bits"] == pytest.approx(math.log2(10))
  assert spread["max_entropy_nats"] == pytest.approx(math.log(10))
  assert spread["classifier_score"] == pytest.approx(10.0)
  # Confidence: 0.95 and exactly 0.9 count, 0.5 and the uniform 0.1 do not.
  rows = [
    0.95 * eye[0] + 0.05 * eye[1],
    0.9 * eye[2] + 0.1 * eye[3],
    0.5 * eye[4] + 0.5 * eye[5],
    eye[6] * 0 + 0.1,
  ]
  mixed = score_probabilities(np.array(rows))
  assert mixed["confident_share"] == 0.5
  assert mixed["mean_max_probability"] == pytest.approx((0.95 + 0.9 + 0.5 + 0.1) / 4)
  assert mixed["histogram"] == [2, 0, 1, 0, 1, 0, 0, 0, 0, 0]  # ties go to the first class
  shares = np.array([0.5, 0.25, 0.25])
  assert mixed["histogram_entropy_nats"] == pytest.approx(-(shares * np.log(shares)).sum())
  with pytest.raises(ZooError, match="threshold"):
    score_probabilities(np.tile(eye[3], (2, 1)), threshold=1.5)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  """A small MLP trained on synthetic 8x8 images (classes: templates plus noise), with 'channel'
  normalisation (so scoring must apply the run's own mean and std); and the data."""
  workdir = tmp_path_factory.mktemp("classifier")
  c = Config()
  c.model.kwargs = {"hidden_sizes": (32,)}
  c.data.name, c.data.kwargs = "synthetic_images", {"n_train": 512, "n_test": 100, "image_size": 8}
  c.data.batch_size, c.data.eval_batch_size = 32, 100
  c.optimizer.learning_rate = 1e-2
  c.epochs = 3
  result = train_and_evaluate(c, workdir, progress=False)
  assert result["test"]["accuracy"] == 1.0
  return workdir, synthetic_images(n_train=512, n_test=100, image_size=8)


def test_score_samples_with_a_trained_classifier(classifier, tmp_path):
  workdir, data = classifier
  x, y = data.x_test, data.y_test
  # The classifier's probabilities by hand: its model.json statistics, eval mode.
  run = load_run(workdir)
  normalised = (x.astype(np.float32) - np.asarray(run.card["mean"])) / np.asarray(run.card["std"])
  probs = np.asarray(jax.nn.softmax(run.model.apply(run.variables, normalised), axis=-1))
  score = score_samples(x, workdir)
  assert score == pytest.approx(score_probabilities(probs))
  assert score["histogram"] == np.bincount(y, minlength=10).tolist()  # it classifies them all right
  one = score_samples(x[y == 4], workdir)
  assert one["histogram"][4] == (y == 4).sum() and one["histogram_entropy_nats"] == 0

  # The file form: samples.npz in, sample_score.json beside it.
  np.savez_compressed(tmp_path / "samples.npz", images=x)
  written = score_samples_file(tmp_path / "samples.npz", workdir)
  assert json.loads((tmp_path / "sample_score.json").read_text()) == written
  assert written["histogram"] == score["histogram"] and written["classifier"] == str(workdir)

  with pytest.raises(ZooError, match="uint8"):
    score_samples(x.astype(np.float32), workdir)
  with pytest.raises(ZooError, match=r"\(10, 10, 1\)"):
    score_samples(np.zeros((4, 10, 10, 1), np.uint8), workdir)
  with pytest.raises(ZooError, match="no samples file"):
    score_samples_file(tmp_path / "missing.npz", workdir)
