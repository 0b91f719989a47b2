"""Datasets by name (digits, MNIST, Fashion-MNIST, XOR, synthetic); normalisation fitted on training data."""

from __future__ import annotations

import dataclasses
import gzip
import inspect
import math
import os
import pathlib
import typing
from collections.abc import Callable

import numpy as np

from zoo.config import check_type
from zoo.data.download import fetch, verify
from zoo.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from zoo.registry import Registry, ZooError, call_with_checked_kwargs


@dataclasses.dataclass(frozen=True, eq=False, repr=False)  # eq/hash by identity: fields are arrays.
class Dataset:
  """A dataset held in host memory, split into train and test (and, where the dataset defines one, an
  official validation split `x_val`/`y_val`, e.g. SST's dev set).

  Images are (N, H, W, C) uint8; tabular data is (N, D) float32 or uint8. Classification labels are (N,)
  int32 in [0, num_classes). Regression targets are float32, (N,) for one target or (N, T) for T targets;
  `num_classes` is then the number of targets T (1 for (N,)): the width of the model's output layer.
  `pixel_max` is the input value that 'scale' normalisation maps to 1.0.

  With `tokens`, inputs are int32 token ids (N, T) (0 = padding where sequences differ in length), never
  normalised or augmented, and labels may be per position, (N, T) int32 (a language model's next tokens);
  `vocab` lists the token strings (a str of characters, or a tuple of words), token i being vocab[i].

  With a `context` (a dict of arrays shared by every example, e.g. a graph's node features and edges),
  inputs are int32 indices into it (N,) (e.g. node ids), never normalised: the model is given
  {**context, "index": the batch's indices} and returns the batch's outputs (full-batch graph training
  is a batch of all the training nodes).
  """

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  pixel_max: float
  tokens: bool = False
  vocab: str | tuple[str, ...] | None = None
  x_val: np.ndarray | None = None
  y_val: np.ndarray | None = None
  context: dict[str, np.ndarray] | None = None

  def __post_init__(self):
    splits = [(self.x_train, self.y_train, "train"), (self.x_test, self.y_test, "test")]
    if (self.x_val is None) != (self.y_val is None):
      raise ValueError(f"dataset {self.name!r}: x_val and y_val come together")
    if self.x_val is not None:
      splits.append((self.x_val, self.y_val, "validation"))
    if self.context is not None and (self.x_train.dtype != np.int32 or self.x_train.ndim != 1):
      raise ValueError(f"dataset {self.name!r}: inputs into a context are (N,) int32 indices")
    if self.tokens and (self.x_train.dtype != np.int32 or self.vocab is None):
      raise ValueError(f"dataset {self.name!r}: token inputs are int32 ids + vocab, not {self.x_train.dtype}")
    for x, y, split in splits:
      if y.dtype == np.int32:
        label_ok = y.ndim == 1 or (self.tokens and y.shape == x.shape)
      elif y.dtype == np.float32:
        label_ok = (y.ndim == 1 and self.num_classes == 1) or (y.ndim == 2 and y.shape[1] == self.num_classes)
      else:
        label_ok = False
      if (
        not label_ok
        or len(x) != len(y)
        or y.dtype != self.y_train.dtype
        or x.dtype != self.x_train.dtype
        or x.shape[1:] != self.x_train.shape[1:]
      ):
        raise ValueError(
          f"dataset {self.name!r}: inconsistent {split} split {x.shape} {x.dtype} {y.shape} {y.dtype} "
          f"(labels are (N,) int32, or (N, T) int32 per token position for token inputs; regression targets "
          f"(N,) float32 with num_classes=1 or (N, T) float32 with num_classes=T; here "
          f"num_classes={self.num_classes})"
        )

  @property
  def is_regression(self) -> bool:
    """Whether `y` holds float regression targets rather than integer class labels."""
    return self.y_train.dtype == np.float32

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.x_train.shape[1:])

  def __repr__(self) -> str:
    return (
      f"Dataset({self.name!r}, train={self.x_train.shape} {self.x_train.dtype}, test={self.x_test.shape}, "
      f"num_classes={self.num_classes}, pixel_max={self.pixel_max})"
    )


DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")


def register_dataset(fn: Callable[..., Dataset]) -> Callable[..., Dataset]:
  """Registers a loader under its function name; it returns a Dataset and may take a `data_dir` keyword."""
  return DATASETS.register(fn)


def list_datasets(pattern: str = "*") -> list[str]:
  return DATASETS.list(pattern)


def load_dataset(name: str, data_dir: str | None = None, **kwargs: typing.Any) -> typing.Any:
  """Loads the dataset `name` with the loader's `kwargs`: a Dataset held in memory, or for datasets too
  large for it (image_folder, imagenet) a zoo.data.ImageFolder streamed from disk.

  Args:
    name: a registered dataset (`list_datasets()`).
    data_dir: a folder of local dataset files (default: $ZOO_DATA_DIR); else files are downloaded and cached.
    **kwargs: the loader's arguments, checked by name and type.
  """
  fn = DATASETS.get(name)
  try:
    hints = typing.get_type_hints(fn)
  except Exception:  # A loader with unresolvable annotations: its arguments go through unconverted.
    hints = {}
  kwargs = {k: check_type(v, hints[k], f"data.kwargs.{k}") if k in hints else v for k, v in kwargs.items()}
  if "data_dir" in inspect.signature(fn).parameters:
    kwargs["data_dir"] = data_dir or os.environ.get("ZOO_DATA_DIR") or None
  return call_with_checked_kwargs("dataset", name, fn, kwargs)


# --- normalisation ----------------------------------------------------------------------------------------

NORMALIZATION_MODES = ("none", "scale", "channel", "feature", "imagenet", "inception", "symmetric")
FITTED_NORMALIZATIONS = ("channel", "feature")  # the modes that need the whole training split
# Published RGB statistics, as fractions of pixel_max: ImageNet's training-set means and standard
# deviations (torchvision's, timm's IMAGENET_DEFAULT_*), and Inception's map to [-1, 1] (timm's
# IMAGENET_INCEPTION_*; the ViT paper's code and big_vision).
FIXED_RGB_STATS = {
  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
  "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def normalization_stats(x_train: np.ndarray, mode: str, pixel_max: float) -> tuple[np.ndarray, np.ndarray]:
  """The float32 (mean, std) that standardise inputs as `(x - mean) / std`, fitted on `x_train`.

  Modes: 'none' -> (0, 1); 'scale' -> (0, pixel_max); 'channel' -> one mean/std per last-axis channel over
  all training pixels, shaped (1, ..., 1, C) like one example; 'feature' -> one mean/std per input feature,
  shaped like one example (as sklearn's StandardScaler). A constant channel or feature gets std 1.
  'symmetric' -> (pixel_max / 2, pixel_max / 2): inputs in [-1, 1], a tanh generator's range (GANs).
  'imagenet' and 'inception' -> fixed RGB statistics (FIXED_RGB_STATS) times pixel_max, shaped
  (1, ..., 1, 3); these read only `x_train.shape`, which may hold no examples (a streamed dataset's).
  """
  if mode == "none":
    return np.zeros((), np.float32), np.ones((), np.float32)
  if mode in ("scale", "symmetric", *FIXED_RGB_STATS) and not pixel_max > 0:
    raise ZooError(f"{mode!r} normalisation needs a positive pixel_max, got {pixel_max}")
  if mode == "scale":
    return np.zeros((), np.float32), np.asarray(pixel_max, np.float32)
  if mode == "symmetric":
    half = np.asarray(pixel_max / 2, np.float32)
    return half, half
  if mode in FIXED_RGB_STATS:
    if x_train.ndim < 2 or x_train.shape[-1] != 3:
      raise ZooError(
        f"{mode!r} normalisation is for RGB images (..., 3), not inputs of shape {x_train.shape[1:]}"
      )
    shape = (1,) * (x_train.ndim - 2) + (3,)
    mean, std = (
      np.asarray(s, np.float32).reshape(shape) * np.float32(pixel_max) for s in FIXED_RGB_STATS[mode]
    )
    return mean, std
  if mode not in NORMALIZATION_MODES:
    raise ZooError(f"unknown normalisation {mode!r}; the modes are: {', '.join(NORMALIZATION_MODES)}")
  if x_train.ndim < 2 or len(x_train) == 0:
    raise ZooError(f"cannot fit {mode!r} normalisation on training inputs of shape {x_train.shape}")
  axes = tuple(range(x_train.ndim - 1)) if mode == "channel" else (0,)
  mean, std = _moments(x_train, axes)
  std[std == 0] = 1.0
  return mean[0].astype(np.float32), std[0].astype(np.float32)


def _moments(x: np.ndarray, axes: tuple[int, ...], chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Mean and population std over `axes` (kept as size 1), in float64, two passes over chunks of examples.

  Chunks keep the float64 working copy small (all of MNIST in float64 is 376 MB); two passes avoid the
  cancellation of E[x^2] - E[x]^2.
  """
  count = math.prod(x.shape[a] for a in axes)
  starts = range(0, len(x), chunk)
  mean = sum(np.sum(x[i : i + chunk], axis=axes, keepdims=True, dtype=np.float64) for i in starts) / count
  sq = sum(np.sum((x[i : i + chunk] - mean) ** 2, axis=axes, keepdims=True) for i in starts)
  return mean, np.sqrt(sq / count)


# --- the datasets -----------------------------------------------------------------------------------------

_DIGITS_PATH = pathlib.Path(__file__).with_name("digits.csv.gz")
_DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"


@register_dataset
def digits(test_fraction: float = 0.2, seed: int = 42, stratify: bool = False) -> Dataset:
  """The 8x8 handwritten digits (1,797 images, values 0..16; the UCI optdigits test set as in scikit-learn).

  By default the split is the reference notebook's: scikit-learn's `train_test_split(test_size=0.2,
  random_state=42)`, i.e. the first `ceil(test_fraction * N)` images (360 for 0.2) of
  `np.random.RandomState(seed).permutation(N)` are the test split and the rest the training split, in that
  order. `stratify=True` instead gives each class a test share proportional to its size.
  """
  if not 0 < test_fraction < 1:
    raise ZooError(f"digits: test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
  _check_seed("digits", seed, below=2**32)  # RandomState's range
  with gzip.open(verify(_DIGITS_PATH, _DIGITS_SHA256), "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  if table.shape != (1797, 65) or table.min() < 0 or table[:, :64].max() > 16 or table[:, 64].max() > 9:
    raise ZooError(f"{_DIGITS_PATH} does not hold the 1,797 8x8 digits; reinstall the zoo package")
  x = table[:, :64].astype(np.uint8).reshape(-1, 8, 8, 1)
  y = table[:, 64].astype(np.int32)
  if stratify:
    test = stratified_test_indices(y, test_fraction, np.random.default_rng(seed))
    train = np.setdiff1d(np.arange(len(y)), test)  # Both keep the file's order, in which classes are mixed.
  else:
    perm = np.random.RandomState(seed).permutation(len(y))  # As scikit-learn's ShuffleSplit draws it.
    n_test = math.ceil(test_fraction * len(y))
    test, train = perm[:n_test], perm[n_test:]
  return Dataset("digits", x[train], y[train], x[test], y[test], num_classes=10, pixel_max=16.0)


def stratified_test_indices(y: np.ndarray, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
  """`ceil(test_fraction * len(y))` sorted indices, each class's share proportional to its size."""
  classes, counts = np.unique(y, return_counts=True)
  n_test = math.ceil(test_fraction * len(y))
  quota = counts * n_test / len(y)
  per_class = np.floor(quota).astype(int)
  # Hand the seats left over to the largest remainders; a stable sort breaks ties by class order.
  extra = np.argsort(-(quota - per_class), kind="stable")[: n_test - per_class.sum()]
  per_class[extra] += 1
  if np.any(per_class >= counts) or np.any(per_class == 0):
    raise ZooError(f"test_fraction={test_fraction} leaves some class with no train or no test examples")
  picks = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, per_class, strict=True)]
  return np.sort(np.concatenate(picks))


_MNIST_URLS = (  # Mirrors first: the original site often answers HTTP 403 now.
  "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's mirror
  "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TFDS's mirror
  "http://yann.lecun.com/exdb/mnist/",
)
_MNIST_SHA256 = {
  "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
  "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
  "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
  "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_FASHION_URLS = (
  "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
  "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
_FASHION_SHA256 = {
  "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
  "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
  "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
  "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}


def _load_idx(name: str, urls: tuple[str, ...], sha256: dict[str, str], data_dir: str | None) -> Dataset:
  def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    paths = {}
    for kind in ("images-idx3", "labels-idx1"):
      file = f"{prefix}-{kind}-ubyte.gz"
      paths[kind] = fetch(f"{name}/{file}", [u + file for u in urls], sha256[file], data_dir=data_dir)
    images = read_idx(paths["images-idx3"], magic=IMAGES_MAGIC)
    labels = read_idx(paths["labels-idx1"], magic=LABELS_MAGIC)
    if images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max(initial=0) > 9:
      raise ZooError(
        f"{paths['images-idx3']} and {paths['labels-idx1']} do not form a {name} split: "
        f"images {images.shape}, labels {labels.shape} with largest label {labels.max(initial=0)}"
      )
    return images[..., None], labels.astype(np.int32)

  (x_train, y_train), (x_test, y_test) = split("train"), split("t10k")
  return Dataset(name, x_train, y_train, x_test, y_test, num_classes=10, pixel_max=255.0)


@register_dataset
def mnist(*, data_dir: str | None = None) -> Dataset:
  """MNIST (LeCun et al., 1998): 60,000 + 10,000 handwritten digits, 28x28 grey."""
  return _load_idx("mnist", _MNIST_URLS, _MNIST_SHA256, data_dir)


@register_dataset
def fashion_mnist(*, data_dir: str | None = None) -> Dataset:
  """Fashion-MNIST (Xiao et al., 2017): 60,000 + 10,000 Zalando article images, 28x28 grey, 10 classes."""
  return _load_idx("fashion_mnist", _FASHION_URLS, _FASHION_SHA256, data_dir)


@register_dataset
def binarized_mnist(*, data_dir: str | None = None, seed: int = 0) -> Dataset:
  """MNIST stochastically binarised once (as Salakhutdinov & Murray 2008 made the binarised MNIST that
  density models report likelihoods on): each pixel is 255 with probability grey / 255, else 0, drawn
  with numpy's PCG64 seeded by `seed`, so every run sees the same binary images. Values 0 or 255 (uint8):
  with the 'scale' normalisation the inputs are exactly 0 and 1, a proper Bernoulli target."""
  _check_seed("binarized_mnist", seed)
  ds = mnist(data_dir=data_dir)
  rng = np.random.default_rng(seed)

  def binarize(x: np.ndarray) -> np.ndarray:
    return np.where(rng.random(x.shape, np.float32) * 255 < x, 255, 0).astype(np.uint8)

  x_train, x_test = binarize(ds.x_train), binarize(ds.x_test)
  return dataclasses.replace(ds, name="binarized_mnist", x_train=x_train, x_test=x_test)


def _check_positive(dataset: str, **values: int) -> None:
  for key, value in values.items():
    if value < 1:
      raise ZooError(f"{dataset}: {key} must be at least 1, got {value}")


def _check_seed(dataset: str, seed: int, below: int | None = None) -> None:
  """numpy's generators take seeds >= 0 (RandomState's below 2**32) and raise ValueError otherwise."""
  if seed < 0 or (below is not None and seed >= below):
    limit = f" and below {below:,}" if below is not None else ""
    raise ZooError(f"{dataset}: seed must be >= 0{limit}, got {seed}")


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
  return rng.permutation(np.arange(n) % num_classes).astype(np.int32)


@register_dataset
def synthetic_images(
  n_train: int = 512,
  n_test: int = 128,
  image_size: int = 28,
  channels: int = 1,
  num_classes: int = 10,
  seed: int = 0,
) -> Dataset:
  """Learnable generated images for tests: each class a fixed random template plus Gaussian noise (uint8)."""
  sizes = dict(
    n_train=n_train, n_test=n_test, image_size=image_size, channels=channels, num_classes=num_classes
  )
  _check_positive("synthetic_images", **sizes)
  _check_seed("synthetic_images", seed)
  rng = np.random.default_rng(seed)
  templates = rng.uniform(0, 255, (num_classes, image_size, image_size, channels))

  def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
    y = _balanced_labels(n, num_classes, rng)
    # Noise comparable to the templates' spread: a model must learn, a nearest-template rule still wins.
    x = templates[y] + rng.normal(0, 48, (n, image_size, image_size, channels))
    return np.clip(np.round(x), 0, 255).astype(np.uint8), y

  (x_train, y_train), (x_test, y_test) = sample(n_train), sample(n_test)
  return Dataset("synthetic_images", x_train, y_train, x_test, y_test, num_classes, pixel_max=255.0)


@register_dataset
def synthetic_tabular(
  n_train: int = 512, n_test: int = 128, features: int = 16, num_classes: int = 3, seed: int = 0
) -> Dataset:
  """Learnable generated tabular data for tests: Gaussian blobs of unit spread around random class centres."""
  sizes = dict(n_train=n_train, n_test=n_test, features=features, num_classes=num_classes)
  _check_positive("synthetic_tabular", **sizes)
  _check_seed("synthetic_tabular", seed)
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 1, (num_classes, features))

  def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
    y = _balanced_labels(n, num_classes, rng)
    return (centres[y] + rng.normal(0, 1, (n, features))).astype(np.float32), y

  (x_train, y_train), (x_test, y_test) = sample(n_train), sample(n_test)
  return Dataset("synthetic_tabular", x_train, y_train, x_test, y_test, num_classes, pixel_max=1.0)


# The reference documents' regression target: a few interactions, one square and one linear term of the
# first six features (the rest are distractors), each term independent of the others, so its mean and
# variance are known exactly: E = 0.2 E[x0^2] + 0.1 E[x4] E[x5^2] = 0.2, and Var = 0.2^2 Var[x0^2] (2) +
# 0.3^2 (1) + 0.5^2 (1) + 0.1^2 E[x4^2] E[x5^4] (3) = 0.45, plus the noise's variance.
_REGRESSION_FEATURES = 6
_REGRESSION_MEAN = 0.2
_REGRESSION_VARIANCE = 0.45


@register_dataset
def synthetic_regression(
  n_train: int = 1000, n_test: int = 200, features: int = 10, noise: float = 0.2, seed: int = 0
) -> Dataset:
  """The reference documents' synthetic regression problem: x ~ N(0, I) in `features` dimensions and
  y = 0.2 x0^2 + 0.3 x1 x2 - 0.5 x3 + 0.1 x4 x5^2 + noise * N(0, 1), one float32 target.

  y is standardised with its exact population mean and standard deviation (0.2 and sqrt(0.45 + noise^2)),
  so both splits share one scale and the test split's statistics never reach training (the documents
  standardise each split with its own). The best possible R^2 is 0.45 / (0.45 + noise^2), 0.918 by default.
  """
  _check_positive("synthetic_regression", n_train=n_train, n_test=n_test)
  _check_seed("synthetic_regression", seed)
  if features < _REGRESSION_FEATURES:
    raise ZooError(f"synthetic_regression: features must be at least 6 (the target uses 6), got {features}")
  if not noise >= 0:
    raise ZooError(f"synthetic_regression: noise must be >= 0, got {noise}")
  rng = np.random.default_rng(seed)
  scale = math.sqrt(_REGRESSION_VARIANCE + noise**2)

  def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(0, 1, (n, features))
    y = 0.2 * x[:, 0] ** 2 + 0.3 * x[:, 1] * x[:, 2] - 0.5 * x[:, 3] + 0.1 * x[:, 4] * x[:, 5] ** 2
    y = y + noise * rng.normal(0, 1, n)
    return x.astype(np.float32), ((y - _REGRESSION_MEAN) / scale).astype(np.float32)

  (x_train, y_train), (x_test, y_test) = sample(n_train), sample(n_test)
  return Dataset("synthetic_regression", x_train, y_train, x_test, y_test, num_classes=1, pixel_max=1.0)


_XOR_CORNERS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
_XOR_LABELS = np.array([0, 1, 1, 0], np.int32)


@register_dataset
def xor(n_train: int = 4, n_test: int = 4, noise: float = 0.0, seed: int = 0) -> Dataset:
  """XOR of two binary inputs (Minsky & Papert 1969): not linearly separable, so it needs a hidden layer.

  By default both splits are the four points (0,0), (0,1), (1,0), (1,1) with labels 0, 1, 1, 0. Otherwise
  example i is corner i % 4 (balanced classes) plus Gaussian noise of std `noise` on each input; its label
  is its corner's. Labels are int32 and num_classes is 2 (a model with one output unit for a sigmoid
  task sets `num_classes=1` itself).
  """
  _check_positive("xor", n_train=n_train, n_test=n_test)
  _check_seed("xor", seed)
  if not noise >= 0:
    raise ZooError(f"xor: noise must be >= 0, got {noise}")
  rng = np.random.default_rng(seed)

  def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
    corner = np.arange(n) % 4
    x = _XOR_CORNERS[corner] + (noise * rng.normal(0, 1, (n, 2)) if noise else 0.0)
    return x.astype(np.float32), _XOR_LABELS[corner]

  (x_train, y_train), (x_test, y_test) = sample(n_train), sample(n_test)
  return Dataset("xor", x_train, y_train, x_test, y_test, num_classes=2, pixel_max=1.0)
