"""Dataset files that are pickles (CIFAR's batches, Planetoid's matrices), read without running code.

Unpickling calls whatever global a file names, so a pickle can run any code (the `pickle` module's own
warning). These readers look up only the (module, name) pairs on an allow-list; anything else, or a file
that is not a whole pickle, is a ZooError naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
import typing
from collections.abc import Mapping

import numpy as np

from zoo.registry import ZooError

# What pickled numpy arrays name. `_reconstruct` is taken from an array's own pickle recipe so that the
# private module it lives in (numpy.core in numpy 1, numpy._core in numpy 2) need not be imported; files
# written by either numpy name it by their own module.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
NUMPY_ARRAY_GLOBALS: dict[tuple[str, str], typing.Any] = {
  ("numpy", "ndarray"): np.ndarray,
  ("numpy", "dtype"): np.dtype,
  ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
  ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
}


class AllowListUnpickler(pickle.Unpickler):
  """An Unpickler that builds only the globals in `allowed` ({(module, name): object}) and refuses the rest.

  Args:
    file: the pickle's bytes, as a binary file.
    path: the file's name, for error messages.
    allowed: the exact (module, name) pairs the format needs, with the objects they stand for.
    what: the format's name in error messages, e.g. "Planetoid".
    encoding: how Python 2 `str` objects are decoded ('bytes' keeps them bytes, 'latin1' one char a byte).
  """

  def __init__(
    self,
    file: typing.BinaryIO,
    path: str | os.PathLike,
    allowed: Mapping[tuple[str, str], typing.Any],
    what: str,
    *,
    encoding: str = "ASCII",
  ):
    super().__init__(file, encoding=encoding)
    self.path, self.allowed, self.what = path, allowed, what

  def find_class(self, module: str, name: str) -> typing.Any:
    # Called for every GLOBAL, STACK_GLOBAL and extension-code opcode before anything is looked up, let alone
    # called; an exact (module, name) match also rules out dotted names that walk attributes.
    try:
      return self.allowed[(module, name)]
    except KeyError:
      raise ZooError(
        f"{self.path} refers to {module}.{name}, which no {self.what} file needs; refused to read it (a "
        "pickle can run any function it names). Replace it with the official file."
      ) from None

  def persistent_load(self, pid: typing.Any) -> typing.NoReturn:
    raise ZooError(f"{self.path} uses a persistent id, which no {self.what} file does; refused to read it")


def load_pickle(
  data: bytes,
  path: str | os.PathLike,
  allowed: Mapping[tuple[str, str], typing.Any],
  what: str,
  *,
  encoding: str = "ASCII",
  trailing_ok: bool = False,
) -> typing.Any:
  """Unpickles `data` (the content of `path`) with an AllowListUnpickler. A refused global, a truncated or
  malformed pickle, or bytes after its end (unless `trailing_ok`): ZooError naming `path`."""
  stream = io.BytesIO(data)
  try:
    obj = AllowListUnpickler(stream, path, allowed, what, encoding=encoding).load()
  except ZooError:
    raise
  except Exception as e:  # A damaged pickle fails in many ways (EOFError, UnpicklingError, ValueError...).
    raise ZooError(f"{path} is not a readable {what} pickle ({type(e).__name__}: {e})") from None
  # One pickle per file: bytes after it mean a garbled or concatenated file, not one to half-read.
  if not trailing_ok and (extra := len(data) - stream.tell()):
    raise ZooError(f"{path} is not a readable {what} pickle: {extra:,} bytes follow its end")
  return obj
