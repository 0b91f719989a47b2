"""A strict reader of IDX files, the format of MNIST and Fashion-MNIST (LeCun et al., 1998)."""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from zoo.registry import ZooError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, cols)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)
_UBYTE = 0x08  # The only element type the datasets use; the others (int16, float32, ...) are refused.


def read_idx(path: str | os.PathLike, magic: int | None = None) -> np.ndarray:
  """Reads a (gzip-compressed or plain) IDX file of unsigned bytes into a uint8 array.

  The header is checked (two zero bytes, the unsigned-byte type, 1 to 4 dimensions, and `magic` when
  given) and the data must be exactly as long as the dimensions say, so a truncated, garbled or
  mislabelled file raises ZooError naming it instead of returning wrong data.
  """
  try:
    with open(path, "rb") as f:
      raw = f.read()
    if raw[:2] == b"\x1f\x8b":
      raw = gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncation is an EOFError.
    raise ZooError(f"{path} is not a readable IDX file ({e}); delete it and download it again") from None

  def bad(why: str) -> ZooError:
    return ZooError(f"{path} is not a valid IDX file: {why}; delete it and download it again")

  if len(raw) < 4:
    raise bad(f"only {len(raw)} bytes")
  found = int.from_bytes(raw[:4], "big")
  ndim = raw[3]
  if raw[:2] != b"\0\0" or raw[2] != _UBYTE or not 1 <= ndim <= 4:
    raise bad(f"magic number 0x{found:08x} is not that of an unsigned-byte IDX file of 1 to 4 dimensions")
  if magic is not None and found != magic:
    raise bad(f"magic number 0x{found:08x}, expected 0x{magic:08x}")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise bad(f"the header is cut short ({len(raw)} bytes)")
  shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  expected = header + math.prod(shape)
  if len(raw) != expected:
    raise bad(f"{len(raw)} bytes, but a {shape} array needs exactly {expected}")
  # A copy, so the array owns writable memory rather than viewing an immutable bytes object.
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy()
