"""Dataset files: found in a local folder or the cache, else downloaded, and always checked by checksum."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import pathlib
import socket
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence

from zoo.registry import ZooError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def file_digests(path: str | os.PathLike, algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
  """The hex digests of a file under each of `algorithms` (hashlib names), in one pass over it."""
  digests = {name: hashlib.new(name) for name in algorithms}
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      for digest in digests.values():
        digest.update(chunk)
  return {name: digest.hexdigest() for name, digest in digests.items()}


def file_sha256(path: str | os.PathLike) -> str:
  """The hex sha256 of a file, read in chunks (hashing all of Fashion-MNIST takes well under a second)."""
  return file_digests(path)["sha256"]


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
  # md5 is accepted because some datasets publish nothing else (CIFAR). Against corruption and truncation
  # it is as good as sha256; a forged file would need a second preimage, which md5 still resists.
  expected = {name: value.lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}
  if not expected:
    raise ValueError("a checksum is needed: sha256 or md5")
  return expected


def _mismatch(expected: dict[str, str], actual: dict[str, str]) -> str | None:
  for name, digest in expected.items():
    if actual[name] != digest:
      return f"its {name} is {actual[name]}, expected {digest}"
  return None


def verify(
  path: str | os.PathLike, sha256: str | None = None, *, md5: str | None = None, size: int | None = None
) -> pathlib.Path:
  """Returns `path` if its content has the expected checksums, else raises ZooError saying what to do.

  Args:
    path: the file.
    sha256: its expected hex sha256.
    md5: its expected hex md5 (at least one of sha256 and md5 is needed; every one given is checked).
    size: its expected size in bytes, checked first: a truncated file gets a message that says so.
  """
  path = pathlib.Path(path)
  expected = _expected(sha256, md5)
  try:
    if size is not None and (actual_size := path.stat().st_size) != size:
      problem = f"it is {actual_size:,} bytes, expected {size:,} (an incomplete download or copy?)"
    else:
      problem = _mismatch(expected, file_digests(path, expected))
  except OSError as e:  # Missing, unreadable (permissions), a folder, an I/O error.
    raise ZooError(f"cannot read {path}: {e.strerror or e}") from None
  if problem:
    raise ZooError(
      f"{path} is corrupt or not the expected file: {problem}. "
      "Delete it (it is then downloaded again) or replace it with the official file."
    )
  return path


def default_cache_dir() -> pathlib.Path:
  """$ZOO_CACHE_DIR, else $XDG_CACHE_HOME/zoo, else ~/.cache/zoo."""
  if os.environ.get("ZOO_CACHE_DIR"):
    return pathlib.Path(os.environ["ZOO_CACHE_DIR"]).expanduser()
  xdg = os.environ.get("XDG_CACHE_HOME")
  return (pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache") / "zoo"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path | None:
  """The folder of local dataset files: the argument, else $ZOO_DATA_DIR, else None."""
  data_dir = data_dir or os.environ.get("ZOO_DATA_DIR") or None
  return pathlib.Path(data_dir).expanduser() if data_dir else None


def fetch(
  relative_path: str,
  urls: Sequence[str],
  sha256: str | None = None,
  data_dir: str | os.PathLike | None = None,
  cache_dir: str | os.PathLike | None = None,
  *,
  md5: str | None = None,
  size: int | None = None,
) -> pathlib.Path:
  """Returns the path of a verified copy of a dataset file.

  Looks in `data_dir` (else $ZOO_DATA_DIR) at `<data_dir>/<relative_path>` and `<data_dir>/<basename>`,
  then in the cache at `<cache>/<relative_path>`; otherwise downloads it from each of `urls` in turn.
  A download goes to a temporary file next to its destination and is renamed into place only once its
  checksum matches, so the cache never holds a partial or wrong file.

  Args:
    relative_path: where the file lives under a data or cache folder, e.g. "mnist/t10k-labels-idx1-ubyte.gz".
    urls: where to download it from, tried in order.
    sha256: the expected hex digest; every copy, local, cached or downloaded, is checked against it.
    data_dir: a folder of local files (default: $ZOO_DATA_DIR).
    cache_dir: where downloads go (default: $ZOO_CACHE_DIR, $XDG_CACHE_HOME/zoo or ~/.cache/zoo).
    md5: an expected hex md5, for datasets that publish no sha256 (at least one of the two is needed).
    size: the expected size in bytes, also checked on every copy.

  Raises:
    ZooError: a file with the wrong checksum, or no URL gave a good copy.
  """
  expected = _expected(sha256, md5)
  local = resolve_data_dir(data_dir)
  cache = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
  dest = cache / relative_path
  looked = [local / relative_path, local / pathlib.PurePath(relative_path).name] if local else []
  for path in [*looked, dest]:
    if path.is_file():
      return verify(path, sha256, md5=md5, size=size)

  try:
    dest.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ZooError(
      f"cannot create the download folder {dest.parent} ({e.strerror or e}); set ZOO_CACHE_DIR to a writable "
      f"folder, or put {relative_path} in a folder passed as --data-dir (or ZOO_DATA_DIR)"
    ) from None
  _remove_stale_parts(dest)
  errors = []
  for url in urls:
    try:
      return _download(url, dest, expected, size)
    except Exception as e:  # One failed mirror is not fatal: say why and try the next.
      log.warning("download of %s failed: %s", url, e)
      errors.append(f"{url} ({e})")
  where = f"<data_dir>/{relative_path}" if not local else f"{local / relative_path}"
  raise ZooError(
    f"could not download {relative_path}; tried: {'; '.join(errors) or 'no URLs'}. Without network access, "
    f"put the file at {where} and pass --data-dir (or set ZOO_DATA_DIR) to that folder."
  )


# A download's temporary file: `.<name>.<pid>@<host>.<random>.part` next to its destination, so that a later
# fetch can tell the leftovers of a killed download (SIGKILL, power loss: no `except` ran) from a live one.
_PART_SUFFIX = ".part"
# A live download writes at least every few minutes (urlopen's timeout is 60 s a read): a part untouched
# for this long is dead whoever wrote it, even on another host of a shared file system.
_STALE_PART_SECONDS = 24 * 3600


def _part_prefix(dest: pathlib.Path) -> str:
  return f".{dest.name}.{os.getpid()}@{socket.gethostname()}."


def _remove_stale_parts(dest: pathlib.Path) -> None:
  """Deletes the temporary files that killed downloads of `dest` left: those of this host whose process is
  gone, and any untouched for a day."""
  host = socket.gethostname()
  for part in dest.parent.glob(f".{glob.escape(dest.name)}.*{_PART_SUFFIX}"):
    owner = part.name[len(dest.name) + 2 : -len(_PART_SUFFIX)].rpartition(".")[0]  # "<pid>@<host>"
    pid, _, part_host = owner.partition("@")
    try:
      stale = time.time() - part.stat().st_mtime > _STALE_PART_SECONDS
      if not stale and part_host == host and pid.isdigit():
        stale = not _process_alive(int(pid))
      if stale:
        log.info("removing %s, left by an interrupted download", part)
        part.unlink()
    except OSError:  # Gone already (another process cleaned it), or not ours to delete: leave it.
      pass


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (OSError, OverflowError):  # Another user's process (PermissionError), or no pid we can ask about.
    return True
  return True


def _download(url: str, dest: pathlib.Path, expected: dict[str, str], size: int | None) -> pathlib.Path:
  log.info("downloading %s to %s", url, dest)
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=_part_prefix(dest), suffix=_PART_SUFFIX)
  try:
    digests = {name: hashlib.new(name) for name in expected}
    received = 0
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
      while chunk := response.read(_CHUNK):
        for digest in digests.values():
          digest.update(chunk)
        out.write(chunk)
        received += len(chunk)
    if size is not None and received != size:
      raise ZooError(f"the download gave {received:,} bytes, expected {size:,}")
    if problem := _mismatch(expected, {name: d.hexdigest() for name, d in digests.items()}):
      raise ZooError(f"the downloaded file is not the expected one: {problem}")
    os.replace(tmp, dest)
  except BaseException:  # Also on Ctrl-C: a partial download is never left behind.
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return dest
