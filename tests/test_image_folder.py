"""Image folders streamed from disk: layout errors, decoding, deterministic resumable order, padding,
failures, device prefetch, random resized crops, and the ImageNet configs end to end on generated images."""

from __future__ import annotations

import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import zoo.data.image_folder as image_folder
import zoo.train.loop as loop
from zoo.config import get_config
from zoo.data import ImageFolder, create_augmentation, load_dataset, normalization_stats, prefetch_to_device
from zoo.data.augment import random_resized_crop
from zoo.registry import ZooError
from zoo.train import train_and_evaluate


def write_image_folder(
  root: Path, *, classes=("cat", "dog", "fish"), per_class: int = 6, size=(40, 48), seed: int = 0
) -> Path:
  """Writes `per_class` images of each class into root/train/<class> and root/val/<class> and returns
  `root`: JPEGs and PNGs of sizes around `size` (height, width), some grayscale, one RGBA. Each class has
  its own colour (plus noise), so a model can learn them apart."""
  rng = np.random.default_rng(seed)
  colours = rng.integers(30, 226, (len(classes), 3))
  n = 0
  for split in ("train", "val"):
    for c, name in enumerate(classes):
      folder = root / split / name
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(per_class):
        h, w = size[0] + int(rng.integers(-8, 9)), size[1] + int(rng.integers(-8, 9))
        pixels = np.clip(colours[c] + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        if n % 5 == 2:
          image = image.convert("L")
        if n == 1:
          image = image.convert("RGBA")
        suffix = ".png" if n % 2 or image.mode == "RGBA" else (".JPG" if n % 4 == 0 else ".jpeg")
        image.save(folder / f"{name}_{i:03d}{suffix}")
        n += 1
  return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
  return write_image_folder(tmp_path_factory.mktemp("images") / "imagenet")


def _folder(root: Path, **kwargs) -> ImageFolder:
  return ImageFolder.scan(root, image_size=kwargs.pop("image_size", 32), num_workers=2, **kwargs)


# --- layout ----------------------------------------------------------------------------------------------


def test_layout_errors_say_what_is_expected(tmp_path, images):
  with pytest.raises(ZooError, match=r"does not exist; expected the layout root/train/<class>/\*\.jpg"):
    _folder(tmp_path / "missing")
  (tmp_path / "only_train" / "train" / "cat").mkdir(parents=True)
  Image.new("RGB", (8, 8)).save(tmp_path / "only_train" / "train" / "cat" / "a.png")
  with pytest.raises(ZooError, match=r"has no 'val' folder .*root/train/<class>"):
    _folder(tmp_path / "only_train")
  (tmp_path / "empty" / "train").mkdir(parents=True)
  with pytest.raises(ZooError, match="holds no class sub-folders"):
    _folder(tmp_path / "empty")
  (tmp_path / "only_train" / "train" / "dog").mkdir()
  (tmp_path / "only_train" / "train" / "dog" / "notes.txt").write_text("not an image")
  with pytest.raises(ZooError, match=r"class folder .*dog holds no images"):
    _folder(tmp_path / "only_train")
  extra = write_image_folder(tmp_path / "extra", per_class=1)
  (extra / "val" / "zebra").mkdir()
  Image.new("RGB", (8, 8)).save(extra / "val" / "zebra" / "z.png")
  with pytest.raises(ZooError, match="class folders that .*train lacks: zebra"):
    _folder(extra)
  with pytest.raises(ZooError, match=r"imagenet: .*cannot be downloaded automatically.*--data-dir"):
    load_dataset("imagenet", data_dir=str(tmp_path / "nowhere"))


def test_classes_labels_and_registered_loaders(tmp_path, images):
  folder = load_dataset("imagenet", data_dir=str(images.parent), image_size=32)
  assert isinstance(folder, ImageFolder) and folder.name == "imagenet"
  assert folder.classes == ("cat", "dog", "fish") and folder.num_classes == 3
  assert (folder.image_size, folder.train_size) == (32, 37)  # round(32 * 256 / 224)
  for split in ("train", "val"):
    assert folder.num_examples(split) == 18
    assert folder.labels[split].dtype == np.int32
    for path, label in zip(folder.files[split], folder.labels[split], strict=True):
      assert Path(path).parent.name == folder.classes[label]
  # The evaluation split may miss classes; labels stay the training split's indices.
  subset = write_image_folder(tmp_path / "subset", per_class=2)
  for p in (subset / "val" / "dog").iterdir():
    p.unlink()
  (subset / "val" / "dog").rmdir()
  folder = load_dataset("image_folder", root=str(subset), image_size=16, train_size=20)
  assert folder.train_size == 20 and list(folder.labels["val"]) == [0, 0, 2, 2]
  # max_train_examples keeps images spread over every class, not the first classes' images.
  assert list(folder.subset("train", 3).labels["train"]) == [0, 1, 2]
  with pytest.raises(ZooError, match="batch size 7 must be between 1 and the 6 images"):
    folder.batches("train", 7)  # Checked at the call, before any thread starts.


# --- decoding --------------------------------------------------------------------------------------------


def test_decoding_resizes_the_shorter_side_and_crops_the_centre(tmp_path, images):
  # 40 rows x 80 columns: black left and right quarters, white centre square. A centre crop after
  # resizing the shorter side sees only white; squashing the whole image would bring in the black.
  pixels = np.zeros((40, 80, 3), np.uint8)
  pixels[:, 20:60] = 255
  Image.fromarray(pixels).save(tmp_path / "wide.png")
  evaluation = image_folder.load_image(tmp_path / "wide.png", resize_to=37, crop=32)
  assert evaluation.shape == (32, 32, 3) and evaluation.dtype == np.uint8
  assert evaluation.min() >= 250
  training = image_folder.load_image(tmp_path / "wide.png", resize_to=37, crop=37)
  assert training.shape == (37, 37, 3) and training[:, 2:-2].min() >= 250
  gray = Image.fromarray(np.full((20, 30), 77, np.uint8))
  gray.save(tmp_path / "gray.jpg")
  np.testing.assert_allclose(image_folder.load_image(tmp_path / "gray.jpg", 16, 16), 77, atol=2)

  folder = _folder(images)
  train = next(folder.batches("train", 4, seed=0))
  assert train["input"].shape == (4, 37, 37, 3) and train["input"].dtype == np.uint8
  assert set(train) == {"input", "label"} and train["label"].dtype == np.int32
  val = next(folder.batches("val", 4))
  assert val["input"].shape == (4, 32, 32, 3) and set(val) == {"input", "label", "mask"}


def test_unreadable_file_is_an_error_naming_it(tmp_path):
  root = write_image_folder(tmp_path / "corrupt", per_class=2)
  bad = root / "val" / "dog" / "bad.jpg"  # Sorted first among the dogs: the second batch.
  bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
  folder = _folder(root)
  assert str(bad) in folder.files["val"]
  stream = folder.batches("val", 2)
  first = next(stream)  # The cat images decode; the batch holding the bad file never appears.
  assert first["input"].shape == (2, 32, 32, 3)
  with pytest.raises(ZooError, match=r"cannot decode the image .*dog/bad\.jpg"):
    next(stream)


# --- order, resumption, padding, threads -----------------------------------------------------------------


def test_training_order_is_a_function_of_seed_and_epoch_and_resumes_exactly(images):
  folder = _folder(images)
  n, batch, per_epoch = 18, 4, 4  # 18 // 4: two images are left out of each epoch
  assert folder.steps_per_epoch("train", batch) == per_epoch
  order = [folder.epoch_order("train", e, seed=7) for e in range(3)]
  np.testing.assert_array_equal(order[1], np.random.default_rng((7, 1)).permutation(n))
  assert not np.array_equal(order[0], order[1])

  stream = folder.batches("train", batch, seed=7)
  full = [next(stream) for _ in range(3 * per_epoch)]
  stream.close()
  for step, got in enumerate(full):
    epoch, k = divmod(step, per_epoch)
    idx = order[epoch][k * batch : (k + 1) * batch]
    np.testing.assert_array_equal(got["label"], folder.labels["train"][idx])
    want = np.stack([folder.load("train", i) for i in idx])
    np.testing.assert_array_equal(got["input"], want)
  # Resumed mid-epoch, the stream continues as the uninterrupted one, across the next epoch boundary.
  resumed = folder.batches("train", batch, seed=7, start_step=3)
  for step in range(3, 9):
    got = next(resumed)
    np.testing.assert_array_equal(got["input"], full[step]["input"])
    np.testing.assert_array_equal(got["label"], full[step]["label"])
  resumed.close()
  other = next(folder.batches("train", batch, seed=8))
  assert not np.array_equal(other["input"], full[0]["input"])


def test_resuming_does_not_decode_the_skipped_batches(images, monkeypatch):
  decoded = []
  real = image_folder.load_image
  monkeypatch.setattr(image_folder, "load_image", lambda *a: decoded.append(1) or real(*a))
  stream = _folder(images).batches("train", 4, seed=0, start_step=40, prefetch=1)
  next(stream)
  stream.close()
  assert 4 <= len(decoded) <= 3 * 4  # The batch read, at most the one queued and the one in progress.


def test_evaluation_pass_pads_the_last_batch_and_counts_every_image_once(images):
  folder = _folder(images)
  batches = list(folder.batches("val", 5))
  assert len(batches) == 4  # 18 images: 5 + 5 + 5 + 3
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 18 and list(mask[-2:]) == [0, 0]
  real = mask.astype(bool)
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[real], folder.labels["val"])
  inputs = np.concatenate([b["input"] for b in batches])
  assert not inputs[~real].any()  # Padding is zeros.
  np.testing.assert_array_equal(inputs[17], folder.load("val", 17))


def _stream_threads() -> list[threading.Thread]:
  return [t for t in threading.enumerate() if t.name.startswith(("zoo-batches", "zoo-decode"))]


def test_a_worker_exception_reaches_the_consumer_and_closing_stops_the_threads(images, monkeypatch):
  folder = _folder(images)
  stream = folder.batches("train", 4, seed=0)
  next(stream)
  assert _stream_threads()
  stream.close()
  assert not _stream_threads()

  def boom(*args):
    raise RuntimeError("decoder exploded")

  monkeypatch.setattr(image_folder, "load_image", boom)
  with pytest.raises(RuntimeError, match="decoder exploded"):
    next(folder.batches("train", 4, seed=0))
  assert not _stream_threads()


def test_prefetch_to_device_yields_the_same_batches_in_order(images):
  host = list(_folder(images).batches("val", 4))
  device = jax.devices()[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  for moved in (list(prefetch_to_device(iter(host), size=2)), list(prefetch_to_device(host, 3, sharding))):
    assert len(moved) == len(host)
    for a, b in zip(host, moved, strict=True):
      assert isinstance(b["input"], jax.Array) and b["input"].devices() == {device}
      for key in a:
        np.testing.assert_array_equal(a[key], np.asarray(b[key]))


# --- normalisation and random resized crops -------------------------------------------------------------


def test_fixed_normalizations_need_no_data():
  mean, std = normalization_stats(np.zeros((0, 8, 8, 3), np.uint8), "imagenet", 255.0)
  assert mean.shape == std.shape == (1, 1, 3)
  np.testing.assert_allclose(mean.ravel(), [0.485 * 255, 0.456 * 255, 0.406 * 255], rtol=1e-6)
  np.testing.assert_allclose(std.ravel(), [0.229 * 255, 0.224 * 255, 0.225 * 255], rtol=1e-6)
  mean, std = normalization_stats(np.zeros((5, 4, 4, 3), np.uint8), "inception", 255.0)
  np.testing.assert_allclose((np.array([0, 255]) - mean[..., :1].ravel()) / std[..., :1].ravel(), [-1, 1])
  with pytest.raises(ZooError, match="RGB images"):
    normalization_stats(np.zeros((5, 28, 28, 1), np.uint8), "imagenet", 255.0)


def test_random_resized_crop_shapes_identity_and_determinism():
  x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (6, 12, 12, 3)), jnp.float32)
  full = random_resized_crop(size=12, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_array_equal(full(x, jax.random.key(0)), x)
  # A full-scale square box resized to 20: bilinear resizing (half-pixel centres, edges repeated).
  up = random_resized_crop(size=20, scale=(1.0, 1.0), ratio=(1.0, 1.0))(x, jax.random.key(0))
  want = jax.image.resize(x, (6, 20, 20, 3), "linear", antialias=False)
  np.testing.assert_allclose(up, want, atol=1e-3)
  images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (16, 37, 37, 3)), jnp.uint8)
  augment = create_augmentation({"random_resized_crop": {"size": 32}, "horizontal_flip": {}})
  a, b = augment(images, jax.random.key(3)), augment(images, jax.random.key(3))
  assert a.shape == (16, 32, 32, 3) and a.dtype == jnp.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, augment(images, jax.random.key(4)))
  # Different boxes per example: the same image repeated gives different crops.
  same = jnp.broadcast_to(images[:1], images.shape)
  crops = np.asarray(random_resized_crop(size=16)(same, jax.random.key(5)))
  assert len({c.tobytes() for c in crops}) == len(crops)
  with pytest.raises(ZooError, match="scale must be"):
    random_resized_crop(size=8, scale=(0.5, 1.5))
  with pytest.raises(ZooError, match="size must be a positive integer"):
    random_resized_crop(size=0)


def test_small_box_crops_come_from_inside_the_image():
  # Each image is constant 200 inside and the crops never reach outside it, so no value but 200 appears.
  images = jnp.full((32, 20, 30, 1), 200, jnp.uint8)
  crops = random_resized_crop(size=8, scale=(0.05, 0.3), ratio=(0.5, 2.0))(images, jax.random.key(0))
  assert crops.shape == (32, 8, 8, 1) and np.all(np.asarray(crops) == 200)


# --- the trainer ----------------------------------------------------------------------------------------


def _leaves_equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_batch_train_step_equals_the_gathering_step():
  from zoo.config import OptimizerConfig, ScheduleConfig
  from zoo.models import create_model
  from zoo.optim import create_optimizer, create_schedule
  from zoo.tasks import create_task
  from zoo.train.state import create_train_state
  from zoo.train.steps import make_batch_train_step, make_train_step

  rng = np.random.default_rng(0)
  data = {"input": jnp.asarray(rng.integers(0, 256, (16, 6, 6, 3)), jnp.uint8), "label": jnp.arange(16) % 3}
  model = create_model("mlp", hidden_sizes=(8,), dropout=0.5, num_classes=3)
  schedule = create_schedule(ScheduleConfig("cosine"), 0.1, 10, 4)
  tx = create_optimizer(OptimizerConfig("nesterov"), schedule)
  augment = create_augmentation({"random_crop": {"padding": 1}})
  kw = dict(steps_per_epoch=4, preprocess=lambda x: x.astype(jnp.float32) / 255, augment=augment)
  gather = make_train_step(model, tx, create_task("classification"), schedule, batch_size=4, **kw)
  streamed = make_batch_train_step(model, tx, create_task("classification"), schedule, **kw)
  perm = jnp.asarray(rng.permutation(16))
  a = create_train_state(model, tx, data["input"][:4], jax.random.key(0))
  b = create_train_state(model, tx, data["input"][:4], jax.random.key(0))
  for step in range(6):
    a, metrics_a = gather(a, data, perm, jax.random.key(1))
    idx = perm[(step % 4) * 4 :][:4]
    b, metrics_b = streamed(b, {k: v[idx] for k, v in data.items()}, jax.random.key(1))
    assert float(metrics_a["loss"]) == float(metrics_b["loss"])
  assert _leaves_equal(a.params, b.params) and streamed.traces() == 1


def _smoke(name: str, data_dir: Path, **overrides):
  config = get_config(name, smoke=True)
  config.data.data_dir = str(data_dir)
  config.data.kwargs["num_workers"] = 2
  for key, value in overrides.items():
    section, _, field = key.rpartition("__")
    setattr(getattr(config, section) if section else config, field, value)
  return config


def test_imagenet_resnet50_smoke_trains_evaluates_reports_and_resumes(images, tmp_path):
  data_dir = images.parent  # <data_dir>/imagenet is the generated folder.
  # The rate of the first 3 steps must not depend on the run's length (3 or 5 steps): warm up over 2.
  schedule = {"warmup_steps": 2}
  config = _smoke("imagenet_resnet50", data_dir, schedule__kwargs=schedule)
  assert config.model.kwargs["dtype"] == "bfloat16"
  result = train_and_evaluate(config, tmp_path / "run", progress=False)
  assert result["step"] == 3 and 0 <= result["test"]["accuracy"] <= 1 and result["test"]["loss"] > 0
  assert result["report"]["accuracy"] == pytest.approx(result["test"]["accuracy"])
  assert (tmp_path / "run" / "confusion.png").exists()
  params = result["state"].params
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}

  longer = _smoke("imagenet_resnet50", data_dir, steps=5, schedule__kwargs=schedule)
  resumed = train_and_evaluate(longer, tmp_path / "run", progress=False)  # From the step-3 checkpoint.
  straight = train_and_evaluate(longer, tmp_path / "straight", progress=False)
  assert resumed["step"] == straight["step"] == 5
  assert _leaves_equal(resumed["state"].params, straight["state"].params)
  assert _leaves_equal(resumed["state"].model_state, straight["state"].model_state)
  assert not _leaves_equal(params, straight["state"].params)
  assert resumed["test"] == pytest.approx(straight["test"])


def test_streaming_refuses_what_needs_the_data_in_memory(images, tmp_path):
  for overrides, message in (
    (dict(data__normalization="channel"), "use 'imagenet'"),
    (dict(data__validation_split=0.2), "set data.validation_split=0"),
    (dict(data__augment={"horizontal_flip": {}}), "add random_resized_crop with size=32"),
  ):
    config = _smoke("imagenet_resnet50", images.parent, **overrides)
    with pytest.raises(ZooError, match=message):
      loop.build(config)
  config = _smoke("imagenet_resnet50", images.parent)
  config.averaging.swa_start_epoch = 1
  with pytest.raises(ZooError, match="use averaging.ema_decay"):
    loop.build(config)
  exp = loop.build(_smoke("imagenet_vit_b16", images.parent))
  assert exp.streaming and exp.steps_per_epoch == 18 // 8 and exp.model.drop_path == 0.1
