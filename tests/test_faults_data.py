"""Damaged dataset files: every format's loader refuses a truncated, garbled or wrong file with a ZooError
naming it, a download never leaves a partial file behind, and no pickle a dataset reads can run code.

Every file here is generated small in tmp_path (the staged datasets are not needed) and nothing touches the
network: `urlopen` is replaced, by a stand-in that fails or serves given bytes.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import signal
import socket
import subprocess
import sys
import tarfile
import time
import tokenize
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse
from PIL import Image

from zoo.data import cifar, planetoid, text
from zoo.data import datasets as datasets_lib
from zoo.data.download import fetch, verify
from zoo.data.image_folder import load_image
from zoo.data.pickles import NUMPY_ARRAY_GLOBALS, load_pickle
from zoo.registry import ZooError

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network, an isolated cache


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _md5(data: bytes) -> str:
  return hashlib.md5(data).hexdigest()


def _files(folder: Path) -> list[Path]:
  return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _png(size: tuple[int, int] = (12, 10)) -> bytes:
  rgb = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(rgb).save(out, "PNG")
  return out.getvalue()


def _jpeg() -> bytes:
  out = io.BytesIO()
  Image.fromarray(np.full((16, 20, 3), 90, np.uint8)).save(out, "JPEG")
  return out.getvalue()


# --- small files in each dataset format ---------------------------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def _mnist_files() -> dict[str, bytes]:
  rng = np.random.default_rng(0)
  files = {}
  for prefix, n in (("train", 3), ("t10k", 2)):
    files[f"mnist/{prefix}-images-idx3-ubyte.gz"] = gzip.compress(_idx(rng.integers(0, 256, (n, 28, 28))))
    files[f"mnist/{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(_idx(rng.integers(0, 10, n)))
  return files


def _trust_mnist(monkeypatch, files: dict[str, bytes]) -> None:
  table = {path.rsplit("/", 1)[1]: _sha256(data) for path, data in files.items()}
  monkeypatch.setattr(datasets_lib, "_MNIST_SHA256", table)


_SHAKESPEARE_TEXT = (
  "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 4
)


def _trust_shakespeare(monkeypatch, files: dict[str, bytes]) -> None:
  data = files["tiny_shakespeare/input.txt"]
  monkeypatch.setattr(text, "_SHAKESPEARE_SHA256", _sha256(data))
  monkeypatch.setattr(text, "_SHAKESPEARE_SIZE", len(data))


def _sst_zip(members: dict[str, str | bytes] | None = None) -> bytes:
  members = members or {
    "trees/train.txt": "(3 (2 It) (4 (4 works) (2 .)))\n(1 (1 Dull) (2 .))\n",
    "trees/dev.txt": "(4 (3 Fine) (2 .))\n",
    "trees/test.txt": "(0 (0 Awful) (2 .))\n",
  }
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
    for name, content in members.items():
      archive.writestr(name, content)
  return out.getvalue()


def _trust_sst(monkeypatch, files: dict[str, bytes]) -> None:
  data = files["sst/trainDevTestTrees_PTB.zip"]
  monkeypatch.setattr(text, "_SST_SHA256", _sha256(data))
  monkeypatch.setattr(text, "_SST_SIZE", len(data))
  monkeypatch.setattr(text, "_SST_SIZES", {"five": (2, 1, 1), "binary": (2, 1, 1)})


def _planetoid_files() -> dict[str, bytes]:
  """A tiny graph in Planetoid's layout (pickled by this Python and numpy, protocol 4): 4 training nodes,
  the 500 validation nodes after them, 6 more in allx, and 3 test nodes numbered after allx."""
  rng = np.random.default_rng(0)
  known, n_test, classes = 510, 3, 2
  features = (rng.random((known + n_test, 5)) < 0.5).astype(np.float32)
  features[:, 0] = 1
  labels = np.arange(known + n_test) % classes
  one_hot = np.eye(classes, dtype=np.int32)[labels]
  adjacency: dict[int, list[int]] = {i: [(i + 1) % (known + n_test)] for i in range(known + n_test)}
  csr = scipy.sparse.csr_matrix
  parts = {
    "x": csr(features[:4]),
    "y": one_hot[:4],
    "allx": csr(features[:known]),
    "ally": one_hot[:known],
    "tx": csr(features[known:]),
    "ty": one_hot[known:],
    "graph": adjacency,
  }
  files = {f"planetoid/ind.cora.{p}": pickle.dumps(obj, protocol=4) for p, obj in parts.items()}
  files["planetoid/ind.cora.test.index"] = "".join(f"{i}\n" for i in range(known, known + n_test)).encode()
  return files


def _trust_planetoid(monkeypatch, files: dict[str, bytes]) -> None:
  table = {path.rsplit("ind.cora.", 1)[1]: (_sha256(data), len(data)) for path, data in files.items()}
  monkeypatch.setitem(planetoid._CHECKSUMS, "cora", table)
  # The tiny graph's counts, so that good files load: 513 nodes, 5 features, 2 classes, 1,026 directed edges.
  monkeypatch.setitem(planetoid._EXPECTED, "cora", planetoid._Expected(513, 5, 2, 1026))


def _cifar_batch(n: int, seed: int) -> dict[bytes, Any]:
  rng = np.random.default_rng(seed)
  return {
    b"batch_label": b"a batch",
    b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
    b"labels": rng.integers(0, 10, n).tolist(),
    b"filenames": [f"{i}.png".encode() for i in range(n)],
  }


def _cifar_members(**replace: bytes) -> dict[str, bytes]:
  source = cifar._SOURCES["cifar10"]
  names = (*source.train, source.test)
  members = {m: pickle.dumps(_cifar_batch(3, i), protocol=4) for i, m in enumerate(names)}
  return {**members, **replace}


def _tar_gz(members: dict[str, bytes], folder: str = "cifar-10-batches-py", compress: bool = True) -> bytes:
  out = io.BytesIO()
  with tarfile.open(fileobj=out, mode="w:gz" if compress else "w") as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(f"{folder}/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return out.getvalue()


def _trust_cifar(monkeypatch, files: dict[str, bytes], members: dict[str, bytes] | None = None) -> None:
  source = cifar._SOURCES["cifar10"]
  changes: dict[str, Any] = {}
  if "cifar10/cifar-10-python.tar.gz" in files:
    archive = files["cifar10/cifar-10-python.tar.gz"]
    changes.update(size=len(archive), md5=_md5(archive))
  if members is not None:
    changes.update(member_md5={m: _md5(data) for m, data in members.items()})
  monkeypatch.setitem(cifar._SOURCES, "cifar10", dataclasses.replace(source, **changes))


@dataclasses.dataclass(frozen=True)
class _Format:
  """A dataset format: good files, how its loader is made to trust given files, how it loads them."""

  name: str
  target: str  # the file the faults damage, relative to the data folder
  files: Callable[[], dict[str, bytes]]
  trust: Callable[[pytest.MonkeyPatch, dict[str, bytes]], None]
  load: Callable[[Path], Any]
  # Faults of this format's own, beyond the common ones: name -> damaged bytes from the good ones.
  faults: tuple[tuple[str, Callable[[bytes], bytes]], ...] = ()
  # Plain text: a shorter text is still a text, so only the checksum and the size can tell it is cut.
  reader_sees_truncation: bool = True

  def __repr__(self) -> str:
    return self.name


FORMATS = [
  _Format(
    "mnist_idx_gz",
    "mnist/train-images-idx3-ubyte.gz",
    _mnist_files,
    _trust_mnist,
    lambda root: datasets_lib.load_dataset("mnist", data_dir=str(root)),
    faults=(
      ("plain_idx_cut_short", lambda good: gzip.decompress(good)[:-7]),
      ("gzip_of_a_png", lambda good: gzip.compress(_png())),
      ("gzip_of_labels", lambda good: gzip.compress(_idx(np.zeros(3)))),  # labels' magic, not images'
      ("gzip_with_junk_after_it", lambda good: good + b"\0\1junk"),
    ),
  ),
  _Format(
    "tiny_shakespeare_text",
    "tiny_shakespeare/input.txt",
    lambda: {"tiny_shakespeare/input.txt": _SHAKESPEARE_TEXT.encode()},
    _trust_shakespeare,
    lambda root: text.load_tiny_shakespeare(data_dir=str(root)),
    faults=(
      ("latin1_not_utf8", lambda good: "Ça coûte cher.".encode("latin1")),
      ("cut_inside_a_character", lambda good: good + "é".encode()[:1]),
      ("utf16", lambda good: good.decode().encode("utf-16")),
    ),
    reader_sees_truncation=False,
  ),
  _Format(
    "sst_zip",
    "sst/trainDevTestTrees_PTB.zip",
    lambda: {"sst/trainDevTestTrees_PTB.zip": _sst_zip()},
    _trust_sst,
    lambda root: text.load_sst(data_dir=str(root)),
    faults=(
      ("missing_member", lambda good: _sst_zip({"trees/train.txt": "(2 (2 a))\n"})),
      ("not_utf8_member", lambda good: _sst_zip({m: b"(2 caf\xe9)" for m in text._SST_MEMBERS.values()})),
      ("not_trees", lambda good: _sst_zip({m: "just some words\n" for m in text._SST_MEMBERS.values()})),
      ("broken_deflate_stream", lambda good: _break_zip_stream(good)),
    ),
  ),
  _Format(
    "planetoid_pickle",
    "planetoid/ind.cora.allx",
    _planetoid_files,
    _trust_planetoid,
    lambda root: planetoid.load_planetoid("cora", data_dir=str(root)),
    faults=(
      ("pickle_of_a_list", lambda good: pickle.dumps([1, 2, 3], protocol=4)),
      ("junk_after_the_pickle", lambda good: good + b"junk"),
      ("csr_matrix_without_arrays", lambda good: b"\x80\x02cscipy.sparse._csr\ncsr_matrix\n)\x81}b."),
    ),
  ),
  _Format(
    "planetoid_test_index",
    "planetoid/ind.cora.test.index",
    _planetoid_files,
    _trust_planetoid,
    lambda root: planetoid.load_planetoid("cora", data_dir=str(root)),
    faults=(("words", lambda good: b"510\nfive hundred\n512\n"),),
  ),
  _Format(
    "cifar_tar_gz",
    "cifar10/cifar-10-python.tar.gz",
    lambda: {"cifar10/cifar-10-python.tar.gz": _tar_gz(_cifar_members())},
    _trust_cifar,
    lambda root: datasets_lib.load_dataset("cifar10", data_dir=str(root)),
    faults=(
      ("tar_not_gzipped", lambda good: _tar_gz(_cifar_members(), compress=False)),
      (
        "a_batch_missing",
        lambda good: _tar_gz({m: d for m, d in _cifar_members().items() if m != "test_batch"}),
      ),
      (
        "a_batch_cut_short",
        lambda good: _tar_gz(_cifar_members(test_batch=_cifar_members()["test_batch"][:900])),
      ),
      ("a_batch_of_grey_images", lambda good: _tar_gz(_cifar_members(test_batch=_grey_batch()))),
      ("labels_that_are_not_integers", lambda good: _tar_gz(_cifar_members(test_batch=_text_label_batch()))),
    ),
  ),
]


def _break_zip_stream(good: bytes) -> bytes:
  """The archive with its first member's deflate stream broken (a reserved block type), its headers intact."""
  with zipfile.ZipFile(io.BytesIO(good)) as archive:
    info = archive.infolist()[0]
  start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # after the local header
  broken = bytearray(good)
  broken[start] = 0xFF  # BFINAL=1, BTYPE=11: no such block type
  return bytes(broken)


def _grey_batch() -> bytes:
  return pickle.dumps({b"data": np.zeros((3, 1024), np.uint8), b"labels": [0, 1, 2]}, protocol=4)


def _text_label_batch() -> bytes:
  return pickle.dumps(
    {b"data": np.zeros((3, 3072), np.uint8), b"labels": [b"cat", b"dog", b"cat"]}, protocol=4
  )


COMMON_FAULTS = (
  ("truncated", lambda good: good[: len(good) // 2]),
  ("empty", lambda good: b""),
  ("a_png", lambda good: _png()),
  ("gzip_magic_then_junk", lambda good: b"\x1f\x8b" + b"not really gzip" * 4),
)


def _write(root: Path, files: dict[str, bytes]) -> None:
  for relative, data in files.items():
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _cases(with_format_faults: bool) -> list[Any]:
  cases = []
  for fmt in FORMATS:
    faults = [*COMMON_FAULTS, *(fmt.faults if with_format_faults else ())]
    for fault, damage in faults:
      if with_format_faults and fault == "truncated" and not fmt.reader_sees_truncation:
        continue
      cases.append(pytest.param(fmt, damage, id=f"{fmt.name}-{fault}"))
  return cases


@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
def test_good_files_load(fmt, tmp_path, monkeypatch):
  """The generated files are good: the errors below come from the damage, not from the harness."""
  files = fmt.files()
  fmt.trust(monkeypatch, files)
  _write(tmp_path, files)
  assert fmt.load(tmp_path) is not None


@pytest.mark.parametrize("fmt, damage", _cases(with_format_faults=False))
def test_a_damaged_file_is_refused_by_its_checksum_naming_it(fmt, damage, tmp_path, monkeypatch):
  files = fmt.files()
  fmt.trust(monkeypatch, files)  # The checksums of the good files, as the loaders' tables hold the real ones.
  _write(tmp_path, {**files, fmt.target: damage(files[fmt.target])})
  with pytest.raises(ZooError) as err:
    fmt.load(tmp_path)
  message = str(err.value)
  assert str(tmp_path / fmt.target) in message and "is corrupt" in message, message


@pytest.mark.parametrize("fmt, damage", _cases(with_format_faults=True))
def test_a_damaged_file_that_passes_its_checksum_is_refused_by_its_reader(fmt, damage, tmp_path, monkeypatch):
  """As if the checksum table were edited, or the official file were itself bad: the reader still refuses it
  with a ZooError naming the file, rather than a traceback or a half-read dataset."""
  files = fmt.files()
  damaged = {**files, fmt.target: damage(files[fmt.target])}
  assert damaged[fmt.target] != files[fmt.target]
  fmt.trust(monkeypatch, damaged)
  _write(tmp_path, damaged)
  with pytest.raises(ZooError) as err:
    fmt.load(tmp_path)
  message = str(err.value)
  assert str(tmp_path / fmt.target) in message, message
  assert "is corrupt" not in message  # The reader found it, not the checksum.


def test_a_damaged_file_in_an_extracted_cifar_folder_is_refused_naming_it(tmp_path, monkeypatch):
  members = _cifar_members()
  damaged = {**members, "data_batch_2": members["data_batch_2"][:500]}
  folder = tmp_path / "cifar-10-batches-py"
  _write(folder, members)
  _trust_cifar(monkeypatch, {}, members)
  assert len(datasets_lib.load_dataset("cifar10", data_dir=str(tmp_path)).x_train) == 15
  _write(folder, damaged)
  with pytest.raises(ZooError, match=r"data_batch_2 is corrupt"):  # by its md5
    datasets_lib.load_dataset("cifar10", data_dir=str(tmp_path))
  _trust_cifar(monkeypatch, {}, damaged)
  with pytest.raises(ZooError, match=r"data_batch_2 is not a readable CIFAR batch pickle"):  # by the reader
    datasets_lib.load_dataset("cifar10", data_dir=str(tmp_path))


@pytest.mark.parametrize(
  "name, data",
  [
    ("truncated.png", _png()[: len(_png()) // 2]),
    ("truncated.jpg", _jpeg()[: len(_jpeg()) // 2]),
    ("empty.jpg", b""),
    ("idx.png", _idx(np.zeros((2, 4, 4)))),
    ("gzip.jpg", gzip.compress(_png())),
    ("text.png", b"<html>404 Not Found</html>"),
    ("png_header_only.png", _png()[:40]),
  ],
)
def test_a_damaged_image_is_refused_naming_it(name, data, tmp_path):
  (tmp_path / "good.png").write_bytes(_png())
  assert load_image(tmp_path / "good.png", 8, 8).shape == (8, 8, 3)
  path = tmp_path / name
  path.write_bytes(data)
  with pytest.raises(ZooError, match="cannot decode the image") as err:
    load_image(path, 8, 8)
  assert str(path) in str(err.value)


# --- downloads ----------------------------------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 5000  # 1.28 MB: more than one read chunk


class _Response:
  """Serves `data` in reads; `after_first_read` (if given) runs instead of the second read."""

  def __init__(self, data: bytes, after_first_read: Callable[[], bytes] | None = None):
    self.data, self.after_first_read, self.reads, self.offset = data, after_first_read, 0, 0

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def read(self, n: int) -> bytes:
    self.reads += 1
    if self.reads == 2 and self.after_first_read is not None:
      return self.after_first_read()
    chunk = self.data[self.offset : self.offset + n]
    self.offset += len(chunk)
    return chunk


# A child process that downloads through a stand-in urlopen which serves the first chunk and then kills the
# process with SIGKILL: no `except` or `finally` runs, as when the OOM killer or a preemption strikes. Only
# zoo.registry and zoo.data.download are imported (the zoo package itself is stubbed), so it starts at once.
_KILLED_DOWNLOAD = """
import os, signal, sys, types, urllib.request
repo, cache, payload_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
for name, folder in (("zoo", "zoo"), ("zoo.data", "zoo/data")):
  module = types.ModuleType(name)
  module.__path__ = [os.path.join(repo, folder)]
  sys.modules[name] = module
from zoo.data import download

class Response:
  reads = 0
  def __enter__(self): return self
  def __exit__(self, *exc): return False
  def read(self, n):
    self.reads += 1
    if self.reads == 1:
      return bytes(n)
    sys.stdout.write(str(sorted(os.listdir(os.path.join(cache, "ds")))))
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

urllib.request.urlopen = lambda url, timeout=None: Response()
download.fetch("ds/f.bin", ["https://example.invalid/f.bin"], "0" * 64, cache_dir=cache, size=payload_size)
"""


def test_a_killed_download_leaves_no_file_and_its_temporary_is_removed_next_time(tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  child = subprocess.Popen(
    [sys.executable, "-c", _KILLED_DOWNLOAD, str(REPO), str(cache), str(len(PAYLOAD))],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  out, err = child.communicate(timeout=60)
  assert child.returncode == -signal.SIGKILL, err
  (part,) = _files(cache)
  assert part.name.startswith(".f.bin.") and part.name.endswith(".part") and f".{child.pid}@" in part.name
  assert part.name in out  # It was there while the download ran...
  assert not (cache / "ds" / "f.bin").exists()  # ...and the destination never was.

  monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _Response(PAYLOAD))
  path = fetch("ds/f.bin", ["https://example.invalid/f.bin"], _sha256(PAYLOAD), cache_dir=cache)
  assert path.read_bytes() == PAYLOAD
  assert _files(cache) == [path]  # The dead download's temporary is gone.


def test_only_the_temporaries_of_dead_downloads_are_removed(tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  (cache / "ds").mkdir(parents=True)
  host = socket.gethostname()
  ended = subprocess.Popen([sys.executable, "-c", "pass"])
  ended.wait()
  stale = {
    "dead_here": cache / "ds" / f".f.bin.{ended.pid}@{host}.abc123.part",
    "old_elsewhere": cache / "ds" / ".f.bin.1@another-host.def456.part",
  }
  kept = {
    "live_here": cache / "ds" / f".f.bin.{os.getpid()}@{host}.ghi789.part",  # a download running now
    "recent_elsewhere": cache / "ds" / ".f.bin.1@another-host.jkl012.part",
    "another_file": cache / "ds" / f".g.bin.{ended.pid}@{host}.mno345.part",
  }
  for path in [*stale.values(), *kept.values()]:
    path.write_bytes(b"partial")
  a_day_ago = time.time() - 25 * 3600
  os.utime(stale["old_elsewhere"], (a_day_ago, a_day_ago))

  monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _Response(PAYLOAD))
  path = fetch("ds/f.bin", ["https://example.invalid/f.bin"], _sha256(PAYLOAD), cache_dir=cache)
  assert _files(cache) == sorted([path, *kept.values()])


def test_a_download_that_fails_mid_stream_then_succeeds_from_the_next_mirror(tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  responses = iter(
    [_Response(PAYLOAD, after_first_read=_raise(TimeoutError("read timed out"))), _Response(PAYLOAD)]
  )
  monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: next(responses))
  urls = ["https://a.invalid/f.bin", "https://b.invalid/f.bin"]
  path = fetch("ds/f.bin", urls, _sha256(PAYLOAD), cache_dir=cache, size=len(PAYLOAD))
  assert path.read_bytes() == PAYLOAD and _files(cache) == [path]


def test_a_download_cut_short_by_the_server_is_not_kept(tmp_path, monkeypatch):
  """The server closes the connection early without an error: the size and checksum catch it."""
  cache = tmp_path / "cache"
  monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _Response(PAYLOAD[:1000]))
  with pytest.raises(ZooError, match=r"gave 1,000 bytes, expected 1,280,000"):
    fetch("ds/f.bin", ["https://a.invalid/f.bin"], _sha256(PAYLOAD), cache_dir=cache, size=len(PAYLOAD))
  with pytest.raises(ZooError, match="its sha256 is"):
    fetch("ds/f.bin", ["https://a.invalid/f.bin"], _sha256(PAYLOAD), cache_dir=cache)
  assert _files(cache) == []


def _raise(error: BaseException) -> Callable[[], bytes]:
  def fail() -> bytes:
    raise error

  return fail


def test_unreadable_files_and_unwritable_caches_are_zoo_errors(tmp_path):
  (tmp_path / "a_folder").mkdir()
  with pytest.raises(ZooError, match="cannot read .*a_folder"):
    verify(tmp_path / "a_folder", _sha256(b""))
  (tmp_path / "a_file").write_bytes(b"")
  with pytest.raises(ZooError, match=r"cannot create the download folder .*a_file/ds.*ZOO_CACHE_DIR"):
    fetch("ds/f.bin", ["https://a.invalid/f.bin"], _sha256(PAYLOAD), cache_dir=tmp_path / "a_file")


# --- pickles ------------------------------------------------------------------------------------------------


class _Exploit:
  """Unpickles as a call of `fn(*args)`."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


def _evil(marker: Path, protocol: int) -> bytes:
  return pickle.dumps(_Exploit(os.system, f"touch {marker}"), protocol=protocol)


def _planetoid_reader(root: Path, evil: bytes, monkeypatch) -> tuple[Path, Callable[[], Any]]:
  files = {**_planetoid_files(), "planetoid/ind.cora.graph": evil}
  _trust_planetoid(monkeypatch, files)  # The checksum lets it through: the unpickler must stop it.
  _write(root, files)
  return root / "planetoid/ind.cora.graph", lambda: planetoid.load_planetoid("cora", data_dir=str(root))


def _planetoid_direct_reader(root: Path, evil: bytes, monkeypatch) -> tuple[Path, Callable[[], Any]]:
  files = {**_planetoid_files(), "planetoid/ind.cora.tx": evil}
  _write(root, files)
  paths = {part: root / f"planetoid/ind.cora.{part}" for part in planetoid.PARTS}
  return paths["tx"], lambda: planetoid.read_planetoid(paths, "cora")


def _cifar_archive_reader(root: Path, evil: bytes, monkeypatch) -> tuple[Path, Callable[[], Any]]:
  files = {"cifar10/cifar-10-python.tar.gz": _tar_gz(_cifar_members(data_batch_3=evil))}
  _trust_cifar(monkeypatch, files)
  _write(root, files)
  load = lambda: datasets_lib.load_dataset("cifar10", data_dir=str(root))  # noqa: E731
  return root / "cifar10/cifar-10-python.tar.gz", load


def _cifar_folder_reader(root: Path, evil: bytes, monkeypatch) -> tuple[Path, Callable[[], Any]]:
  members = _cifar_members(test_batch=evil)
  _trust_cifar(monkeypatch, {}, members)
  _write(root / "cifar-10-batches-py", members)
  load = lambda: datasets_lib.load_dataset("cifar10", data_dir=str(root))  # noqa: E731
  return root / "cifar-10-batches-py" / "test_batch", load


def _generic_reader(root: Path, evil: bytes, monkeypatch) -> tuple[Path, Callable[[], Any]]:
  path = root / "some.pkl"
  _write(root, {"some.pkl": evil})
  return path, lambda: load_pickle(path.read_bytes(), path, NUMPY_ARRAY_GLOBALS, "test")


PICKLE_READERS = {
  "planetoid": _planetoid_reader,
  "planetoid_read_planetoid": _planetoid_direct_reader,
  "cifar_archive": _cifar_archive_reader,
  "cifar_folder": _cifar_folder_reader,
  "load_pickle": _generic_reader,
}


@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL and STACK_GLOBAL name the function differently
@pytest.mark.parametrize("reader", list(PICKLE_READERS))
def test_a_pickle_that_would_run_code_is_refused_by_every_reader(reader, protocol, tmp_path, monkeypatch):
  marker = tmp_path / "pwned"
  evil = _evil(marker, protocol)
  path, load = PICKLE_READERS[reader](tmp_path / "data", evil, monkeypatch)
  with pytest.raises(ZooError, match="refused") as err:
    load()
  message = str(err.value)
  assert str(path) in message and f"{os.system.__module__}.system" in message, message
  assert not marker.exists()


def test_the_crafted_pickle_does_run_code_when_unpickled_plainly(tmp_path):
  """So the test above could fail: plain pickle runs the payload."""
  marker = tmp_path / "pwned"
  pickle.loads(_evil(marker, 2))
  assert marker.exists()


# Calls that unpickle, or load formats that can; only the allow-list readers may subclass pickle's Unpickler.
_UNPICKLING_CALLS = {"pickle.load", "pickle.loads", "torch.load", "marshal.load", "marshal.loads"}
_UNSAFE_MODULES = {"dill", "cloudpickle", "joblib", "shelve"}
_ALLOW_LIST_READERS = {"zoo/data/pickles.py", "zoo/interop/tensorfile.py"}


def _audit(relative: str, source: bytes) -> list[str]:
  """What in a module's code (strings and comments aside) could unpickle without an allow-list."""
  kinds = (tokenize.NAME, tokenize.OP)
  tokens = [t.string for t in tokenize.tokenize(io.BytesIO(source).readline) if t.type in kinds]
  pairs = {(tokens[i], tokens[i + 2]) for i in range(len(tokens) - 2) if tokens[i + 1] == "."}
  calls = {
    f"{tokens[i]}.{tokens[i + 2]}" for i in range(len(tokens) - 3) if tokens[i + 1 : i + 4 : 2] == [".", "("]
  }
  problems = [f"{relative}: {c}(...)" for c in sorted(calls & _UNPICKLING_CALLS)]
  imported = {tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in ("import", "from")}
  problems += [f"{relative}: imports {m}" for m in sorted(imported & _UNSAFE_MODULES)]
  if relative not in _ALLOW_LIST_READERS and pairs & {("pickle", "Unpickler"), ("pickle", "_Unpickler")}:
    problems.append(f"{relative}: an Unpickler outside the allow-list readers")
  allow = [tokens[i + 2] for i, t in enumerate(tokens[:-2]) if t == "allow_pickle" and tokens[i + 1] == "="]
  return problems + [f"{relative}: allow_pickle={a}" for a in allow if a != "False"]


def test_every_pickle_the_zoo_reads_goes_through_an_allow_list():
  """The audit, kept as a test: no module of the zoo unpickles but through an allow-list Unpickler (the
  dataset readers' zoo/data/pickles.py, the checkpoint reader's zoo/interop/tensorfile.py), and numpy
  files are never loaded with allow_pickle=True."""
  problems = []
  for path in sorted((REPO / "zoo").rglob("*.py")):
    problems += _audit(path.relative_to(REPO).as_posix(), path.read_bytes())
  assert not problems, problems
  planted = {  # The audit finds what it looks for...
    "x = pickle.loads(data)": "pickle.loads(...)",
    "a = np.load(f, allow_pickle=True)": "allow_pickle=True",
    "import joblib": "imports joblib",
    "class U(pickle.Unpickler): pass": "an Unpickler",
  }
  for source, problem in planted.items():
    assert any(problem in p for p in _audit("zoo/x.py", source.encode())), source
  # ...and not in strings or comments.
  assert _audit("zoo/x.py", b"s = 'pickle.loads(data)'  # torch.load(f)\n") == []
