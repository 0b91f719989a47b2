"""Tests of the CIFAR-10/100 loaders on small archives in the official format, and of md5 verification."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import NetworkUsed

from zoo.config import get_config
from zoo.data import cifar, fetch, list_datasets, load_dataset
from zoo.data.download import default_cache_dir, verify
from zoo.registry import ZooError

pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network, an isolated cache


# --- archives in the official format ------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):
  """Pickles str and bytes as Python 2 `str` (BINSTRING opcodes) and numpy as `numpy.core`, as the
  cPickle of 2009 that wrote the CIFAR files did; loading them then needs `encoding="bytes"` as the real
  files do."""

  dispatch = pickle._Pickler.dispatch.copy()

  def _save_py2_str(self, obj):
    data = obj if isinstance(obj, bytes) else obj.encode("latin1")
    if len(data) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
    self.memoize(obj)

  dispatch[bytes] = _save_py2_str
  dispatch[str] = _save_py2_str

  def save_global(self, obj, name=None):
    module = getattr(obj, "__module__", "").replace("numpy._core", "numpy.core")
    self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
    self.memoize(obj)


def _py2_pickle(obj) -> bytes:
  out = io.BytesIO()
  _Py2Pickler(out, protocol=2).dump(obj)
  return out.getvalue()


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
  """(n, 32, 32, 3) uint8 images below 200, so that a planted 200 is unique."""
  return rng.integers(0, 200, (n, 32, 32, 3), dtype=np.uint8)


def _rows(images: np.ndarray) -> np.ndarray:
  """The official layout: per image the red plane, then green, then blue, each row-major."""
  return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072)


@dataclasses.dataclass
class _Fake:
  """Expected contents of a generated CIFAR archive, and its bytes."""

  x_train: np.ndarray
  x_test: np.ndarray
  labels_train: dict[bytes, np.ndarray]
  labels_test: dict[bytes, np.ndarray]
  members: dict[str, bytes]  # member name -> pickled batch
  archive: bytes = b""


def _fake(name: str, seed: int = 0, n_test: int = 30) -> _Fake:
  """CIFAR-10: 5 training batches of 20 images; CIFAR-100: one of 60; both a test batch of `n_test`."""
  source = cifar._SOURCES[name]
  per_batch = 20 if name == "cifar10" else 60
  rng = np.random.default_rng(seed)
  members, images, labels = {}, {}, {}
  for member in (*source.train, source.test):
    n = n_test if member == source.test else per_batch
    x = _images(rng, n)
    if name == "cifar10":
      batch_labels = {b"labels": rng.integers(0, 10, n)}
    else:
      fine = rng.integers(0, 100, n)
      batch_labels = {b"fine_labels": fine, b"coarse_labels": (fine * 7 + 3) % 20}
    batch = {
      b"batch_label": f"{member} of 1",
      b"data": _rows(x),
      b"filenames": [f"{i}.png" for i in range(n)],
    }
    batch.update({k: v.tolist() for k, v in batch_labels.items()})  # Labels are lists in the originals.
    members[member] = _py2_pickle(batch)
    images[member], labels[member] = x, batch_labels
  train = source.train
  fake = _Fake(
    x_train=np.concatenate([images[m] for m in train]),
    x_test=images[source.test],
    labels_train={k: np.concatenate([labels[m][k] for m in train]) for k in labels[source.test]},
    labels_test=labels[source.test],
    members=members,
  )
  fake.archive = _tar_gz(source.folder, {**members, "batches.meta" if name == "cifar10" else "meta": b"meta"})
  return fake


def _tar_gz(folder: str, members: dict[str, bytes]) -> bytes:
  out = io.BytesIO()
  with tarfile.open(fileobj=out, mode="w:gz") as tar:
    tar.addfile(_dir_info(folder))
    for member, data in members.items():
      info = tarfile.TarInfo(f"{folder}/{member}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return out.getvalue()


def _dir_info(folder: str) -> tarfile.TarInfo:
  info = tarfile.TarInfo(folder)
  info.type = tarfile.DIRTYPE
  return info


def _md5(data: bytes) -> str:
  return hashlib.md5(data).hexdigest()


def _trust(monkeypatch, name: str, archive: bytes | None = None, members: dict[str, bytes] | None = None):
  """Patches the loader's checksum table to the generated archive's size and md5 (and its members' md5)."""
  source = cifar._SOURCES[name]
  changes = {}
  if archive is not None:
    changes.update(size=len(archive), md5=_md5(archive))
  if members is not None:
    changes.update(member_md5={m: _md5(data) for m, data in members.items()})
  monkeypatch.setitem(cifar._SOURCES, name, dataclasses.replace(source, **changes))


def _write(path: Path, data: bytes) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return path


def _extract(folder: Path, members: dict[str, bytes]) -> None:
  for member, data in members.items():
    _write(folder / member, data)


def _files(folder: Path) -> list[Path]:
  return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- CIFAR-10 -----------------------------------------------------------------------------------------------


def test_cifar10_reads_the_archive(tmp_path, monkeypatch):
  fake = _fake("cifar10")
  # A planted pixel: image 3 of the training set, green (channel 1), row 5, column 7; the row layout is
  # channel-major, so an (h, w, c) mix-up moves it.
  data = pickle.loads(fake.members["data_batch_1"], encoding="bytes")
  data[b"data"][3, 1 * 1024 + 5 * 32 + 7] = 200
  fake.members["data_batch_1"] = _py2_pickle(data)
  fake.x_train[3, 5, 7, 1] = 200
  archive = _tar_gz("cifar-10-batches-py", fake.members)
  _trust(monkeypatch, "cifar10", archive)
  _write(tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz", archive)

  ds = load_dataset("cifar10", data_dir=str(tmp_path / "data"))
  assert ds.name == "cifar10" and ds.num_classes == 10 and ds.pixel_max == 255
  assert ds.x_train.shape == (100, 32, 32, 3) and ds.x_test.shape == (30, 32, 32, 3)
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32 and ds.input_shape == (32, 32, 3)
  assert ds.x_train.flags.c_contiguous and ds.x_test.flags.c_contiguous
  assert list(zip(*np.nonzero(ds.x_train == 200), strict=True)) == [(3, 5, 7, 1)]
  np.testing.assert_array_equal(ds.x_train, fake.x_train)  # all five batches, in order
  np.testing.assert_array_equal(ds.x_test, fake.x_test)
  np.testing.assert_array_equal(ds.y_train, fake.labels_train[b"labels"])
  np.testing.assert_array_equal(ds.y_test, fake.labels_test[b"labels"])
  assert np.bincount(ds.y_train, minlength=10).tolist() == np.bincount(fake.labels_train[b"labels"]).tolist()
  assert not _files(default_cache_dir())  # Read in place: nothing downloaded, copied or extracted.


def test_the_loaders_are_registered():
  assert list_datasets("cifar*") == ["cifar10", "cifar100"]


# --- CIFAR-100 ----------------------------------------------------------------------------------------------


def test_cifar100_fine_and_coarse_labels(tmp_path, monkeypatch):
  fake = _fake("cifar100")
  _trust(monkeypatch, "cifar100", fake.archive)
  _write(tmp_path / "cifar-100-python.tar.gz", fake.archive)  # directly in the data folder

  fine = load_dataset("cifar100", data_dir=str(tmp_path))
  coarse = load_dataset("cifar100", data_dir=str(tmp_path), label="coarse")
  assert fine.num_classes == 100 and coarse.num_classes == 20
  assert fine.name == "cifar100" and coarse.name != fine.name
  assert fine.x_train.shape == (60, 32, 32, 3) and fine.x_test.shape == (30, 32, 32, 3)
  np.testing.assert_array_equal(fine.x_train, fake.x_train)
  np.testing.assert_array_equal(coarse.x_test, fake.x_test)
  np.testing.assert_array_equal(fine.y_train, fake.labels_train[b"fine_labels"])
  np.testing.assert_array_equal(fine.y_test, fake.labels_test[b"fine_labels"])
  np.testing.assert_array_equal(coarse.y_train, fake.labels_train[b"coarse_labels"])
  np.testing.assert_array_equal(coarse.y_test, fake.labels_test[b"coarse_labels"])
  assert coarse.y_train.dtype == np.int32 and coarse.y_train.max() < 20 and fine.y_train.max() >= 20

  with pytest.raises(ZooError, match="data.kwargs.label"):
    load_dataset("cifar100", data_dir=str(tmp_path), label="medium")
  with pytest.raises(ZooError, match="'fine'.*'coarse'"):
    cifar.cifar100(data_dir=str(tmp_path), label="medium")


def test_config_overrides_name_them(tmp_path, monkeypatch):
  """`python train.py --config.data.name=cifar100 --config.data.kwargs.label=coarse` reaches the loader."""
  fake = _fake("cifar100")
  _trust(monkeypatch, "cifar100", fake.archive)
  _write(tmp_path / "cifar100" / "cifar-100-python.tar.gz", fake.archive)
  overrides = ["data.name=cifar100", "data.kwargs.label=coarse", f"data.data_dir={tmp_path}"]
  cfg = get_config("mnist_cnn", overrides)
  ds = load_dataset(cfg.data.name, data_dir=cfg.data.data_dir, **cfg.data.kwargs)  # as train/loop.py does
  assert ds.num_classes == 20 and ds.x_train.shape == (60, 32, 32, 3)
  np.testing.assert_array_equal(ds.y_test, fake.labels_test[b"coarse_labels"])


# --- where the files are found ------------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [True, False])
def test_extracted_folder(tmp_path, monkeypatch, nested):
  fake = _fake("cifar10", seed=1)
  _trust(monkeypatch, "cifar10", members=fake.members)
  folder = tmp_path / "cifar10" / "cifar-10-batches-py" if nested else tmp_path / "cifar-10-batches-py"
  _extract(folder, fake.members)
  monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path))
  ds = load_dataset("cifar10")
  np.testing.assert_array_equal(ds.x_train, fake.x_train)
  np.testing.assert_array_equal(ds.y_test, fake.labels_test[b"labels"])
  assert not _files(default_cache_dir())

  (folder / "data_batch_4").unlink()
  with pytest.raises(ZooError, match="cifar-10-batches-py lacks data_batch_4"):
    load_dataset("cifar10")


def test_lookup_order(tmp_path, monkeypatch):
  """data_dir argument > $ZOO_DATA_DIR; in a folder, the archive > the extracted folder; local > cache."""
  a, b = _fake("cifar10", seed=1), _fake("cifar10", seed=2)
  # The archive table trusts A's archive, the extracted-file table B's members: either can be read.
  _trust(monkeypatch, "cifar10", archive=a.archive, members=b.members)
  bad = a.archive[:-1] + bytes([a.archive[-1] ^ 1])
  explicit, env = tmp_path / "explicit", tmp_path / "env"
  _write(explicit / "cifar10" / "cifar-10-python.tar.gz", a.archive)
  _write(env / "cifar-10-python.tar.gz", bad)
  _write(default_cache_dir() / "cifar10" / "cifar-10-python.tar.gz", bad)
  monkeypatch.setenv("ZOO_DATA_DIR", str(env))

  # The argument wins over the environment's folder and the cache (both of which hold a bad copy).
  np.testing.assert_array_equal(load_dataset("cifar10", data_dir=str(explicit)).x_test, a.x_test)
  with pytest.raises(ZooError, match=str(env / "cifar-10-python.tar.gz")):
    load_dataset("cifar10")  # without the argument: $ZOO_DATA_DIR, whose archive is bad

  # Beside an extracted folder the archive is used; without the archive, the folder.
  _extract(explicit / "cifar-10-batches-py", b.members)
  np.testing.assert_array_equal(load_dataset("cifar10", data_dir=str(explicit)).x_test, a.x_test)
  (explicit / "cifar10" / "cifar-10-python.tar.gz").unlink()
  np.testing.assert_array_equal(load_dataset("cifar10", data_dir=str(explicit)).x_test, b.x_test)

  # With nothing local, the cache; a good copy there is used without any download.
  monkeypatch.delenv("ZOO_DATA_DIR")
  with pytest.raises(ZooError, match="cache/cifar10/cifar-10-python.tar.gz"):
    load_dataset("cifar10")
  _write(default_cache_dir() / "cifar10" / "cifar-10-python.tar.gz", a.archive)
  np.testing.assert_array_equal(load_dataset("cifar10").y_train, a.labels_train[b"labels"])


def test_without_local_files_it_downloads_into_the_cache(tmp_path, monkeypatch):
  fake = _fake("cifar100")
  _trust(monkeypatch, "cifar100", fake.archive)
  # The autouse fixture makes any download attempt fail loudly: the canonical URL is what is asked for.
  with pytest.raises(NetworkUsed, match="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"):
    load_dataset("cifar100")

  opened = []

  def urlopen(url, timeout=None):  # A stand-in server: no real network access.
    opened.append(url)
    return io.BytesIO(fake.archive)

  monkeypatch.setattr(urllib.request, "urlopen", urlopen)
  ds = load_dataset("cifar100", label="coarse")
  np.testing.assert_array_equal(ds.y_train, fake.labels_train[b"coarse_labels"])
  assert opened == ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"]
  assert _files(default_cache_dir()) == [default_cache_dir() / "cifar100" / "cifar-100-python.tar.gz"]
  load_dataset("cifar100")  # From the cache now.
  assert len(opened) == 1


def test_the_canonical_table():
  c10, c100 = cifar._SOURCES["cifar10"], cifar._SOURCES["cifar100"]
  assert (c10.url, c10.size, c10.md5) == (
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    170_498_071,
    "c58f30108f718f92721af3b95e74349a",
  )
  assert (c100.url, c100.size, c100.md5) == (
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    169_001_437,
    "eb9058c3a382ffc7106e4002c42a8d85",
  )
  for source in (c10, c100):
    assert set(source.member_md5) == {*source.train, source.test}


# --- bad files ----------------------------------------------------------------------------------------------


class _Trap:
  """Unpickling this creates a file: a test can tell whether a file was unpickled."""

  def __init__(self, marker: Path):
    self.marker = marker

  def __reduce__(self):
    return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
  "corrupt, message",
  [
    (lambda good: good[:100] + bytes([good[100] ^ 0xFF]) + good[101:], "its md5 is"),  # one byte changed
    (lambda good: good[: len(good) // 2], "bytes, expected"),  # truncated
  ],
)
def test_corrupt_archive_is_refused(tmp_path, monkeypatch, corrupt, message):
  fake = _fake("cifar10")
  _trust(monkeypatch, "cifar10", fake.archive)
  path = _write(tmp_path / "cifar10" / "cifar-10-python.tar.gz", corrupt(fake.archive))
  with pytest.raises(ZooError, match=message) as err:
    load_dataset("cifar10", data_dir=str(tmp_path))
  assert str(path) in str(err.value) and "Delete it" in str(err.value)


def test_nothing_is_unpickled_before_its_checksum_matched(tmp_path, monkeypatch):
  fake = _fake("cifar10")
  marker = tmp_path / "unpickled"
  trap = pickle.dumps(_Trap(marker), protocol=2)
  _trust(monkeypatch, "cifar10", fake.archive, fake.members)
  # An archive of the right size holding a trap: refused by its md5.
  evil = _tar_gz("cifar-10-batches-py", {**fake.members, "data_batch_1": trap})
  evil += b"\0" * (len(fake.archive) - len(evil))  # Padded to the trusted size: only the md5 can tell.
  assert len(evil) == len(fake.archive)
  _write(tmp_path / "a" / "cifar-10-python.tar.gz", evil)
  with pytest.raises(ZooError, match="its md5 is"):
    load_dataset("cifar10", data_dir=str(tmp_path / "a"))
  # An extracted folder with a trap in place of a batch: refused by that file's md5.
  _extract(tmp_path / "b" / "cifar-10-batches-py", {**fake.members, "test_batch": trap})
  with pytest.raises(ZooError, match="test_batch is corrupt"):
    load_dataset("cifar10", data_dir=str(tmp_path / "b"))
  assert not marker.exists()
  pickle.loads(trap)  # The trap works: this test could fail.
  assert marker.exists()


def test_archive_with_the_right_checksum_but_wrong_contents(tmp_path, monkeypatch):
  fake = _fake("cifar10")
  no_test = {m: d for m, d in fake.members.items() if m != "test_batch"}
  archive = _tar_gz("cifar-10-batches-py", no_test)
  _trust(monkeypatch, "cifar10", archive)
  _write(tmp_path / "cifar-10-python.tar.gz", archive)
  with pytest.raises(ZooError, match="lacks cifar-10-batches-py/test_batch"):
    load_dataset("cifar10", data_dir=str(tmp_path))

  wrong = _py2_pickle({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0, 1, 2, 3]})  # grey, not RGB
  archive = _tar_gz("cifar-10-batches-py", {**fake.members, "test_batch": wrong})
  _trust(monkeypatch, "cifar10", archive)
  _write(tmp_path / "cifar-10-python.tar.gz", archive)
  with pytest.raises(ZooError, match="test_batch in .*cifar-10-python.tar.gz is not a CIFAR batch"):
    load_dataset("cifar10", data_dir=str(tmp_path))

  not_gzip = b"x" * 1000
  _trust(monkeypatch, "cifar10", not_gzip)
  _write(tmp_path / "cifar-10-python.tar.gz", not_gzip)
  with pytest.raises(ZooError, match="could not be read as the cifar10 archive"):
    load_dataset("cifar10", data_dir=str(tmp_path))


def test_py2_pickles_need_bytes_keys():
  """The generated batches are Python 2 pickles as the real ones: str became bytes, as the loader expects."""
  batch = pickle.loads(_py2_pickle({b"data": np.ones((2, 3), np.uint8), b"labels": [1, 2]}), encoding="bytes")
  assert set(batch) == {b"data", b"labels"} and batch[b"data"].dtype == np.uint8
  with pytest.raises(UnicodeDecodeError):  # a py2 str that is not ASCII: proves py2 opcodes were written
    pickle.loads(_py2_pickle({b"\xff": 0}), encoding="ascii")


# --- md5 in the download layer ------------------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 5000  # more than one read chunk


def test_verify_by_md5_and_size(tmp_path):
  path = _write(tmp_path / "f.bin", PAYLOAD)
  assert verify(path, md5=_md5(PAYLOAD)) == path
  assert verify(str(path), md5=_md5(PAYLOAD).upper(), size=len(PAYLOAD)) == path
  sha = hashlib.sha256(PAYLOAD).hexdigest()
  assert verify(path, sha, md5=_md5(PAYLOAD)) == path  # both checked
  with pytest.raises(ZooError, match=f"its md5 is {_md5(PAYLOAD)}, expected {_md5(b'other')}"):
    verify(path, md5=_md5(b"other"))
  with pytest.raises(ZooError, match="its md5 is"):
    verify(path, sha, md5=_md5(b"other"))
  with pytest.raises(ZooError, match=f"it is {len(PAYLOAD):,} bytes, expected {len(PAYLOAD) + 1:,}"):
    verify(path, md5=_md5(PAYLOAD), size=len(PAYLOAD) + 1)
  with pytest.raises(ValueError, match="sha256 or md5"):
    verify(path)


def test_fetch_by_md5(tmp_path):
  source = _write(tmp_path / "server" / "f.bin", PAYLOAD)
  opener = urllib.request.build_opener()  # The autouse fixture blocks urlopen; this serves file: URLs only.

  def fetch_with(**kwargs):
    return fetch("ds/f.bin", [source.as_uri()], cache_dir=tmp_path / "c", **kwargs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(urllib.request, "urlopen", lambda url, timeout=None: opener.open(url, timeout=timeout))
    with pytest.raises(ZooError, match=f"gave {len(PAYLOAD):,} bytes, expected 5"):
      fetch_with(md5=_md5(PAYLOAD), size=5)
    with pytest.raises(ZooError, match=f"its md5 is {_md5(PAYLOAD)}"):
      fetch_with(md5=_md5(b"other"))
    assert _files(tmp_path / "c") == []  # Nothing kept of a wrong download.
    path = fetch_with(md5=_md5(PAYLOAD), size=len(PAYLOAD))
    assert path.read_bytes() == PAYLOAD and _files(tmp_path / "c") == [path]
  assert fetch_with(md5=_md5(PAYLOAD), size=len(PAYLOAD)) == path  # From the cache, verified again.
  with pytest.raises(ZooError, match="bytes, expected"):
    fetch_with(md5=_md5(PAYLOAD), size=len(PAYLOAD) - 1)


# --- the real files, where they are staged ------------------------------------------------------------------


def _real_data_dir(name: str, file: str) -> Path | None:
  """The folder holding the real archive (as `<folder>/<name>/<file>` or `<folder>/<file>`), if any."""
  for d in (os.environ.get("ZOO_DATA_DIR"), Path(__file__).resolve().parents[2] / "shared" / "data"):
    if d and ((Path(d) / name / file).is_file() or (Path(d) / file).is_file()):
      return Path(d)
  return None


# Looked up at import: the autouse fixture clears $ZOO_DATA_DIR for the tests themselves.
REAL_CIFAR10 = _real_data_dir("cifar10", "cifar-10-python.tar.gz")
REAL_CIFAR100 = _real_data_dir("cifar100", "cifar-100-python.tar.gz")


@pytest.mark.skipif(REAL_CIFAR10 is None, reason="the real CIFAR-10 archive is not staged")
def test_real_cifar10():
  ds = load_dataset("cifar10", data_dir=str(REAL_CIFAR10))
  assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
  assert np.bincount(ds.y_train).tolist() == [5000] * 10 and np.bincount(ds.y_test).tolist() == [1000] * 10
  # The training set's channel means, as quoted by many CIFAR recipes: (0.4914, 0.4822, 0.4465).
  np.testing.assert_allclose(ds.x_train.mean((0, 1, 2)) / 255, [0.4914, 0.4822, 0.4465], atol=1e-3)


@pytest.mark.skipif(REAL_CIFAR100 is None, reason="the real CIFAR-100 archive is not staged")
def test_real_cifar100():
  fine = load_dataset("cifar100", data_dir=str(REAL_CIFAR100))
  coarse = load_dataset("cifar100", data_dir=str(REAL_CIFAR100), label="coarse")
  assert (
    np.bincount(fine.y_test).tolist() == [100] * 100 and np.bincount(coarse.y_test).tolist() == [500] * 20
  )
  np.testing.assert_allclose(fine.x_train.mean((0, 1, 2)) / 255, [0.5071, 0.4865, 0.4409], atol=1e-3)
