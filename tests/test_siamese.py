"""Tests of the Siamese embedding network: the distances and the contrastive and triplet losses against
NumPy, and a few training steps on pairs and on labelled batches."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo.models import create_model, model_spec
from zoo.models.siamese import (
  batch_hard_triplet_loss,
  contrastive_loss,
  pair_distance,
  pairwise_distances,
  triplet_loss,
  valid_anchors,
)


def toy_images(labels: np.ndarray, seed: int = 0) -> jax.Array:
  """28x28x1 images of 4 classes: a random template of 4x4 blocks per class plus N(0, 0.5) noise."""
  rng = np.random.default_rng(seed)
  templates = np.repeat(np.repeat(rng.normal(0, 1, (4, 7, 7, 1)), 4, axis=1), 4, axis=2)
  return jnp.asarray(templates[labels] + rng.normal(0, 0.5, (len(labels), 28, 28, 1)), jnp.float32)


def embeddings(b: int = 6, d: int = 3, seed: int = 0) -> tuple[np.ndarray, ...]:
  rng = np.random.default_rng(seed)
  return tuple(rng.normal(0, 1, (b, d)).astype(np.float32) for _ in range(3))


@pytest.mark.parametrize("name,dim", [("siamese_cnn", 128), ("siamese_cnn_tiny", 16)])
def test_embedding_shapes(name, dim):
  assert model_spec(name).kind == "embedding"
  model = create_model(name)
  x = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  out = jax.eval_shape(model.apply, variables, x)
  assert out.shape == (3, dim) and out.dtype == jnp.float32


def test_normalised_embeddings_are_unit_vectors():
  model = create_model("siamese_cnn_tiny", normalize=True)
  x = toy_images(np.arange(4))
  e = jax.jit(lambda x: model.init_with_output(jax.random.key(0), x)[0])(x)
  np.testing.assert_allclose(jnp.linalg.norm(e, axis=-1), 1.0, rtol=1e-5)


def test_distances():
  a, b, _ = embeddings()
  np.testing.assert_allclose(pair_distance(a, b), np.linalg.norm(a - b, axis=-1), rtol=1e-5)
  np.testing.assert_allclose(pair_distance(a, b, squared=True), np.sum((a - b) ** 2, axis=-1), rtol=1e-5)
  expected = np.linalg.norm(a[:, None] - a[None, :], axis=-1)
  np.testing.assert_allclose(pairwise_distances(a), expected, atol=1e-5)
  np.testing.assert_allclose(pairwise_distances(a, squared=True), expected**2, atol=1e-5)
  # At distance 0 (equal embeddings) the gradient is 0, not NaN.
  grad = jax.grad(lambda e: jnp.sum(pair_distance(e, e)))(jnp.asarray(a))
  np.testing.assert_array_equal(grad, 0.0)
  assert np.isfinite(jax.grad(lambda e: jnp.sum(pairwise_distances(e)))(jnp.asarray(a))).all()


def test_contrastive_loss_equals_hadsell_et_al():
  a, b, _ = embeddings()
  same = np.array([1, 0, 1, 0, 0, 1], np.float32)
  margin = 2.0
  d = np.linalg.norm(a - b, axis=-1)
  y = 1 - same  # the paper's Y: 0 for similar pairs, 1 for dissimilar ones
  expected = (1 - y) * 0.5 * d**2 + y * 0.5 * np.maximum(0, margin - d) ** 2
  np.testing.assert_allclose(contrastive_loss(a, b, same, margin), expected, rtol=1e-5)
  far = contrastive_loss(jnp.zeros((1, 2)), jnp.array([[3.0, 4.0]]), jnp.array([0.0]), margin=4.0)
  np.testing.assert_allclose(far, [0.0])  # a dissimilar pair beyond the margin costs nothing
  near = contrastive_loss(jnp.zeros((1, 2)), jnp.array([[3.0, 4.0]]), jnp.array([0.0]), margin=6.0)
  np.testing.assert_allclose(near, [0.5])
  np.testing.assert_allclose(
    contrastive_loss(jnp.zeros((1, 2)), jnp.array([[3.0, 4.0]]), jnp.array([1.0])), [12.5]
  )


@pytest.mark.parametrize("squared", [True, False])
def test_triplet_loss_equals_facenet(squared):
  a, p, n = embeddings()
  power = 2 if squared else 1
  d_ap = np.linalg.norm(a - p, axis=-1) ** power
  d_an = np.linalg.norm(a - n, axis=-1) ** power
  expected = np.maximum(d_ap - d_an + 0.5, 0)
  np.testing.assert_allclose(triplet_loss(a, p, n, 0.5, squared=squared), expected, rtol=1e-5, atol=1e-6)
  assert np.any(expected == 0) and np.any(expected > 0)  # both sides of the hinge are covered


@pytest.mark.parametrize("squared", [True, False])
def test_batch_hard_triplet_loss_against_brute_force(squared):
  rng = np.random.default_rng(3)
  e = rng.normal(0, 1, (8, 4)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 1, 2, 2, 3])  # label 3 has no positive
  mask = np.array([1, 1, 1, 1, 1, 1, 0, 1])  # the last 2 is padding: example 5 loses its positive too
  margin = 0.3
  expected, has_both = np.zeros(8, np.float32), np.zeros(8, bool)
  for i in range(8):
    if not mask[i]:
      continue
    pos = [j for j in range(8) if j != i and labels[j] == labels[i] and mask[j]]
    neg = [j for j in range(8) if labels[j] != labels[i] and mask[j]]
    if pos and neg:
      dist = lambda j, i=i: np.linalg.norm(e[i] - e[j]) ** (2 if squared else 1)
      has_both[i] = True
      expected[i] = max(0.0, max(dist(j) for j in pos) - min(dist(j) for j in neg) + margin)
  ours = batch_hard_triplet_loss(jnp.asarray(e), jnp.asarray(labels), margin, squared, jnp.asarray(mask))
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(valid_anchors(jnp.asarray(labels), jnp.asarray(mask)), has_both)
  assert has_both.sum() == 5 and np.any(expected > 0)


def test_batch_hard_is_the_hardest_of_all_triplets():
  # For every anchor, the batch-hard loss equals the largest loss over all its (positive, negative) pairs.
  rng = np.random.default_rng(4)
  e = rng.normal(0, 1, (6, 2)).astype(np.float32)
  labels = np.array([0, 0, 0, 1, 1, 2])
  ours = np.asarray(batch_hard_triplet_loss(jnp.asarray(e), jnp.asarray(labels), 0.2))
  for i in range(6):
    pairs = [
      (j, k)
      for j, k in itertools.product(range(6), range(6))
      if j != i and labels[j] == labels[i] and labels[k] != labels[i]
    ]
    if not pairs:
      assert ours[i] == 0
      continue
    idx = np.array(pairs)
    all_losses = triplet_loss(e[[i] * len(pairs)], e[idx[:, 0]], e[idx[:, 1]], 0.2, squared=False)
    np.testing.assert_allclose(ours[i], np.max(all_losses), rtol=1e-5)


def fit(model, x, objective, steps: int = 15, lr: float = 3e-3) -> list[float]:
  params = model.init(jax.random.key(0), x)["params"]
  tx = optax.adam(lr)

  @jax.jit
  def step(params, opt_state):
    value, grads = jax.value_and_grad(lambda p: objective(model.apply({"params": p}, x, train=True)))(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value

  opt_state, losses = tx.init(params), []
  for _ in range(steps):
    params, opt_state, value = step(params, opt_state)
    losses.append(float(value))
  return losses


def test_contrastive_training_separates_the_classes():
  first = np.arange(16) % 4
  second = np.where(np.arange(16) < 8, (first + 1) % 4, first)  # 8 dissimilar pairs, then 8 similar ones
  x = toy_images(np.concatenate([first, second]))  # (32, 28, 28, 1): each pair is two different images
  same = jnp.asarray(first == second, jnp.float32)

  def objective(e):  # the tower embeds both halves of every pair with the same parameters
    return jnp.mean(contrastive_loss(e[:16], e[16:], same, margin=1.0))

  losses = fit(create_model("siamese_cnn_tiny"), x, objective)
  assert np.isfinite(losses).all() and min(losses[-3:]) < 0.5 * losses[0], losses


def test_batch_hard_triplet_training_reduces_its_loss():
  labels = np.arange(16) % 4  # 4 labels x 4 examples: every anchor has positives and negatives
  x = toy_images(labels)
  model = create_model("siamese_cnn_tiny", normalize=True)

  def objective(e):  # Unit vectors are at most 2 apart: a margin of 1 is not met at initialisation.
    return jnp.mean(batch_hard_triplet_loss(e, jnp.asarray(labels), margin=1.0))

  losses = fit(model, x, objective)
  assert np.isfinite(losses).all() and min(losses[-3:]) < 0.5 * losses[0], losses
