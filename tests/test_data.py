"""Tests of the dataset layer: loaders, checksummed fetching and caching, the IDX reader, normalisation."""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from zoo.data import Dataset, fetch, list_datasets, load_dataset, normalization_stats
from zoo.data import datasets as datasets_lib
from zoo.data.download import default_cache_dir
from zoo.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from zoo.registry import UnknownNameError, ZooError


def _shared_data() -> Path | None:
  for d in (os.environ.get("ZOO_DATA_DIR"), Path(__file__).resolve().parents[2] / "shared" / "data"):
    if d and (Path(d) / "mnist" / "train-images-idx3-ubyte.gz").is_file():
      return Path(d)
  return None


SHARED = _shared_data()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
  """Nothing in these tests writes to the user's cache or depends on the caller's data folder."""
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv("ZOO_DATA_DIR", raising=False)


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _idx(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def _files(folder: Path) -> list[Path]:
  return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- digits -----------------------------------------------------------------------------------------------


def test_digits_default_split_is_the_reference_notebooks():
  # The reference notebook's classification report gives each class's support in its 360 test images.
  ds = load_dataset("digits")
  np.testing.assert_array_equal(np.bincount(ds.y_test), [33, 28, 33, 34, 46, 47, 35, 34, 30, 40])
  assert len(ds.x_train) == 1437


def test_digits_split_is_stratified_complete_and_deterministic():
  ds = load_dataset("digits", stratify=True)
  assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32 and ds.input_shape == (8, 8, 1)
  assert ds.num_classes == 10 and ds.pixel_max == 16 and ds.x_train.max() == 16
  # Together the splits are exactly the 1,797 rows of the file.
  with gzip.open(datasets_lib._DIGITS_PATH, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  rows = lambda x, y: np.concatenate([x.reshape(len(x), -1), y[:, None]], axis=1).astype(np.int64)
  both = np.concatenate([rows(ds.x_train, ds.y_train), rows(ds.x_test, ds.y_test)])
  assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, table.tolist()))
  # Stratified: every class holds 20% of its images in the test split, to within one image.
  per_class = np.bincount(table[:, 64], minlength=10)
  assert np.all(np.abs(np.bincount(ds.y_test, minlength=10) - 0.2 * per_class) < 1)
  # Classes are mixed, not sorted (training code may take the first N examples).
  assert len(np.unique(ds.y_train[:50])) == 10
  again = load_dataset("digits", stratify=True)
  np.testing.assert_array_equal(again.x_test, ds.x_test)
  np.testing.assert_array_equal(again.y_train, ds.y_train)
  other = load_dataset("digits", seed=7, test_fraction=0.5, stratify=True)
  assert len(other.x_test) == 899 and not np.array_equal(other.y_train[:100], ds.y_train[:100])


def test_digits_rejects_bad_arguments():
  with pytest.raises(ZooError, match="test_fraction"):
    load_dataset("digits", test_fraction=1.5)
  with pytest.raises(ZooError, match="seed"):
    load_dataset("digits", seed="x")
  with pytest.raises(ZooError, match="'test_frac'.*test_fraction"):
    load_dataset("digits", test_frac=0.1)


def test_unknown_dataset_suggests_close_matches():
  with pytest.raises(UnknownNameError, match="did you mean: mnist"):
    load_dataset("mnsit")
  with pytest.raises(UnknownNameError, match="fashion_mnist"):
    load_dataset("fashion")
  assert list_datasets("*mnist") == ["binarized_mnist", "fashion_mnist", "mnist"]
  assert {"digits", "synthetic_images", "synthetic_tabular"} <= set(list_datasets())


def test_dataset_checks_its_splits():
  x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int32)
  with pytest.raises(ValueError, match="inconsistent"):
    Dataset("bad", x, y[:3], x, y, num_classes=2, pixel_max=1.0)
  with pytest.raises(ValueError, match="inconsistent"):
    Dataset("bad", x, y.astype(np.int64), x, y, num_classes=2, pixel_max=1.0)


# --- MNIST and Fashion-MNIST --------------------------------------------------------------------------------


@pytest.mark.skipif(SHARED is None, reason="the staged datasets (shared/data or $ZOO_DATA_DIR) are absent")
@pytest.mark.parametrize(
  "name, test_counts",
  [
    ("mnist", [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]),
    ("fashion_mnist", [1000] * 10),
  ],
)
def test_real_mnist_files(name, test_counts):
  ds = load_dataset(name, data_dir=str(SHARED))
  assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
  assert ds.x_train.dtype == np.uint8 and ds.y_test.dtype == np.int32 and ds.pixel_max == 255
  assert np.bincount(ds.y_test).tolist() == test_counts
  assert ds.x_train.max() == 255 and 0.1 < ds.x_train.mean() / 255 < 0.4
  assert not _files(default_cache_dir())  # Found locally: nothing downloaded or copied.


def _fake_mnist(folder: Path, monkeypatch, n_train=5, n_train_labels=5) -> None:
  """Tiny IDX files under `folder/mnist/`, with the loader's checksums patched to theirs."""
  rng = np.random.default_rng(0)
  parts = {
    "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
    "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train_labels),
    "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (3, 28, 28)),
    "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 3),
  }
  (folder / "mnist").mkdir(parents=True)
  for file, array in parts.items():
    data = gzip.compress(_idx(array))
    (folder / "mnist" / file).write_bytes(data)
    monkeypatch.setitem(datasets_lib._MNIST_SHA256, file, _sha(data))


def test_mnist_loader_reads_data_dir_from_the_environment(tmp_path, monkeypatch):
  _fake_mnist(tmp_path / "data", monkeypatch)
  monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "data"))
  ds = load_dataset("mnist")
  assert ds.x_train.shape == (5, 28, 28, 1) and ds.x_test.shape == (3, 28, 28, 1)
  assert ds.y_train.dtype == np.int32


def test_mnist_loader_refuses_mismatched_counts(tmp_path, monkeypatch):
  _fake_mnist(tmp_path, monkeypatch, n_train=5, n_train_labels=4)
  with pytest.raises(ZooError, match="train-images-idx3-ubyte.gz.*images \\(5, 28, 28\\), labels \\(4,\\)"):
    load_dataset("mnist", data_dir=str(tmp_path))


# --- fetch --------------------------------------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 5000  # 1.28 MB: more than one read chunk.


def test_fetch_uses_and_verifies_local_files(tmp_path, monkeypatch):
  nested, flat = tmp_path / "nested", tmp_path / "flat"
  (nested / "ds").mkdir(parents=True)
  flat.mkdir()
  (nested / "ds" / "f.bin").write_bytes(PAYLOAD)
  (flat / "f.bin").write_bytes(PAYLOAD)
  assert fetch("ds/f.bin", [], _sha(PAYLOAD), data_dir=nested) == nested / "ds" / "f.bin"
  assert fetch("ds/f.bin", [], _sha(PAYLOAD), data_dir=flat) == flat / "f.bin"
  monkeypatch.setenv("ZOO_DATA_DIR", str(flat))
  assert fetch("ds/f.bin", [], _sha(PAYLOAD)) == flat / "f.bin"

  (flat / "f.bin").write_bytes(PAYLOAD[:-1])
  with pytest.raises(ZooError) as err:
    fetch("ds/f.bin", ["file:///nowhere"], _sha(PAYLOAD))
  message = str(err.value)
  assert str(flat / "f.bin") in message and _sha(PAYLOAD) in message and _sha(PAYLOAD[:-1]) in message
  assert "Delete it" in message


def test_fetch_verifies_the_cache(tmp_path):
  cache = tmp_path / "mycache"
  (cache / "ds").mkdir(parents=True)
  (cache / "ds" / "f.bin").write_bytes(PAYLOAD)
  assert fetch("ds/f.bin", [], _sha(PAYLOAD), cache_dir=cache) == cache / "ds" / "f.bin"
  with pytest.raises(ZooError, match="mycache/ds/f.bin"):
    fetch("ds/f.bin", [], _sha(b"something else"), cache_dir=cache)


def test_fetch_downloads_verifies_and_renames(tmp_path):
  source = tmp_path / "server" / "f.bin"
  source.parent.mkdir()
  source.write_bytes(PAYLOAD)
  urls = [(tmp_path / "missing.bin").as_uri(), source.as_uri()]  # The first mirror fails.
  path = fetch("ds/f.bin", urls, _sha(PAYLOAD))
  assert path == default_cache_dir() / "ds" / "f.bin" and path.read_bytes() == PAYLOAD
  assert _files(default_cache_dir()) == [path]  # No temporary file left over.
  source.unlink()
  assert fetch("ds/f.bin", urls, _sha(PAYLOAD)) == path  # Now from the cache.


def test_fetch_keeps_no_download_with_a_wrong_checksum(tmp_path):
  source = tmp_path / "f.bin"
  source.write_bytes(PAYLOAD)
  with pytest.raises(ZooError) as err:
    fetch("ds/f.bin", [source.as_uri()], _sha(b"other"), cache_dir=tmp_path / "c")
  assert source.as_uri() in str(err.value) and _sha(PAYLOAD) in str(err.value)
  assert _files(tmp_path / "c") == []


class _BrokenResponse:
  """Serves the first chunk of a file, then fails as a dropped connection (or Ctrl-C) would."""

  def __init__(self, data: bytes, error: BaseException, cache: Path):
    self.data, self.error, self.cache, self.calls = data, error, cache, 0

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def read(self, n: int) -> bytes:
    self.calls += 1
    if self.calls == 1:
      return self.data[:n]
    assert [p.suffix for p in _files(self.cache)] == [".part"]  # The partial file really exists mid-way.
    raise self.error


@pytest.mark.parametrize("error", [ConnectionResetError("connection reset"), KeyboardInterrupt()])
def test_fetch_never_leaves_a_partial_download(tmp_path, monkeypatch, error):
  cache = tmp_path / "c"
  opened = []

  def urlopen(url, timeout=None):
    opened.append(url)
    return _BrokenResponse(PAYLOAD + PAYLOAD, error, cache)

  monkeypatch.setattr(urllib.request, "urlopen", urlopen)
  urls = ["https://a.example/f.bin", "https://b.example/f.bin"]
  with pytest.raises(ZooError if isinstance(error, Exception) else KeyboardInterrupt) as err:
    fetch("ds/f.bin", urls, _sha(PAYLOAD), cache_dir=cache)
  assert _files(cache) == []
  if isinstance(error, Exception):
    assert opened == urls  # Every mirror tried, in order...
    message = str(err.value)
    assert all(u in message for u in urls) and "connection reset" in message  # ...and listed with its error.
    assert "--data-dir" in message and "ZOO_DATA_DIR" in message
  else:
    assert opened == urls[:1]  # Ctrl-C stops at once.


def test_default_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "a"))
  assert default_cache_dir() == tmp_path / "a"
  monkeypatch.delenv("ZOO_CACHE_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert default_cache_dir() == tmp_path / "xdg" / "zoo"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert default_cache_dir() == tmp_path / "home" / ".cache" / "zoo"


# --- read_idx -----------------------------------------------------------------------------------------------


def test_read_idx_round_trip(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (4, 3, 2)).astype(np.uint8)
  (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(images)))
  (tmp_path / "a").write_bytes(_idx(images))
  np.testing.assert_array_equal(read_idx(tmp_path / "a.gz", magic=IMAGES_MAGIC), images)
  np.testing.assert_array_equal(read_idx(tmp_path / "a"), images)


@pytest.mark.parametrize(
  "corrupt, message",
  [
    (lambda good: gzip.compress(good)[:-20], "not a readable IDX file"),  # truncated gzip stream
    (lambda good: gzip.compress(good)[:30] + b"\xff" * 50, "not a readable IDX file"),  # garbled
    (lambda good: gzip.compress(good[:-1]), "needs exactly"),  # one pixel short
    (lambda good: gzip.compress(good + b"\0"), "needs exactly"),  # one byte too many
    (lambda good: gzip.compress(good[:10]), "header is cut short"),
    (lambda good: gzip.compress(b"\x12\x34" + good[2:]), "magic number 0x12340803"),
    (lambda good: gzip.compress(good[:2] + b"\x0d" + good[3:]), "magic number 0x00000d03"),  # float32
    (lambda good: gzip.compress(_idx(np.zeros(4))), "magic number 0x00000801, expected 0x00000803"),
    (lambda good: b"", "only 0 bytes"),
  ],
)
def test_read_idx_refuses_bad_files(tmp_path, corrupt, message):
  good = _idx(np.zeros((4, 3, 2)))
  path = tmp_path / "bad-idx3-ubyte.gz"
  path.write_bytes(corrupt(good))
  with pytest.raises(ZooError, match=message) as err:
    read_idx(path, magic=IMAGES_MAGIC)
  assert str(path) in str(err.value)


def test_read_idx_labels_magic(tmp_path):
  (tmp_path / "l").write_bytes(_idx(np.arange(7)))
  assert read_idx(tmp_path / "l", magic=LABELS_MAGIC).tolist() == list(range(7))
  with pytest.raises(ZooError, match="not a readable IDX file"):
    read_idx(tmp_path / "missing")


# --- normalisation ------------------------------------------------------------------------------------------


def test_normalization_stats_modes():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (50, 4, 4, 3)).astype(np.uint8)
  x[..., 2] = 7  # A constant channel: std 1, not a division by zero.
  for mode, expected in [("none", (0, 1)), ("scale", (0, 255))]:
    mean, std = normalization_stats(x, mode, 255.0)
    assert mean.dtype == std.dtype == np.float32 and mean.shape == std.shape == ()
    assert (float(mean), float(std)) == expected

  mean, std = normalization_stats(x, "channel", 255.0)
  assert mean.shape == std.shape == (1, 1, 3) and mean.dtype == np.float32
  np.testing.assert_allclose(mean.ravel(), x.reshape(-1, 3).mean(0), rtol=1e-6)
  np.testing.assert_allclose(std.ravel()[:2], x.reshape(-1, 3).std(0)[:2], rtol=1e-6)
  assert std.ravel()[2] == 1 and mean.ravel()[2] == 7
  z = (x - mean) / std
  np.testing.assert_allclose(z.reshape(-1, 3).mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(z.reshape(-1, 3).std(0)[:2], 1, rtol=1e-5)

  mean, std = normalization_stats(x, "feature", 255.0)
  assert mean.shape == std.shape == (4, 4, 3)
  np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
  np.testing.assert_allclose(std[..., :2], x.std(0)[..., :2], rtol=1e-6)
  assert np.all(std[..., 2] == 1)


def test_normalization_stats_tabular_matches_standard_scaler_and_chunks():
  x = (
    np.random.default_rng(1).normal(1000.0, 0.01, (10_000, 3)).astype(np.float32)
  )  # Large offset, small spread.
  mean, std = normalization_stats(x, "feature", 1.0)
  assert mean.shape == (3,)
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-7)
  np.testing.assert_allclose(std, x64.std(0), rtol=1e-4)  # More than one chunk, no cancellation.


def test_normalization_stats_unknown_mode():
  with pytest.raises(ZooError, match="none, scale, channel, feature"):
    normalization_stats(np.zeros((2, 3)), "pixel", 1.0)


# --- synthetic data -----------------------------------------------------------------------------------------


def _nearest_centroid_accuracy(ds: Dataset) -> float:
  flat = lambda x: x.reshape(len(x), -1).astype(np.float64)
  centroids = np.stack([flat(ds.x_train)[ds.y_train == c].mean(0) for c in range(ds.num_classes)])
  distances = ((flat(ds.x_test)[:, None, :] - centroids[None]) ** 2).sum(-1)
  return float((distances.argmin(1) == ds.y_test).mean())


def test_synthetic_images_are_learnable_and_deterministic():
  ds = load_dataset("synthetic_images", n_train=200, n_test=100, image_size=8, channels=3, num_classes=5)
  assert ds.x_train.shape == (200, 8, 8, 3) and ds.x_train.dtype == np.uint8 and ds.pixel_max == 255
  assert np.bincount(ds.y_train).tolist() == [40] * 5
  assert _nearest_centroid_accuracy(ds) > 0.95
  # Not trivial: single pixels carry little of the class.
  assert np.abs(np.corrcoef(ds.x_train[:, 0, 0, 0], ds.y_train)[0, 1]) < 0.5
  again = load_dataset("synthetic_images", n_train=200, n_test=100, image_size=8, channels=3, num_classes=5)
  np.testing.assert_array_equal(again.x_test, ds.x_test)
  other = load_dataset(
    "synthetic_images", n_train=200, n_test=100, image_size=8, channels=3, num_classes=5, seed=1
  )
  assert not np.array_equal(other.x_train, ds.x_train)
  with pytest.raises(ZooError, match="image_size"):
    load_dataset("synthetic_images", image_size=0)


def test_synthetic_tabular_is_learnable():
  ds = load_dataset("synthetic_tabular")
  assert ds.x_train.shape == (512, 16) and ds.x_test.shape == (128, 16) and ds.x_train.dtype == np.float32
  assert ds.num_classes == 3 and ds.pixel_max == 1.0 and ds.input_shape == (16,)
  assert _nearest_centroid_accuracy(ds) > 0.9
