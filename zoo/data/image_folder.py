"""Image folders streamed from disk (torchvision's ImageFolder layout; ImageNet, Russakovsky et al. 2015):
JPEG/PNG files decoded by PIL in worker threads, batches prefetched on the host and onto the device."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import math
import os
import pathlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

from zoo.data.datasets import DATASETS
from zoo.data.download import resolve_data_dir
from zoo.registry import ZooError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Evaluation resizes the shorter side to image_size * 256/224 and crops the centre: the 224-of-256 crops
# of AlexNet and the ResNet paper, which ImageNet recipes since keep.
RESIZE_RATIO = 256 / 224
LAYOUT = (
  "root/train/<class>/*.jpg and root/val/<class>/*.jpg (one sub-folder of JPEG or PNG images per class)"
)

Batch = dict[str, np.ndarray]


def resize_size(image_size: int) -> int:
  """The shorter side evaluation images are resized to before their centre `image_size` crop (224 -> 256)."""
  return round(image_size * RESIZE_RATIO)


def load_image(path: str | os.PathLike, resize_to: int, crop: int) -> np.ndarray:
  """One image as (crop, crop, 3) uint8 RGB: its shorter side resized (bilinear) to `resize_to`, then the
  centre crop. Grayscale, palette and RGBA images become RGB (alpha is dropped).

  Raises ZooError naming the file when PIL cannot read it.
  """
  from PIL import Image

  try:
    with Image.open(path) as img:
      # JPEG only: decode straight at 1/2, 1/4 or 1/8 scale while both sides stay >= resize_to (DCT
      # scaling, several times faster for photos much larger than the target).
      img.draft("RGB", (resize_to, resize_to))
      img = img.convert("RGB")
  except Exception as e:  # noqa: BLE001 - whatever PIL raises for a bad file, the user needs its name.
    raise ZooError(f"cannot decode the image {path}: {type(e).__name__}: {e}") from e
  w, h = img.size
  scale = resize_to / min(w, h)
  size = (max(resize_to, round(w * scale)), max(resize_to, round(h * scale)))
  img = img.resize(size, Image.Resampling.BILINEAR)
  # The crop's offset rounded as torchvision's center_crop rounds it.
  left, top = round((size[0] - crop) / 2), round((size[1] - crop) / 2)
  return np.asarray(img.crop((left, top, left + crop, top + crop)), np.uint8)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)  # eq/hash by identity: fields hold arrays.
class ImageFolder:
  """A classification dataset kept on disk, one sub-folder of images per class: `root/<split>/<class>/*`.

  `classes` are the training split's sub-folder names, sorted; a class's label is its index there (the
  evaluation split may hold fewer classes, not other ones). `files[split]` lists every image of a split,
  sorted by class then file name, with `labels[split]` (int32) alongside.

  Training images are decoded at `train_size` x `train_size` (the shorter side resized to it, the centre
  cropped) and cut to the model's `image_size` on the device by an augmentation such as
  random_resized_crop; evaluation images are resized to `resize_size(image_size)` and centre-cropped to
  `image_size`. Batches come from `batches()`, a stream decoded in `num_workers` threads.
  """

  name: str
  root: pathlib.Path
  classes: tuple[str, ...]
  files: dict[str, tuple[str, ...]]
  labels: dict[str, np.ndarray]
  image_size: int
  train_size: int
  train_split: str = "train"
  eval_split: str = "val"
  num_workers: int = 8
  pixel_max: float = 255.0  # uint8 images: what 'scale' normalisation maps to 1.0

  @classmethod
  def scan(
    cls,
    root: str | os.PathLike,
    *,
    image_size: int = 224,
    train_size: int | None = None,
    train_split: str = "train",
    eval_split: str = "val",
    num_workers: int | None = None,
    name: str = "image_folder",
  ) -> ImageFolder:
    """Lists the images under `root` (nothing is decoded). `train_size` defaults to `resize_size(image_size)`
    and `num_workers` to the number of CPUs."""
    root = pathlib.Path(root).expanduser()
    if image_size < 1 or (train_size is not None and train_size < 1):
      raise ZooError(f"{name}: image_size and train_size must be positive, got {image_size}, {train_size}")
    if num_workers is not None and num_workers < 1:
      raise ZooError(f"{name}: num_workers must be at least 1, got {num_workers}")
    if train_split == eval_split:
      raise ZooError(f"{name}: train_split and eval_split are both {train_split!r}")
    if not root.is_dir():
      raise ZooError(f"{name}: the image folder {root} does not exist; expected the layout {LAYOUT}")
    train = _scan_split(root, train_split, name)
    if not train:
      raise ZooError(f"{name}: {root / train_split} holds no class sub-folders; expected the layout {LAYOUT}")
    classes = tuple(sorted(train))
    evaluation = _scan_split(root, eval_split, name)
    if not evaluation:
      raise ZooError(f"{name}: {root / eval_split} holds no class sub-folders; expected the layout {LAYOUT}")
    unknown = sorted(set(evaluation) - set(classes))
    if unknown:
      raise ZooError(
        f"{name}: {root / eval_split} has class folders that {root / train_split} lacks: "
        f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} (labels are the training classes)"
      )
    label_of = {c: i for i, c in enumerate(classes)}
    files, labels = {}, {}
    for split, found in ((train_split, train), (eval_split, evaluation)):
      files[split] = tuple(f for c in sorted(found) for f in found[c])
      labels[split] = np.asarray([label_of[c] for c in sorted(found) for _ in found[c]], np.int32)
    return cls(
      name=name,
      root=root,
      classes=classes,
      files=files,
      labels=labels,
      image_size=image_size,
      train_size=train_size or resize_size(image_size),
      train_split=train_split,
      eval_split=eval_split,
      num_workers=num_workers or os.cpu_count() or 1,
    )

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def num_examples(self, split: str) -> int:
    return len(self._files(split))

  def input_shape(self, split: str | None = None) -> tuple[int, int, int]:
    """The shape of one decoded image of `split` (default: the evaluation split, i.e. the model's input)."""
    size = self.train_size if split == self.train_split else self.image_size
    return (size, size, 3)

  def subset(self, split: str, n: int | None) -> ImageFolder:
    """At most `n` images of `split`, evenly spaced through its sorted list (so every class keeps its
    share); None keeps them all."""
    files = self._files(split)
    if n is None or n >= len(files):
      return self
    if n < 1:
      raise ZooError(f"{self.name}: cannot keep {n} images of split {split!r}")
    keep = np.arange(n) * len(files) // n
    return dataclasses.replace(
      self,
      files={**self.files, split: tuple(files[i] for i in keep)},
      labels={**self.labels, split: self.labels[split][keep]},
    )

  def load(self, split: str, index: int, *, training: bool | None = None) -> np.ndarray:
    """Image `index` of `split`, decoded as `batches` decodes it."""
    resize_to, crop = self._decode_sizes(split == self.train_split if training is None else training)
    return load_image(self._files(split)[index], resize_to, crop)

  def epoch_order(self, split: str, epoch: int, seed: int) -> np.ndarray:
    """The shuffled order of `split`'s images in `epoch`: a function of (seed, epoch) only."""
    return np.random.default_rng((seed, epoch)).permutation(self.num_examples(split))

  def steps_per_epoch(self, split: str, batch_size: int, drop_remainder: bool = True) -> int:
    n = self.num_examples(split)
    return n // batch_size if drop_remainder else math.ceil(n / batch_size)

  def batches(
    self,
    split: str,
    batch_size: int,
    *,
    seed: int = 0,
    start_step: int = 0,
    training: bool | None = None,
    shuffle: bool | None = None,
    drop_remainder: bool | None = None,
    repeat: bool | None = None,
    num_workers: int | None = None,
    prefetch: int = 2,
  ) -> Iterator[Batch]:
    """A stream of host batches {"input": (B, H, W, 3) uint8, "label": (B,) int32}.

    `training` (default: `split` is the training split) picks the decoding (train_size or the evaluation
    resize and crop) and the defaults of the rest: a training stream is shuffled, drops each epoch's last
    partial batch and repeats epoch after epoch; otherwise it is one pass in file order whose last batch
    is padded with zeros, and every batch has a "mask" (B,) float32, 0 on padding.

    Epoch e's order is `epoch_order(split, e, seed)`; batch s of the stream (counted from the first batch
    of epoch 0) is the same whatever `start_step` it starts at, and batches before `start_step` are never
    decoded, so a resumed run sees exactly the batches an uninterrupted one would.

    Images are decoded in a pool of `num_workers` threads (default: the folder's), and a background thread
    keeps up to `prefetch` ready batches queued. An exception while decoding (a ZooError naming an
    unreadable file) is raised here, before any part of its batch; closing the generator stops the threads.
    """
    training = split == self.train_split if training is None else training
    shuffle = training if shuffle is None else shuffle
    drop_remainder = training if drop_remainder is None else drop_remainder
    repeat = training if repeat is None else repeat
    files, labels = self._files(split), self.labels[split]
    n = len(files)
    if not 0 < batch_size <= n:
      raise ZooError(
        f"{self.name}: batch size {batch_size} must be between 1 and the {n} images of {split!r}"
      )
    if start_step < 0 or prefetch < 1:
      raise ZooError(f"{self.name}: start_step must be >= 0 and prefetch >= 1, got {start_step}, {prefetch}")
    per_epoch = self.steps_per_epoch(split, batch_size, drop_remainder)
    resize_to, crop = self._decode_sizes(training)
    steps: Iterable[int] = itertools.count(start_step) if repeat else range(start_step, per_epoch)

    order: dict[int, np.ndarray] = {}  # The current epoch's.

    def indices(step: int) -> np.ndarray:
      epoch, k = divmod(step, per_epoch)
      if epoch not in order:
        order.clear()
        order[epoch] = self.epoch_order(split, epoch, seed) if shuffle else np.arange(n)
      return order[epoch][k * batch_size : (k + 1) * batch_size]

    def assemble(pool: concurrent.futures.Executor, idx: np.ndarray) -> Batch:
      images = np.zeros((batch_size, crop, crop, 3), np.uint8)  # Fresh each time: the device may alias it.

      def fill(j: int) -> None:
        images[j] = load_image(files[idx[j]], resize_to, crop)

      for _ in pool.map(fill, range(len(idx))):  # Re-raises the first failure, before the batch exists.
        pass
      label = np.zeros(batch_size, np.int32)
      label[: len(idx)] = labels[idx]
      batch = {"input": images, "label": label}
      if not drop_remainder:
        batch["mask"] = (np.arange(batch_size) < len(idx)).astype(np.float32)
      return batch

    return _threaded(assemble, steps, indices, num_workers or self.num_workers, prefetch)

  def _files(self, split: str) -> tuple[str, ...]:
    if split not in self.files:
      raise ZooError(f"{self.name} has no split {split!r}; its splits: {', '.join(self.files)}")
    return self.files[split]

  def _decode_sizes(self, training: bool) -> tuple[int, int]:
    """(shorter side after resizing, centre crop) of a training or an evaluation image."""
    if training:
      return self.train_size, self.train_size
    return resize_size(self.image_size), self.image_size

  def __repr__(self) -> str:
    counts = ", ".join(f"{split}={len(files)}" for split, files in self.files.items())
    return (
      f"ImageFolder({self.name!r}, {self.root}, {counts}, num_classes={self.num_classes}, "
      f"image_size={self.image_size}, train_size={self.train_size})"
    )


_END = object()


@dataclasses.dataclass
class _Failure:
  error: BaseException


def _threaded(
  assemble: Callable[[concurrent.futures.Executor, np.ndarray], Batch],
  steps: Iterable[int],
  indices: Callable[[int], np.ndarray],
  num_workers: int,
  prefetch: int,
) -> Iterator[Batch]:
  """`assemble(pool, indices(step))` for each step, built by a background thread that decodes in a pool of
  `num_workers` threads and keeps up to `prefetch` batches queued; its exceptions are raised here."""
  ready: queue.Queue = queue.Queue(maxsize=prefetch)
  stop = threading.Event()
  pool = concurrent.futures.ThreadPoolExecutor(num_workers, "zoo-decode")

  def put(item: Any) -> bool:
    while not stop.is_set():  # A timeout, so that a closed stream's producer notices and ends.
      try:
        ready.put(item, timeout=0.05)
        return True
      except queue.Full:
        pass
    return False

  def produce() -> None:
    try:
      for step in steps:
        if not put(assemble(pool, indices(step))):
          return
      put(_END)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it.
      put(_Failure(e))

  producer = threading.Thread(target=produce, name="zoo-batches", daemon=True)
  producer.start()
  try:
    while True:
      item = ready.get()
      if item is _END:
        return
      if isinstance(item, _Failure):
        raise item.error
      yield item
  finally:
    stop.set()
    pool.shutdown(wait=False, cancel_futures=True)  # Drops the queued images; the producer sees it.
    producer.join()
    pool.shutdown(wait=True)  # The images being decoded finish; then no thread of this stream is left.


def _scan_split(root: pathlib.Path, split: str, name: str) -> dict[str, list[str]]:
  """{class folder name: its image paths, sorted} for root/<split>; hidden entries are skipped."""
  directory = root / split
  if not directory.is_dir():
    raise ZooError(f"{name}: {root} has no {split!r} folder ({directory}); expected the layout {LAYOUT}")
  found = {}
  for entry in sorted(os.scandir(directory), key=lambda e: e.name):
    if entry.name.startswith(".") or not entry.is_dir():
      continue
    images = sorted(
      f.path
      for f in os.scandir(entry.path)
      if f.name.lower().endswith(IMAGE_EXTENSIONS) and not f.name.startswith(".") and f.is_file()
    )
    if not images:
      raise ZooError(
        f"{name}: the class folder {entry.path} holds no images ({', '.join(IMAGE_EXTENSIONS)}, any case)"
      )
    found[entry.name] = images
  return found


def prefetch_to_device(iterator: Iterable[Any], size: int = 2, sharding: Any = None) -> Iterator[Any]:
  """Yields the items (pytrees of arrays) of `iterator` moved to the device, keeping `size` of them already
  transferred (`jax.device_put` is asynchronous) ahead of the consumer, placed by `sharding` when given.
  Closing it closes `iterator`."""
  if size < 1:
    raise ZooError(f"prefetch_to_device: size must be at least 1, got {size}")
  iterator = iter(iterator)
  ahead: collections.deque = collections.deque()

  def enqueue(n: int) -> None:
    for item in itertools.islice(iterator, n):
      ahead.append(jax.device_put(item, sharding) if sharding is not None else jax.device_put(item))

  try:
    enqueue(size)
    while ahead:
      yield ahead.popleft()
      enqueue(1)
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()


# --- the datasets -----------------------------------------------------------------------------------------


@DATASETS.register(name="image_folder")
def _image_folder(
  root: str,
  image_size: int = 224,
  train_size: int | None = None,
  train_split: str = "train",
  eval_split: str = "val",
  num_workers: int | None = None,
) -> ImageFolder:
  """Any folder of class sub-folders, root/<train_split>/<class>/*.jpg and root/<eval_split>/<class>/*.jpg,
  streamed from disk (see ImageFolder)."""
  return ImageFolder.scan(
    root,
    image_size=image_size,
    train_size=train_size,
    train_split=train_split,
    eval_split=eval_split,
    num_workers=num_workers,
  )


@DATASETS.register(name="imagenet")
def _imagenet(
  *,
  data_dir: str | None = None,
  image_size: int = 224,
  train_size: int | None = None,
  num_workers: int | None = None,
) -> ImageFolder:
  """ImageNet ILSVRC-2012 (Russakovsky et al. 2015): 1,281,167 training and 50,000 validation images of
  1,000 classes, streamed from <data_dir>/imagenet/{train,val}/<wnid>/*.JPEG (data_dir: the argument, else
  $ZOO_DATA_DIR)."""
  base = resolve_data_dir(data_dir)
  root = base / "imagenet" if base else None
  if root is None or not root.is_dir():
    where = f"{root} does not exist" if root else "no data folder is set"
    raise ZooError(
      f"imagenet: {where}. ImageNet cannot be downloaded automatically (its terms of access require "
      f"signing in at image-net.org): download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar there, "
      f"unpack them as <data_dir>/imagenet/train/<wnid>/*.JPEG and <data_dir>/imagenet/val/<wnid>/*.JPEG "
      f"(the validation images moved into their class folders, as for torchvision's ImageFolder), and "
      f"pass --data-dir <data_dir> or set ZOO_DATA_DIR."
    )
  return ImageFolder.scan(
    root, image_size=image_size, train_size=train_size, num_workers=num_workers, name="imagenet"
  )
