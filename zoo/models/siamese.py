"""Siamese embedding networks (Bromley et al. 1993) with the contrastive loss (Hadsell, Chopra & LeCun 2006)
and the triplet loss (Schroff et al. 2015, FaceNet; batch-hard mining of Hermans et al. 2017)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.models import register_model
from zoo.models.layers import he_normal, max_pool
from zoo.registry import ZooError

# --- distances and losses ----------------------------------------------------------------------------------


def _safe_sqrt(d2: jax.Array) -> jax.Array:
  # sqrt has an infinite derivative at 0 (a pair of equal embeddings): there its gradient is taken as 0.
  positive = d2 > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)


def pair_distance(e1: jax.Array, e2: jax.Array, squared: bool = False) -> jax.Array:
  """The Euclidean distance (or its square) between matching rows of e1 and e2 (B, D): (B,) float32.
  Its gradient at a distance of 0 is 0, not NaN."""
  d2 = jnp.sum(jnp.square(e1.astype(jnp.float32) - e2.astype(jnp.float32)), axis=-1)
  return d2 if squared else _safe_sqrt(d2)


def pairwise_distances(x: jax.Array, squared: bool = False) -> jax.Array:
  """Distances between all rows of x (B, D): (B, B) float32, from |a|^2 + |b|^2 - 2 a.b at full float32
  precision, clipped at 0 (rounding can make it slightly negative)."""
  x = x.astype(jnp.float32)
  sq = jnp.sum(jnp.square(x), axis=-1)  # (B,)
  gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)  # (B, B)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
  return d2 if squared else _safe_sqrt(d2)


def contrastive_loss(e1: jax.Array, e2: jax.Array, same: jax.Array, margin: float = 1.0) -> jax.Array:
  """Hadsell et al. 2006's contrastive loss per pair, (B,) float32:
  same * D^2 / 2 + (1 - same) * max(0, margin - D)^2 / 2, with D the Euclidean distance of the embeddings
  e1, e2 (B, D) and `same` (B,) 1 for a similar pair, 0 for a dissimilar one (the paper's Y is 1 - same).
  Similar pairs are pulled together; dissimilar ones pushed apart until `margin`, then left alone."""
  same = same.astype(jnp.float32)
  d2 = pair_distance(e1, e2, squared=True)
  push = jnp.square(jnp.maximum(margin - _safe_sqrt(d2), 0.0))
  return 0.5 * (same * d2 + (1.0 - same) * push)


def triplet_loss(
  anchor: jax.Array, positive: jax.Array, negative: jax.Array, margin: float = 0.2, squared: bool = True
) -> jax.Array:
  """FaceNet's triplet loss per triplet, (B,) float32: max(0, d(a, p) - d(a, n) + margin), with d the
  squared Euclidean distance as in the paper (margin alpha = 0.2 there, on L2-normalised embeddings), or
  the distance itself with squared=False. anchor, positive, negative: (B, D)."""
  d_pos = pair_distance(anchor, positive, squared)
  d_neg = pair_distance(anchor, negative, squared)
  return jnp.maximum(d_pos - d_neg + margin, 0.0)


def batch_hard_triplet_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  margin: float = 0.2,
  squared: bool = False,
  mask: jax.Array | None = None,
) -> jax.Array:
  """The triplet loss with batch-hard mining (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet
  Loss"): each example is an anchor with the farthest example of its label as the positive and the
  nearest of another label as the negative: max(0, max_p d(a, p) - min_n d(a, n) + margin).

  Mining needs labels, so this takes one batch of embeddings (B, D) and labels (B,) rather than
  triplets; d is the Euclidean distance (the paper's choice), squared with squared=True. `mask` (B,)
  (1 real, 0 padding) leaves padded examples out as anchors and as candidates. Returns (B,) float32; an
  anchor without a positive or a negative in the batch (or masked) gets 0, so the task averages over
  `valid_anchors` = the anchors that have both (e.g. batches of P labels x K examples each, K >= 2).
  """
  b = embeddings.shape[0]
  valid = jnp.ones((b,), bool) if mask is None else mask.astype(bool)
  dist = pairwise_distances(embeddings, squared)  # (B, B)
  same = labels[:, None] == labels[None, :]  # (B, B)
  pair_ok = valid[:, None] & valid[None, :]
  is_pos = same & ~jnp.eye(b, dtype=bool) & pair_ok
  is_neg = ~same & pair_ok
  hardest_pos = jnp.max(jnp.where(is_pos, dist, -jnp.inf), axis=1)  # (B,)
  hardest_neg = jnp.min(jnp.where(is_neg, dist, jnp.inf), axis=1)  # (B,)
  has_both = valid & jnp.any(is_pos, axis=1) & jnp.any(is_neg, axis=1)
  loss = jnp.maximum(hardest_pos - hardest_neg + margin, 0.0)
  return jnp.where(has_both, loss, 0.0)


def valid_anchors(labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Which examples of a batch have a positive and a negative for `batch_hard_triplet_loss`: (B,) bool."""
  b = labels.shape[0]
  valid = jnp.ones((b,), bool) if mask is None else mask.astype(bool)
  same = labels[:, None] == labels[None, :]
  pair_ok = valid[:, None] & valid[None, :]
  has_pos = jnp.any(same & ~jnp.eye(b, dtype=bool) & pair_ok, axis=1)
  return valid & has_pos & jnp.any(~same & pair_ok, axis=1)


# --- the embedding network --------------------------------------------------------------------------------


class EmbeddingNet(nn.Module):
  """One tower of a Siamese network: a small CNN mapping images to embeddings. Both (or all three)
  inputs of a pair (triplet) go through the same module and parameters; the task forms the pairs.

  [Conv 3x3 SAME -> ReLU -> 2x2 max-pool] per `features` -> flatten -> [Dense -> ReLU] per
  `hidden_sizes` -> Dense `embedding_dim` (linear) -> optional L2 normalisation.

  Dimensions: B batch, H, W, C image, D = `embedding_dim`. Kind 'embedding': images (B, H, W, C) ->
  embeddings (B, D) float32. `normalize=True` puts them on the unit sphere (FaceNet: then the squared
  distance is at most 4 and its margin of 0.2 is meaningful); the default leaves them free, as Hadsell et
  al.'s contrastive loss does. Losses: `contrastive_loss`, `triplet_loss`, `batch_hard_triplet_loss`.
  """

  features: tuple[int, ...] = (32, 64)
  hidden_sizes: tuple[int, ...] = (256,)
  embedding_dim: int = 128
  normalize: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if any(s < 1 for s in (*self.features, *self.hidden_sizes, self.embedding_dim)):
      raise ZooError("siamese: features, hidden_sizes and embedding_dim must be at least 1")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(kernel_init=he_normal, dtype=self.dtype, param_dtype=self.param_dtype)
    for f in self.features:
      x = nn.Conv(f, (3, 3), padding="SAME", **kw)(x)  # (B, H, W, f)
      x = max_pool(nn.relu(x), 2)  # (B, H/2, W/2, f)
    x = x.reshape(x.shape[0], -1)  # (B, H' W' f)
    for h in self.hidden_sizes:
      x = nn.relu(nn.Dense(h, **kw)(x))  # (B, h)
    e = nn.Dense(self.embedding_dim, dtype=self.dtype, param_dtype=self.param_dtype)(x).astype(jnp.float32)
    if self.normalize:
      e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    return e  # (B, D)


@register_model(kind="embedding")
def siamese_cnn(**kw) -> EmbeddingNet:
  """Two conv stages (32, 64), a 256-unit hidden layer, 128-dimensional embeddings (854,784 parameters)."""
  return EmbeddingNet(**kw)


@register_model(kind="embedding")
def siamese_cnn_tiny(**kw) -> EmbeddingNet:
  return EmbeddingNet(**{**dict(features=(8, 16), hidden_sizes=(32,), embedding_dim=16), **kw})
