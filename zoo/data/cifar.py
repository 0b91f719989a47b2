"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009): 50,000 + 10,000 32x32 colour images, read from the tarballs."""

from __future__ import annotations

import dataclasses
import pathlib
import tarfile
import typing
import zlib
from collections.abc import Iterator

import numpy as np

from zoo.data.datasets import Dataset, register_dataset
from zoo.data.download import fetch, resolve_data_dir, verify
from zoo.data.pickles import NUMPY_ARRAY_GLOBALS, load_pickle
from zoo.registry import ZooError


@dataclasses.dataclass(frozen=True)
class _Source:
  """Where one CIFAR archive comes from and what it holds.

  `member_md5` checks an already-extracted folder file by file (torchvision's table), since the archive's
  own checksum then cannot be taken.
  """

  name: str  # the dataset's name and its folder under a data or cache folder
  url: str
  size: int
  md5: str  # the only checksum the dataset's page publishes
  folder: str  # the archive's top folder
  train: tuple[str, ...]
  test: str
  member_md5: dict[str, str]

  @property
  def file(self) -> str:
    return self.url.rsplit("/", 1)[1]


_SOURCES = {
  "cifar10": _Source(
    name="cifar10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    size=170_498_071,
    md5="c58f30108f718f92721af3b95e74349a",
    folder="cifar-10-batches-py",
    train=("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
    test="test_batch",
    member_md5={
      "data_batch_1": "c99cafc152244af753f735de768cd75f",
      "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
      "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
      "data_batch_4": "634d18415352ddfa80567beed471001a",
      "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
      "test_batch": "40351d587109b95175f43aff81a1287e",
    },
  ),
  "cifar100": _Source(
    name="cifar100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    size=169_001_437,
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    folder="cifar-100-python",
    train=("train",),
    test="test",
    member_md5={"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
  ),
}

_PIXELS = 3 * 32 * 32


@register_dataset
def cifar10(*, data_dir: str | None = None) -> Dataset:
  """CIFAR-10: 50,000 + 10,000 32x32 RGB images of 10 classes (airplane, automobile, ..., truck).

  Reads `cifar-10-python.tar.gz` from `<data_dir>/cifar10/` or `<data_dir>/` (data_dir: the argument, else
  $ZOO_DATA_DIR), else its extracted `cifar-10-batches-py/` folder there, else the cache, where it is
  downloaded if absent. Every file is checked by md5 before it is read.
  """
  return _load(_SOURCES["cifar10"], b"labels", 10, "cifar10", data_dir)


@register_dataset
def cifar100(*, data_dir: str | None = None, label: typing.Literal["fine", "coarse"] = "fine") -> Dataset:
  """CIFAR-100: 50,000 + 10,000 32x32 RGB images of 100 classes, grouped into 20 superclasses.

  Files are found as for `cifar10`: `cifar-100-python.tar.gz` in `<data_dir>/cifar100/` or `<data_dir>/`,
  else its extracted `cifar-100-python/` folder there, else the cache (downloaded if absent).

  Args:
    data_dir: a folder of local dataset files (default: $ZOO_DATA_DIR).
    label: 'fine' for the 100 classes, 'coarse' for the 20 superclasses.
  """
  if label not in ("fine", "coarse"):
    raise ZooError(
      f"cifar100: label must be 'fine' (100 classes) or 'coarse' (20 superclasses), got {label!r}"
    )
  num_classes = 100 if label == "fine" else 20
  name = "cifar100" if label == "fine" else "cifar100 (coarse)"
  return _load(_SOURCES["cifar100"], f"{label}_labels".encode(), num_classes, name, data_dir)


def _load(source: _Source, label_key: bytes, num_classes: int, name: str, data_dir: str | None) -> Dataset:
  """Reads a CIFAR dataset from the first of these that exists:

  1. the archive at `<data_dir>/<name>/<file>` or `<data_dir>/<file>` (data_dir: the argument, else
     $ZOO_DATA_DIR), e.g. `<data_dir>/cifar10/cifar-10-python.tar.gz`;
  2. the archive extracted there: `<data_dir>/<name>/<folder>/` or `<data_dir>/<folder>/`, e.g.
     `<data_dir>/cifar-10-batches-py/data_batch_1`;
  3. the archive in the cache, else downloaded into it.

  Every file is checked (the archive by size and md5, extracted files by md5) before it is unpickled.
  """
  local = resolve_data_dir(data_dir)
  archives = [local / source.name / source.file, local / source.file] if local else []
  folders = [local / source.name / source.folder, local / source.folder] if local else []
  folder = next((f for f in folders if f.is_dir()), None)
  if folder is not None and not any(a.is_file() for a in archives):
    origin, batches = folder, dict(_read_folder(folder, source))
  else:
    relative = f"{source.name}/{source.file}"
    origin = fetch(relative, [source.url], md5=source.md5, size=source.size, data_dir=local)
    batches = dict(_read_archive(origin, source))

  def split(members: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    parts = [_decode(batches[m], label_key, num_classes, f"{m} in {origin}") for m in members]
    x = np.empty((sum(len(planes) for planes, _ in parts), 32, 32, 3), np.uint8)  # NHWC, C-contiguous
    start = 0
    for planes, _ in parts:
      # NCHW to NHWC one channel at a time: numpy copies whole 32x32 planes into a stride-3 channel ~3x
      # faster than it copies a 4-d transpose (0.13 s against 0.4 s for CIFAR-10's 60,000 images here).
      for c in range(3):
        x[start : start + len(planes), :, :, c] = planes[:, c]
      start += len(planes)
    return x, np.concatenate([y for _, y in parts])

  (x_train, y_train), (x_test, y_test) = split(source.train), split((source.test,))
  return Dataset(name, x_train, y_train, x_test, y_test, num_classes=num_classes, pixel_max=255.0)


def _read_archive(path: pathlib.Path, source: _Source) -> Iterator[tuple[str, dict]]:
  """(member, unpickled batch) for each batch in a verified archive, in one forward pass over it."""
  wanted = {f"{source.folder}/{m}": m for m in (*source.train, source.test)}
  seen = set()
  try:
    with tarfile.open(path, "r|gz") as tar:  # A stream: never seeks back, so the gzip is inflated once.
      for member in tar:
        if member.name in wanted and member.isfile():
          data = tar.extractfile(member).read()
          yield wanted[member.name], _unpickle(data, f"{member.name} in {path}")
          seen.add(member.name)
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise ZooError(
      f"{path} could not be read as the {source.name} archive ({e}); delete it or replace it with the "
      "official file"
    ) from e
  if missing := sorted(set(wanted) - seen):
    raise ZooError(
      f"{path} lacks {', '.join(missing)}: not the {source.name} archive; delete it or replace it with the "
      "official file"
    )


def _read_folder(folder: pathlib.Path, source: _Source) -> Iterator[tuple[str, dict]]:
  """(member, unpickled batch) for each batch file of an extracted archive, each checked by md5 first."""
  for member in (*source.train, source.test):
    path = folder / member
    if not path.is_file():
      raise ZooError(
        f"{folder} lacks {member}: extract {source.file} there again, or put the archive itself in "
        f"{folder.parent} instead"
      )
    yield member, _unpickle(verify(path, md5=source.member_md5[member]).read_bytes(), path)


def _unpickle(data: bytes, where: str | pathlib.Path) -> object:
  """A batch's pickle, read with an allow-list of the numpy globals it names (after its md5 matched, but a
  checksum table can be edited: nothing in a file runs code). `encoding="bytes"` keeps the Python 2 str
  keys and values bytes, as the files were written."""
  # trailing_ok: the batches were not checked here for bytes after their pickle; their md5 vouches for them.
  return load_pickle(data, where, NUMPY_ARRAY_GLOBALS, "CIFAR batch", encoding="bytes", trailing_ok=True)


def _decode(batch: object, label_key: bytes, num_classes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
  """A batch's (N, 3, 32, 32) uint8 images (a view) and (N,) int32 labels."""
  batch = batch if isinstance(batch, dict) else {}
  data = batch.get(b"data")
  try:
    labels = np.asarray(batch.get(label_key, ()))
  except (ValueError, TypeError):  # Ragged or odd label lists: refused below.
    labels = np.empty((0, 0))
  if (
    not isinstance(data, np.ndarray)
    or data.dtype != np.uint8
    or data.ndim != 2
    or data.shape[1] != _PIXELS
    or labels.shape != (len(data),)
    or (labels.size and labels.dtype.kind not in "iu")
    or (labels.size and (labels.min() < 0 or labels.max() >= num_classes))
  ):
    raise ZooError(
      f"{where} is not a CIFAR batch: it needs {b'data'!r} as (N, {_PIXELS}) uint8 and {label_key!r} as N "
      f"integer labels below {num_classes}"
    )
  # Each row is the red plane, then green, then blue, each 32x32 row-major.
  return data.reshape(-1, 3, 32, 32), labels.astype(np.int32)
