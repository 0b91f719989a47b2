"""Dataset files: found in a local folder or the cache, else downloaded, and always checked by sha256."""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import tempfile
import urllib.request
from collections.abc import Sequence

from zoo.registry import ZooError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
  """The hex sha256 of a file, read in chunks (hashing all of Fashion-MNIST takes well under a second)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def verify(path: pathlib.Path, sha256: str) -> pathlib.Path:
  """Returns `path` if its content has the expected sha256, else raises ZooError saying what to do."""
  actual = file_sha256(path)
  if actual != sha256.lower():
    raise ZooError(
      f"{path} is corrupt or not the expected file: its sha256 is {actual}, expected {sha256}. "
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
  sha256: str,
  data_dir: str | os.PathLike | None = None,
  cache_dir: str | os.PathLike | None = None,
) -> pathlib.Path:
  """Returns the path of a verified copy of a dataset file.

  Looks in `data_dir` (else $ZOO_DATA_DIR) at `<data_dir>/<relative_path>` and `<data_dir>/<basename>`,
  then in the cache at `<cache>/<relative_path>`; otherwise downloads it from each of `urls` in turn.
  A download goes to a temporary file next to its destination and is renamed into place only once its
  sha256 matches, so the cache never holds a partial or wrong file.

  Args:
    relative_path: where the file lives under a data or cache folder, e.g. "mnist/t10k-labels-idx1-ubyte.gz".
    urls: where to download it from, tried in order.
    sha256: the expected hex digest; every copy, local, cached or downloaded, is checked against it.
    data_dir: a folder of local files (default: $ZOO_DATA_DIR).
    cache_dir: where downloads go (default: $ZOO_CACHE_DIR, $XDG_CACHE_HOME/zoo or ~/.cache/zoo).

  Raises:
    ZooError: a file with the wrong checksum, or no URL gave a good copy.
  """
  local = resolve_data_dir(data_dir)
  cache = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
  dest = cache / relative_path
  looked = [local / relative_path, local / pathlib.PurePath(relative_path).name] if local else []
  for path in [*looked, dest]:
    if path.is_file():
      return verify(path, sha256)

  dest.parent.mkdir(parents=True, exist_ok=True)
  errors = []
  for url in urls:
    try:
      return _download(url, dest, sha256.lower())
    except Exception as e:  # One failed mirror is not fatal: say why and try the next.
      log.warning("download of %s failed: %s", url, e)
      errors.append(f"{url} ({e})")
  where = f"<data_dir>/{relative_path}" if not local else f"{local / relative_path}"
  raise ZooError(
    f"could not download {relative_path}; tried: {'; '.join(errors) or 'no URLs'}. Without network access, "
    f"put the file at {where} and pass --data-dir (or set ZOO_DATA_DIR) to that folder."
  )


def _download(url: str, dest: pathlib.Path, sha256: str) -> pathlib.Path:
  log.info("downloading %s to %s", url, dest)
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
  try:
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
      while chunk := response.read(_CHUNK):
        digest.update(chunk)
        out.write(chunk)
    if digest.hexdigest() != sha256:
      raise ZooError(f"the downloaded file has sha256 {digest.hexdigest()}, expected {sha256}")
    os.replace(tmp, dest)
  except BaseException:  # Also on Ctrl-C: a partial download is never left behind.
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return dest
