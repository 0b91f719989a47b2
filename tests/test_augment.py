"""On-device augmentation: shapes, determinism per rng, and what each transform does."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.data import create_augmentation
from zoo.registry import UnknownNameError, ZooError


def _images(b=16, h=8, w=8, c=1):
  return jnp.asarray(np.random.default_rng(0).integers(1, 255, (b, h, w, c)), jnp.uint8)


def test_random_shift_translates_each_image_within_bounds():
  images = _images()
  out = create_augmentation({"random_shift": {"pixels": 2}})(images, jax.random.key(0))
  assert out.shape == images.shape and out.dtype == images.dtype
  shifted = 0
  for img, aug in zip(np.asarray(images), np.asarray(out), strict=True):
    found = [
      (dy, dx)
      for dy in range(-2, 3)
      for dx in range(-2, 3)
      if np.array_equal(np.roll(np.pad(img, ((2, 2), (2, 2), (0, 0))), (dy, dx), (0, 1))[2:-2, 2:-2], aug)
    ]
    assert found, "every output is the input translated by at most 2 pixels"
    shifted += found[0] != (0, 0)
  assert shifted > 8  # Most of the 16 images moved.


def test_flip_and_chain_are_deterministic_per_rng():
  images = _images(b=64)
  augment = create_augmentation({"horizontal_flip": {}, "random_crop": {"padding": 1}})
  a, b = augment(images, jax.random.key(1)), augment(images, jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  flips = create_augmentation({"horizontal_flip": {"probability": 1.0}})(images, jax.random.key(2))
  np.testing.assert_array_equal(flips, images[:, :, ::-1, :])
  assert create_augmentation({}) is None


def test_bad_augmentation_specs_are_clear_errors():
  with pytest.raises(UnknownNameError, match="did you mean: random_shift"):
    create_augmentation({"random_shfit": {}})
  with pytest.raises(ZooError, match="'pixel'"):
    create_augmentation({"random_shift": {"pixel": 2}})
