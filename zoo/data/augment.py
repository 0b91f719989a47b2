"""Image augmentation computed on the device, inside the compiled training step (no host time).

Each augmentation is `fn(**kwargs) -> (images (B, H, W, C), rng) -> images`, registered by name; a config
lists them as `data.augment = {"random_shift": {"pixels": 2}, "horizontal_flip": {}}`, applied in order
to the raw batch, before normalisation.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from zoo.registry import Registry, ZooError, call_with_checked_kwargs

Augmentation = Callable[[jax.Array, jax.Array], jax.Array]
AUGMENTATIONS: Registry = Registry("augmentation")


def register_augmentation(fn):
  return AUGMENTATIONS.register(fn)


def _random_crop(images: jax.Array, rng: jax.Array, pad: int) -> jax.Array:
  """Pads each image by `pad` zeros on every side and crops back at a random offset per example."""
  b, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(rng, (b, 2), 0, 2 * pad + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


@register_augmentation
def random_shift(pixels: int = 2) -> Augmentation:
  """Translates each image by up to `pixels` in each direction, filling with zeros (the background of
  MNIST-like data)."""
  if pixels < 0:
    raise ZooError(f"random_shift: pixels must be >= 0, got {pixels}")
  return lambda images, rng: _random_crop(images, rng, pixels)


@register_augmentation
def random_crop(padding: int = 4) -> Augmentation:
  """The CIFAR recipe: zero-pad by `padding` and take a random crop of the original size."""
  return lambda images, rng: _random_crop(images, rng, padding)


@register_augmentation
def horizontal_flip(probability: float = 0.5) -> Augmentation:
  """Mirrors each image left-right with `probability`."""

  def flip(images, rng):
    mask = jax.random.bernoulli(rng, probability, (images.shape[0], 1, 1, 1))
    return jnp.where(mask, images[:, :, ::-1, :], images)

  return flip


def create_augmentation(spec: dict[str, dict]) -> Augmentation | None:
  """Chains the augmentations named in `spec` (name -> kwargs, in order); None when `spec` is empty."""
  if not spec:
    return None
  steps = []
  for name, kwargs in spec.items():
    if not isinstance(kwargs, dict):
      raise ZooError(f"data.augment.{name} must map argument names to values, got {kwargs!r}")
    steps.append(call_with_checked_kwargs("augmentation", name, AUGMENTATIONS.get(name), kwargs))

  def augment(images: jax.Array, rng: jax.Array) -> jax.Array:
    if images.ndim != 4:
      raise ZooError(f"image augmentation needs (B, H, W, C) inputs, got shape {images.shape}")
    for i, step in enumerate(steps):
      images = step(images, jax.random.fold_in(rng, i))
    return images

  return augment
