"""On-device augmentation: shapes, determinism per rng, and what each transform does."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.data import create_augmentation
from zoo.data.augment import affine_warp, random_rotation, random_zoom, rotate
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


def _blob(size=33, centre=(16.0, 26.0), sigma=2.0, b=1):
  """A float (b, size, size, 1) batch holding one Gaussian blob, whose intensity centroid is `centre`."""
  r, c = np.mgrid[:size, :size]
  img = np.exp(-((r - centre[0]) ** 2 + (c - centre[1]) ** 2) / (2 * sigma**2)).astype(np.float32)
  return jnp.asarray(np.broadcast_to(img[None, :, :, None], (b, size, size, 1)))


def _centroids(images):
  """(B, 2) intensity centroids (row, col) of a (B, H, W, 1) batch."""
  img = np.asarray(images, np.float64)[..., 0]
  r, c = np.mgrid[: img.shape[1], : img.shape[2]]
  total = img.sum((1, 2))
  return np.stack([(img * r).sum((1, 2)) / total, (img * c).sum((1, 2)) / total], 1)


def test_rotation_by_zero_degrees_is_the_identity():
  images = _images(b=8, h=9, w=12, c=3)
  out = create_augmentation({"random_rotation": {"max_degrees": 0}})(images, jax.random.key(0))
  np.testing.assert_array_equal(out, images)


def test_quarter_turn_is_counter_clockwise_like_rot90():
  images = _images(b=2, h=7, w=7, c=2)
  np.testing.assert_array_equal(rotate(images, jnp.full(2, 90.0)), np.rot90(images, 1, axes=(1, 2)))
  np.testing.assert_array_equal(rotate(images, jnp.full(2, -90.0)), np.rot90(images, -1, axes=(1, 2)))
  # Even sizes rotate about the point between the four middle pixels.
  even = _images(b=1, h=6, w=6)
  np.testing.assert_array_equal(rotate(even, jnp.array([90.0])), np.rot90(even, 1, axes=(1, 2)))


def test_half_turn_keeps_a_centred_symmetric_pattern_and_flips_an_asymmetric_one():
  r, c = np.mgrid[:11, :11]
  cross = ((r == 5) | (c == 5) | (np.abs(r - c) == 0)).astype(np.uint8)[None, :, :, None] * 200
  np.testing.assert_array_equal(rotate(jnp.asarray(cross), jnp.array([180.0])), cross)
  images = _images(b=3, h=8, w=10)
  np.testing.assert_array_equal(rotate(images, jnp.full(3, 180.0)), images[:, ::-1, ::-1, :])


def test_random_angles_are_within_range_and_differ_per_image():
  blobs = _blob(b=64)  # A blob 10 pixels right of the centre (16, 16).
  out = create_augmentation({"random_rotation": {"max_degrees": 20}})(blobs, jax.random.key(3))
  dy, dx = (_centroids(out) - 16.0).T
  degrees = np.degrees(np.arctan2(-dy, dx))  # Counter-clockwise as displayed: up is -row.
  assert np.abs(degrees).max() <= 20.5
  assert degrees.min() < -10 and degrees.max() > 10  # Spread over the range, not one shared angle.
  assert len(np.unique(np.round(degrees, 2))) > 60
  np.testing.assert_allclose(np.hypot(dy, dx), 10.0, atol=0.05)  # A pure rotation about the centre.


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int32, jnp.float32, jnp.bfloat16])
def test_warps_keep_the_dtype_and_round_integers(dtype):
  images = _images(b=4, h=8, w=8, c=3).astype(dtype)
  degrees = jnp.array([10.0, -33.0, 45.0, 170.0])
  out = rotate(images, degrees)
  assert out.shape == images.shape and out.dtype == images.dtype
  # Integers are the float result rounded to nearest, not truncated.
  exact = np.asarray(rotate(images.astype(jnp.float32), degrees))
  if jnp.issubdtype(dtype, jnp.integer):
    np.testing.assert_array_equal(out, np.round(exact))
    assert (np.round(exact) != np.floor(exact)).any()
  else:
    np.testing.assert_allclose(np.asarray(out, np.float32), exact, rtol=1e-2)
  # A constant image with a matching fill stays exactly constant under any bilinear blend.
  flat = jnp.full(images.shape, 200, dtype)
  np.testing.assert_array_equal(rotate(flat, degrees, fill=200), flat)


def test_bilinear_rotation_matches_scipy():
  ndimage = pytest.importorskip("scipy.ndimage")
  rng = np.random.default_rng(1)
  images = rng.uniform(0, 255, (3, 9, 12, 2)).astype(np.float32)
  degrees = np.array([17.3, -123.4, 71.0])
  out = np.asarray(rotate(jnp.asarray(images), jnp.asarray(degrees), fill=7.0))
  for img, angle, got in zip(images, degrees, out, strict=True):
    # scipy rotates in the (row, col) plane about (shape - 1) / 2; "grid-constant" blends the border
    # with cval as `affine_warp` does.
    want = ndimage.rotate(img, angle, reshape=False, order=1, mode="grid-constant", cval=7.0)
    np.testing.assert_allclose(got, want, atol=2e-3)
  uint8 = images.round().astype(np.uint8)
  got = np.asarray(rotate(jnp.asarray(uint8), jnp.asarray(degrees)), np.int32)
  for i in range(3):
    want = ndimage.rotate(
      uint8[i].astype(np.float64), degrees[i], reshape=False, order=1, mode="grid-constant"
    )
    assert np.abs(got[i] - want).max() <= 0.5 + 1e-3  # Rounded, not truncated.


def test_affine_warp_matches_scipy_affine_transform():
  ndimage = pytest.importorskip("scipy.ndimage")
  rng = np.random.default_rng(2)
  images = rng.uniform(0, 1, (2, 10, 7, 1)).astype(np.float32)
  matrices = np.array([[[0.8, 0.3, 1.5], [-0.2, 1.1, -0.7]], [[1.3, 0.0, -2.0], [0.0, 0.6, 3.2]]], np.float32)
  out = np.asarray(affine_warp(jnp.asarray(images), jnp.asarray(matrices), fill=0.25))
  for img, m, got in zip(images, matrices, out, strict=True):
    want = ndimage.affine_transform(img[..., 0], m[:, :2], m[:, 2], order=1, mode="grid-constant", cval=0.25)
    np.testing.assert_allclose(got[..., 0], want, atol=1e-5)


def test_random_zoom_scales_about_the_centre_within_range():
  blobs = _blob(b=64)
  out = random_zoom(0.3)(blobs, jax.random.key(4))
  dy, dx = (_centroids(out) - 16.0).T
  assert out.dtype == blobs.dtype
  scale = dx / 10.0  # The blob sits 10 pixels right of the centre; zooming moves it along that line.
  np.testing.assert_allclose(dy, 0.0, atol=1e-3)
  assert scale.min() >= 0.7 - 0.01 and scale.max() <= 1.3 + 0.01
  assert scale.min() < 0.85 and scale.max() > 1.15
  with pytest.raises(ZooError, match="max_zoom"):
    random_zoom(1.0)
  with pytest.raises(ZooError, match="max_degrees"):
    random_rotation(-5.0)
  with pytest.raises(ZooError, match="fill must be a number, got 'black'"):
    create_augmentation({"random_rotation": {"fill": "black"}})


def test_rotation_composes_with_the_other_augmentations_in_order():
  images = _images(b=8, h=12, w=12, c=3)
  spec = {"random_rotation": {"max_degrees": 20}, "random_shift": {"pixels": 2}, "horizontal_flip": {}}
  augment = jax.jit(create_augmentation(spec))
  out = augment(images, jax.random.key(5))
  assert out.shape == images.shape and out.dtype == images.dtype
  np.testing.assert_array_equal(out, augment(images, jax.random.key(5)))
  # Steps run in the order listed: a final certain flip mirrors what the rotation produced.
  key = jax.random.key(6)
  rotated = jax.jit(create_augmentation({"random_rotation": {}}))(images, key)
  then_flipped = create_augmentation({"random_rotation": {}, "horizontal_flip": {"probability": 1.0}})
  np.testing.assert_array_equal(jax.jit(then_flipped)(images, key), rotated[:, :, ::-1, :])


def test_rotation_inside_jit_matches_eager_and_traces_once():
  traces = []
  augment = create_augmentation({"random_rotation": {"max_degrees": 20}})

  def step(images, rng):
    traces.append(None)
    return augment(images, rng)

  jitted = jax.jit(step)
  images = _images(b=8, h=10, w=10, c=3)
  for seed in range(3):
    np.testing.assert_array_equal(jitted(images, jax.random.key(seed)), step(images, jax.random.key(seed)))
  assert len(traces) == 1 + 3  # One trace for jit, plus the three eager calls.
