"""State dicts from files without PyTorch: safetensors (read and write) and PyTorch's zip checkpoints.

A PyTorch checkpoint is a pickle, and unpickling runs whatever functions the file names. Here it goes through
an `Unpickler` whose `find_class` hands out only this module's own tensor rebuilders, storage and dtype
markers, and a few inert containers; any other import the file asks for (os.system, builtins.eval, a
model class, ...) stops the read before anything is called. Tensors come back as NumPy arrays (bfloat16 and
float8 as `ml_dtypes` types). Formats: https://huggingface.co/docs/safetensors (8-byte little-endian header
length, JSON header, byte buffer) and torch.serialization's zip layout (`<archive>/data.pkl`, storages in
`<archive>/data/<key>`, `<archive>/byteorder`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
import struct
import sys
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from zoo.registry import ZooError

PathLike = str | os.PathLike

# Checkpoint wrappers: the keys training scripts keep the model's state dict under, the model's own first
# (timm keeps both "state_dict" and "state_dict_ema"; the EMA weights are the fallback, not the default).
WRAPPER_KEYS = (
  "state_dict",
  "model_state_dict",
  "model_state",
  "model",
  "module",
  "net",
  "network",
  "ema",
  "state_dict_ema",
  "model_ema",
  "ema_state_dict",
)

# ---------------------------------------------------------------------------------------------------------
# safetensors

# The spec's dtypes in its own order (the reference writer sorts tensors by it, largest first, so that every
# tensor starts aligned to its item size; writing the same order gives byte-identical files).
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
  "BOOL": np.dtype(np.bool_),
  "U8": np.dtype(np.uint8),
  "I8": np.dtype(np.int8),
  "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
  "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
  "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
  "I16": np.dtype(np.int16),
  "U16": np.dtype(np.uint16),
  "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "I32": np.dtype(np.int32),
  "U32": np.dtype(np.uint32),
  "F32": np.dtype(np.float32),
  "C64": np.dtype(np.complex64),
  "F64": np.dtype(np.float64),
  "I64": np.dtype(np.int64),
  "U64": np.dtype(np.uint64),
}
_SAFETENSORS_CODE = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
_SAFETENSORS_RANK = {code: i for i, code in enumerate(SAFETENSORS_DTYPES)}
# The reference implementation's limit: a larger header is a corrupt length field, not a real header.
MAX_HEADER_BYTES = 100_000_000


def read_safetensors(path: PathLike) -> dict[str, np.ndarray]:
  """The tensors of a `.safetensors` file by name, in the file's header order, as NumPy arrays.

  Raises ZooError naming the file for anything the spec does not allow: a truncated file, a header length
  beyond the file, a header that is not JSON, an unknown dtype, offsets outside the buffer, overlapping or
  with gaps, or a size that is not prod(shape) * itemsize.
  """
  tensors, _ = _read_safetensors(Path(path))
  return tensors


def read_safetensors_metadata(path: PathLike) -> dict[str, str]:
  """The `__metadata__` of a `.safetensors` file ({} if it has none); the tensors are checked, not kept."""
  _, metadata = _read_safetensors(Path(path), header_only=True)
  return metadata


def write_safetensors(
  path: PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> None:
  """Writes `tensors` (arrays by name) as a `.safetensors` file, atomically (a temporary file, then rename).

  Accepts NumPy arrays and anything `read_state_dict` accepts as a tensor (JAX arrays, torch tensors).
  Raises ZooError for a dtype the format has no code for, a name that is not a string, or metadata that is
  not str -> str; the file at `path` is then left as it was.
  """
  path = Path(path)
  arrays: list[tuple[str, np.ndarray, str]] = []
  for name, value in tensors.items():
    if not isinstance(name, str) or name == "__metadata__":
      raise ZooError(
        f"cannot write {path}: tensor name {name!r} is not allowed (a string other than __metadata__)"
      )
    array = _as_array(value)
    if array is None:
      raise ZooError(f"cannot write {path}: {name!r} is a {type(value).__name__}, not an array")
    code = _SAFETENSORS_CODE.get(array.dtype.newbyteorder("="))
    if code is None:
      raise ZooError(
        f"cannot write {path}: tensor {name!r} has dtype {array.dtype}, which safetensors has no code for "
        f"(it has {', '.join(SAFETENSORS_DTYPES)})"
      )
    arrays.append((name, array, code))
  if metadata is not None and not (
    isinstance(metadata, Mapping)
    and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
  ):
    raise ZooError(f"cannot write {path}: metadata must map strings to strings, got {metadata!r}")

  # The reference writer's order: larger dtypes first, then by name.
  arrays.sort(key=lambda item: (-_SAFETENSORS_RANK[item[2]], item[0]))
  header: dict[str, Any] = {}
  if metadata:
    header["__metadata__"] = dict(metadata)
  offset = 0
  for name, array, code in arrays:
    header[name] = {
      "dtype": code,
      "shape": list(array.shape),
      "data_offsets": [offset, offset + array.nbytes],
    }
    offset += array.nbytes
  header_bytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
  header_bytes += b" " * (-len(header_bytes) % 8)  # The buffer starts 8-aligned (the spec's padding).

  # Next to the target (os.replace is atomic within a file system), unique per process and thread.
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
  try:
    with open(tmp, "wb") as f:
      f.write(struct.pack("<Q", len(header_bytes)))
      f.write(header_bytes)
      for _, array, _ in arrays:
        f.write(_little_endian(np.ascontiguousarray(array)).reshape(-1).view(np.uint8).data)
    os.replace(tmp, path)
  except BaseException as e:
    tmp.unlink(missing_ok=True)
    if isinstance(e, OSError):
      raise ZooError(f"cannot write {path}: {e.strerror or e}") from None
    raise


def _read_safetensors(path: Path, header_only: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  with _open(path) as f:
    size = os.fstat(f.fileno()).st_size
    if size < 8:
      raise ZooError(
        f"{path} is not a safetensors file: it has {size} bytes, fewer than the 8 of a header length"
      )
    (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8:
      raise ZooError(
        f"{path} is truncated or not a safetensors file: its header length is {n} bytes, but only {size - 8} "
        "bytes follow"
      )
    if n > MAX_HEADER_BYTES:
      raise ZooError(f"{path} is not a safetensors file: its header length {n} is over {MAX_HEADER_BYTES}")
    entries, metadata = _parse_safetensors_header(path, f.read(n), buffer_size=size - 8 - n)
    if header_only:
      return {}, metadata
    buffer = bytearray(size - 8 - n)
    if f.readinto(buffer) != len(buffer):
      raise ZooError(f"{path} is truncated: it ended while its tensors were read")
  tensors = {}
  for name, (dtype, shape, begin, end) in entries.items():
    array = np.frombuffer(buffer, np.uint8, end - begin, begin)
    if begin % dtype.itemsize:  # Unaligned (another writer's order): a copy is aligned.
      array = array.copy()
    if dtype == np.bool_:
      array = array.astype(np.bool_)  # Any nonzero byte is True, as in torch.
    tensors[name] = _from_byteorder(array.view(dtype), "little").reshape(shape)
  return tensors, metadata


def _parse_safetensors_header(
  path: Path, raw: bytes, buffer_size: int
) -> tuple[dict[str, tuple[np.dtype, tuple[int, ...], int, int]], dict[str, str]]:
  def bad(what: str) -> ZooError:
    return ZooError(f"{path} is not a valid safetensors file: {what}")

  def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
      raise bad(f"its header names {sorted(k for k in set(keys) if keys.count(k) > 1)} more than once")
    return dict(pairs)

  try:
    header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise bad(
      f"its {len(raw)}-byte header is not JSON ({e}); is the file truncated or of another format?"
    ) from None
  if not isinstance(header, dict):
    raise bad(f"its header is a JSON {type(header).__name__}, not an object")
  metadata = header.pop("__metadata__", None) or {}
  if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
    raise bad(f"its __metadata__ is not an object of strings: {metadata!r}")

  entries = {}
  for name, info in header.items():
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
      raise bad(f"tensor {name!r} is described by {info!r}, not by exactly dtype, shape and data_offsets")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if code not in SAFETENSORS_DTYPES:
      raise bad(f"tensor {name!r} has dtype {code!r}; known: {', '.join(SAFETENSORS_DTYPES)}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
      raise bad(f"tensor {name!r} has shape {shape!r}, not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
      raise bad(f"tensor {name!r} has data_offsets {offsets!r}, not two non-negative integers")
    begin, end = offsets
    dtype = SAFETENSORS_DTYPES[code]
    nbytes = math.prod(shape) * dtype.itemsize
    if end - begin != nbytes:
      raise bad(
        f"tensor {name!r} ({code} {shape}) needs {nbytes} bytes, but its data_offsets [{begin}, {end}] hold "
        f"{end - begin}"
      )
    entries[name] = (dtype, tuple(shape), begin, end)

  # The tensors must tile the buffer exactly: in offset order, each starts where the previous one ended.
  position, previous = 0, None
  for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3])):
    if begin != position:
      where = f"after {previous!r} ends at {position}" if previous else "at the buffer's start"
      kind = "overlaps the tensor before it" if begin < position else "leaves a gap"
      raise bad(f"tensor {name!r} starts at byte {begin} {where}: it {kind}")
    position, previous = end, name
  if position > buffer_size:
    raise ZooError(
      f"{path} is truncated: its tensors need {position} bytes of data, but the file holds {buffer_size}"
    )
  if position < buffer_size:
    raise bad(
      f"its buffer has {buffer_size - position} bytes after the last tensor (its tensors need {position})"
    )
  return entries, metadata


def _is_count(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= 0


# ---------------------------------------------------------------------------------------------------------
# PyTorch's zip checkpoints

# torch.save (default since PyTorch 1.6) pickles tensors as torch._utils._rebuild_tensor_v2(storage, ...) with
# typed storages named torch.FloatStorage etc.; dtypes that have no legacy storage class (uint16, float8, ...)
# go through _rebuild_tensor_v3(untyped storage, ..., dtype) with the dtype as a global (torch.uint16).
_STORAGE_DTYPES: dict[str, np.dtype] = {
  "DoubleStorage": np.dtype(np.float64),
  "FloatStorage": np.dtype(np.float32),
  "HalfStorage": np.dtype(np.float16),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
  "LongStorage": np.dtype(np.int64),
  "IntStorage": np.dtype(np.int32),
  "ShortStorage": np.dtype(np.int16),
  "CharStorage": np.dtype(np.int8),
  "ByteStorage": np.dtype(np.uint8),
  "BoolStorage": np.dtype(np.bool_),
  "ComplexFloatStorage": np.dtype(np.complex64),
  "ComplexDoubleStorage": np.dtype(np.complex128),
}
_TORCH_DTYPES: dict[str, np.dtype] = {
  "float64": np.dtype(np.float64),
  "float32": np.dtype(np.float32),
  "float16": np.dtype(np.float16),
  "bfloat16": np.dtype(ml_dtypes.bfloat16),
  "int64": np.dtype(np.int64),
  "int32": np.dtype(np.int32),
  "int16": np.dtype(np.int16),
  "int8": np.dtype(np.int8),
  "uint8": np.dtype(np.uint8),
  "bool": np.dtype(np.bool_),
  "complex64": np.dtype(np.complex64),
  "complex128": np.dtype(np.complex128),
  "uint16": np.dtype(np.uint16),
  "uint32": np.dtype(np.uint32),
  "uint64": np.dtype(np.uint64),
  "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
  "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
  "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
  "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
  "float8_e8m0fnu": np.dtype(ml_dtypes.float8_e8m0fnu),
}
# Tensors torch pickles another way: named in the refusal, since "not a tensor" would be wrong for them.
_UNSUPPORTED_REBUILDERS = {
  "_rebuild_qtensor": "a quantized tensor",
  "_rebuild_sparse_tensor": "a sparse tensor",
  "_rebuild_nested_tensor": "a nested tensor",
  "_rebuild_wrapper_subclass": "a tensor subclass",
  "_rebuild_meta_tensor_no_storage": "a meta tensor (one without data)",
  "_rebuild_device_tensor_from_cpu_tensor": "a tensor of a device without storage",
  "_rebuild_device_tensor_from_numpy": "a tensor of a device without storage",
}
# torch.save's legacy (pre-1.6) format opens with the pickled magic number 0x1950a86a20f9469cfc6c.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def read_torch_file(path: PathLike) -> dict:
  """The object a PyTorch zip checkpoint holds (a state dict, or a dict wrapping one), tensors as arrays.

  The pickle may name only tensors, their storages and dtypes, and plain containers (dict, list, tuple,
  OrderedDict, set, str, bytes, numbers); anything else (a whole nn.Module, argparse.Namespace, os.system)
  is refused with a ZooError before any of it is called. Storages are read once and shared by their views;
  big-endian files are byte-swapped. Raises ZooError naming the file if it is truncated, corrupt, in
  PyTorch's legacy format, or a TorchScript archive.
  """
  path = Path(path)
  with _open(path) as f:
    head = f.read(len(LEGACY_MAGIC))
  if not head.startswith(ZIP_MAGIC):
    if head.startswith(LEGACY_MAGIC) or _is_tar(path):
      raise ZooError(_legacy_message(path))
    raise ZooError(f"{path} is not a PyTorch checkpoint: it is not a zip file (it starts with {head[:8]!r})")
  try:
    with zipfile.ZipFile(path) as archive:
      return _read_torch_zip(path, archive)
  except ZooError:
    raise
  except Exception as e:  # zipfile.BadZipFile, a CRC mismatch, EOFError, struct.error: all mean corrupt.
    raise ZooError(f"{path} is truncated or corrupt: {type(e).__name__}: {e}") from None


def _read_torch_zip(path: Path, archive: zipfile.ZipFile) -> dict:
  names = set(archive.namelist())
  pickles = sorted(n for n in names if n.count("/") <= 1 and (n == "data.pkl" or n.endswith("/data.pkl")))
  if len(pickles) != 1:
    found = "no data.pkl" if not pickles else f"{len(pickles)} data.pkl records"
    raise ZooError(f"{path} is a zip file but not a PyTorch checkpoint: it has {found}")
  prefix = pickles[0][: -len("data.pkl")]
  if f"{prefix}constants.pkl" in names or any(n.startswith(f"{prefix}code/") for n in names):
    raise ZooError(
      f"{path} is a TorchScript archive (torch.jit.save), which holds code, not just tensors: save the "
      "weights with torch.save(model.state_dict(), path) instead"
    )
  byteorder = "little"  # Files from before PyTorch 1.9 have no byteorder record; they are little-endian.
  if f"{prefix}byteorder" in names:
    with _open_record(archive, f"{prefix}byteorder") as f:
      byteorder = f.read(16).decode("ascii", "replace")
  if byteorder not in ("little", "big"):
    raise ZooError(f"{path} is corrupt: its byteorder record says {byteorder[:20]!r}, not little or big")
  unpickler = _TensorUnpickler(path, archive, prefix, byteorder)
  try:
    obj = unpickler.load()
  except ZooError:
    raise
  except Exception as e:
    raise ZooError(f"{path} is corrupt: its data.pkl does not unpickle ({type(e).__name__}: {e})") from None
  if not isinstance(obj, dict):
    raise ZooError(f"{path} holds a {type(obj).__name__}, not a dict of tensors (a state dict)")
  return obj


def _open_record(archive: zipfile.ZipFile, name: str) -> Any:
  info = archive.getinfo(name)
  f = archive.open(info)
  if info.CRC == 0 and info.file_size:
    # torch.serialization.set_crc32_options(False) writes every CRC as 0: there is nothing to check against.
    f._expected_crc = None  # type: ignore[attr-defined]
  return f


class _StorageType:
  """What `torch.FloatStorage` etc. unpickle to here: a dtype (None: torch.UntypedStorage, bytes)."""

  def __init__(self, name: str, dtype: np.dtype | None):
    self.name, self.dtype = name, dtype


class _TorchDtype:
  """What a `torch.float32` etc. global unpickles to here."""

  def __init__(self, name: str):
    self.name, self.dtype = name, _TORCH_DTYPES[name]

  def __repr__(self) -> str:
    return f"torch.{self.name}"


class _TypeMarker:
  """What `torch.Tensor` and `torch.nn.Parameter` unpickle to here: a name, nothing callable."""

  def __init__(self, name: str):
    self.name = name


class _Storage:
  """One storage record: its bytes, read once, viewed as whatever dtype a tensor asks for."""

  def __init__(self, path: Path, key: str, raw: np.ndarray, dtype: np.dtype | None, byteorder: str):
    self.path, self.key, self.raw, self.dtype, self.byteorder = path, key, raw, dtype, byteorder
    self._views: dict[np.dtype, np.ndarray] = {}

  def view(self, dtype: np.dtype) -> np.ndarray:
    if dtype not in self._views:
      if self.raw.size % dtype.itemsize:
        raise ZooError(
          f"{self.path} is corrupt: storage {self.key} has {self.raw.size} bytes, not a whole number of "
          f"{dtype} elements"
        )
      self._views[dtype] = _from_byteorder(self.raw.view(dtype), self.byteorder)
    return self._views[dtype]


class _TensorUnpickler(pickle.Unpickler):
  def __init__(self, path: Path, archive: zipfile.ZipFile, prefix: str, byteorder: str):
    super().__init__(_open_record(archive, f"{prefix}data.pkl"))
    self.path, self.archive, self.prefix, self.byteorder = path, archive, prefix, byteorder
    self.storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str) -> Any:
    module = {"__builtin__": "builtins"}.get(module, module)  # Protocol-2 pickles name builtins that way.
    found = _safe_global(self.path, module, name)
    if found is None:
      what = _UNSUPPORTED_REBUILDERS.get(name) if module == "torch._utils" else None
      if what:
        raise ZooError(f"{self.path} holds {what} (torch._utils.{name}), which the zoo does not read")
      raise ZooError(
        f"refused to load {self.path}: it asks to import {module}.{name}, which is not a tensor; only "
        "tensors are read (see zoo/interop/tensorfile.py). A checkpoint that also holds other objects (a "
        "whole model, argparse.Namespace, NumPy values) can be re-saved as weights only: "
        "torch.save(model.state_dict(), path)"
      )
    return found

  def persistent_load(self, pid: Any) -> _Storage:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise ZooError(f"{self.path} is corrupt: data.pkl refers to {str(pid)[:80]}, which is not a storage")
    _, storage_type, key, _location, numel = pid  # The location (cpu, cuda:0) does not matter here.
    if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not _is_count(numel):
      raise ZooError(f"{self.path} is corrupt: storage reference {str(pid)[:80]} is malformed")
    if key not in self.storages:
      record = f"{self.prefix}data/{key}"
      try:
        info = self.archive.getinfo(record)
      except KeyError:
        raise ZooError(f"{self.path} is truncated or corrupt: it has no record {record}") from None
      itemsize = 1 if storage_type.dtype is None else storage_type.dtype.itemsize
      if info.file_size < numel * itemsize:
        raise ZooError(
          f"{self.path} is truncated or corrupt: storage {key} should have {numel * itemsize} bytes, "
          f"its record has {info.file_size}"
        )
      try:
        with _open_record(self.archive, record) as f:
          raw = np.frombuffer(f.read(), np.uint8)[: numel * itemsize]  # Read to the end: the CRC is checked.
      except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:  # A CRC mismatch, a short record.
        raise ZooError(f"{self.path} is truncated or corrupt: {record}: {type(e).__name__}: {e}") from None
      self.storages[key] = _Storage(self.path, key, raw, storage_type.dtype, self.byteorder)
    return self.storages[key]


def _safe_global(path: Path, module: str, name: str) -> Any:
  """The stand-in for global `module.name`, or None if the file may not have it.

  Each call makes new objects: a pickle can set attributes on what it gets (BUILD), and must not be able to
  change this module's functions for the files read after it. (Types like set refuse new attributes.)
  """
  if module == "torch" and name in _STORAGE_DTYPES:
    return _StorageType(name, _STORAGE_DTYPES[name])
  if module == "torch" and name in _TORCH_DTYPES:
    return _TorchDtype(name)
  if (module, name) == ("torch.storage", "UntypedStorage"):
    return _StorageType(name, None)
  if (module, name) in _SAFE_TYPES:
    return _SAFE_TYPES[module, name]
  if (module, name) in {("torch", "Tensor"), ("torch.nn.parameter", "Parameter")}:
    return _TypeMarker(f"{module}.{name}")
  function: Callable[..., Any] | None = {
    ("torch._utils", "_rebuild_tensor_v2"): functools.partial(_rebuild_tensor, path),
    ("torch._utils", "_rebuild_tensor_v3"): functools.partial(_rebuild_tensor_v3, path),
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("builtins", "bytes"): _from_iterable(bytes),
    ("builtins", "bytearray"): _from_iterable(bytearray),
    ("_codecs", "encode"): _latin1_encode,
    ("torch", "Size"): _size,
    ("torch", "device"): _device,
  }.get((module, name))
  return None if function is None else lambda *args: function(*args)


def _rebuild_tensor(
  path: Path,
  storage: Any,
  offset: Any,
  size: Any,
  stride: Any,
  requires_grad: Any = False,
  backward_hooks: Any = None,
  metadata: Any = None,
  dtype: np.dtype | None = None,
) -> np.ndarray:
  """torch._utils._rebuild_tensor_v2: elements `offset + sum(i * stride)` of `storage`, copied."""
  if not isinstance(storage, _Storage):
    raise ZooError(f"{path} is corrupt: a tensor's storage is a {type(storage).__name__}")
  dtype = dtype or storage.dtype
  if dtype is None:
    raise ZooError(f"{path} is corrupt: tensor of untyped storage {storage.key} without a dtype")
  size, stride = _ints(size), _ints(stride)
  if not _is_count(offset) or size is None or stride is None or len(size) != len(stride):
    raise ZooError(f"{path} is corrupt: a tensor has offset {offset!r}, size {size!r} and stride {stride!r}")
  elements = storage.view(dtype)
  if 0 in size:
    array = np.zeros(size, dtype)
  else:
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= elements.size:
      raise ZooError(
        f"{path} is corrupt: a tensor of size {size}, stride {stride} at offset {offset} reaches element "
        f"{last} of storage {storage.key}, which has {elements.size}"
      )
    # The view over the storage's bytes: as_strided would lose ml_dtypes types (float8) on the way.
    view = np.ndarray(
      size,
      dtype,
      buffer=elements.view(np.uint8),
      offset=offset * dtype.itemsize,
      strides=[s * dtype.itemsize for s in stride],
    )
    array = np.array(view)
  # Lazy negation/conjugation views (x.neg() of a conj view, ...) are saved as flags on the stored values.
  # (In place: a ufunc would turn a 0-d array into a NumPy scalar.)
  if isinstance(metadata, dict) and metadata.get("neg"):
    np.negative(array, out=array)
  if isinstance(metadata, dict) and metadata.get("conj"):
    np.conjugate(array, out=array)
  return array


def _rebuild_tensor_v3(
  path: Path,
  storage: Any,
  offset: Any,
  size: Any,
  stride: Any,
  requires_grad: Any,
  backward_hooks: Any,
  dtype: Any,
  metadata: Any = None,
) -> np.ndarray:
  if not isinstance(dtype, _TorchDtype):
    raise ZooError(f"{path} is corrupt: a tensor's dtype is {dtype!r}")
  return _rebuild_tensor(path, storage, offset, size, stride, metadata=metadata, dtype=dtype.dtype)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> Any:
  return data  # An nn.Parameter is its tensor here; gradients flags and Python attributes do not matter.


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any) -> Any:
  # A tensor with Python attributes: func is one of the rebuilders above (find_class hands out nothing else).
  if not isinstance(new_type, _TypeMarker) or not isinstance(args, tuple):
    raise TypeError(f"_rebuild_from_type_v2 of {new_type!r}")
  return func(*args)


def _ints(x: Any) -> tuple[int, ...] | None:
  if isinstance(x, tuple | list) and all(_is_count(i) for i in x):
    return tuple(x)
  return None


def _size(dims: Any = ()) -> tuple[int, ...]:
  sizes = _ints(dims)
  if sizes is None:
    raise TypeError(f"torch.Size({dims!r})")
  return sizes


def _device(*args: Any) -> str:
  return ":".join(str(a) for a in args)  # torch.device("cuda", 0) -> "cuda:0": a checkpoint's note only.


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
  # Protocol-2 pickles write bytes as _codecs.encode(str, "latin1"); no other codec is looked up.
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise TypeError(f"_codecs.encode({type(text).__name__}, {encoding!r})")
  return text.encode("latin1")


def _from_iterable(kind: type) -> Callable[..., Any]:
  # bytes(n), bytearray(n) would allocate n bytes: only the iterable form is let through.
  def make(*args: Any) -> Any:
    if args and isinstance(args[0], int):
      raise TypeError(f"{kind.__name__}(int)")
    return kind(*args)

  return make


# Types whose calls only build values (attributes cannot be set on them).
_SAFE_TYPES: dict[tuple[str, str], type] = {
  ("collections", "OrderedDict"): OrderedDict,
  ("builtins", "set"): set,
  ("builtins", "frozenset"): frozenset,
  ("builtins", "complex"): complex,
}


def _legacy_message(path: Path) -> str:
  return (
    f"{path} is in PyTorch's legacy (pre-1.6, non-zip) checkpoint format, which the zoo does not read: "
    "re-save it with a current torch (torch.save(torch.load(path, weights_only=True), new_path)) or "
    "convert it to safetensors (safetensors.torch.save_file)"
  )


def _is_tar(path: Path) -> bool:
  # PyTorch's oldest format is a tar archive ("ustar" at byte 257).
  with open(path, "rb") as f:
    f.seek(257)
    return f.read(5) == b"ustar"


# ---------------------------------------------------------------------------------------------------------
# State dicts


def read_state_dict(source: PathLike | Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A PyTorch state dict as {key: NumPy array}, from a file or from memory.

  Args:
    source: a file, told by its content rather than its name: safetensors, or PyTorch's zip checkpoint
      (`torch.save` since 1.6: .pth, .pt, .bin, .ckpt); or a mapping in memory whose values are NumPy
      arrays, torch tensors or JAX arrays. A checkpoint that wraps the state dict (under "state_dict",
      "model", "model_state", "module", "ema", ... next to "epoch", "optimizer", ...) is unwrapped, and a
      "module." prefix on every key (DataParallel) is removed.

  Raises ZooError naming the file if it cannot be read, has no state dict, or its state dict holds a value
  that is not a tensor.
  """
  if isinstance(source, Mapping):
    return _state_dict_from(source, "the state dict given")
  if not isinstance(source, str | os.PathLike):
    raise ZooError(f"weights come from a file or a mapping of tensors, not a {type(source).__name__}")
  path = Path(source)
  with _open(path) as f:
    head = f.read(16)
  if head.startswith(ZIP_MAGIC):
    return _state_dict_from(read_torch_file(path), str(path))
  if head.startswith(LEGACY_MAGIC) or _is_tar(path):
    raise ZooError(_legacy_message(path))
  if (len(head) > 8 and head[8:9] == b"{") or path.suffix == ".safetensors":
    return _state_dict_from(read_safetensors(path), str(path))
  what = "it is empty" if not head else f"it starts with {head[:8]!r}"
  raise ZooError(
    f"{path} is neither a safetensors file nor a PyTorch (zip) checkpoint: {what}. The zoo reads "
    ".safetensors and torch.save's files"
  )


def _state_dict_from(obj: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
  for _ in range(4):  # Wrappers nest: {"model": {"state_dict": ...}}.
    values = list(obj.values())
    arrays = [_as_array(v) for v in values]
    if values and all(a is not None for a in arrays):
      break
    inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
    if inner is None:
      if any(a is not None for a in arrays):
        bad = [
          f"{k!r} ({type(v).__name__})" for (k, v), a in zip(obj.items(), arrays, strict=True) if a is None
        ]
        raise ZooError(f"{where} is not a state dict of tensors: {', '.join(bad[:8])} are not tensors")
      keys = ", ".join(repr(k) for k in list(obj)[:12]) or "none"
      raise ZooError(
        f"{where} holds no state dict: no tensors, and none of {', '.join(WRAPPER_KEYS)} among its keys "
        f"({keys})"
      )
    obj, where = obj[inner], f"{where}[{inner!r}]"
  else:
    raise ZooError(f"{where} holds no state dict: wrappers nest too deep")
  bad_keys = [k for k in obj if not isinstance(k, str)]
  if bad_keys:
    raise ZooError(f"{where} is not a state dict: its keys {bad_keys[:8]!r} are not strings")
  state = dict(zip(obj.keys(), arrays, strict=True))
  while state and all(k.startswith("module.") for k in state):  # nn.DataParallel's wrapping.
    state = {k[len("module.") :]: v for k, v in state.items()}
  return state


def _as_array(value: Any) -> np.ndarray | None:
  """`value` as a NumPy array if it is a tensor (NumPy, torch, JAX), else None."""
  if isinstance(value, np.ndarray):
    return value
  if isinstance(value, np.generic):
    return np.asarray(value)
  if hasattr(value, "detach") and hasattr(value, "numpy"):  # A torch tensor; torch itself is not imported.
    tensor = value.detach().cpu()
    if hasattr(tensor, "resolve_conj"):
      tensor = tensor.resolve_conj().resolve_neg()
    dtype = _TORCH_DTYPES.get(str(tensor.dtype).removeprefix("torch."))
    if dtype is not None and dtype.kind == "V":  # An ml_dtypes type.
      # NumPy has no bfloat16 or float8, so torch cannot hand them over: float32 holds them exactly.
      return tensor.float().numpy().astype(dtype)
    return np.array(tensor.numpy())
  if hasattr(value, "__array__") and hasattr(value, "shape") and hasattr(value, "dtype"):  # JAX and the like.
    return np.asarray(value)
  return None


# ---------------------------------------------------------------------------------------------------------
# Helpers


def _open(path: Path) -> Any:
  try:
    return open(path, "rb")
  except FileNotFoundError:
    raise ZooError(f"no such file: {path}") from None
  except IsADirectoryError:
    raise ZooError(f"{path} is a directory; give the weights file in it") from None
  except OSError as e:
    raise ZooError(f"cannot read {path}: {e.strerror}") from None


def _from_byteorder(array: np.ndarray, byteorder: str) -> np.ndarray:
  """`array` (a view of a file's bytes in `byteorder`) in this machine's order."""
  if byteorder == sys.byteorder or array.dtype.itemsize == 1:
    return array
  if array.dtype.kind == "c":  # Each of the two parts is swapped, not the pair.
    part = np.dtype(f"f{array.dtype.itemsize // 2}")
    return array.view(part).byteswap().view(array.dtype)
  return array.view(f"u{array.dtype.itemsize}").byteswap().view(array.dtype)  # bfloat16 has no byteswap.


def _little_endian(array: np.ndarray) -> np.ndarray:
  native = array.astype(array.dtype.newbyteorder("="), copy=False)
  return _from_byteorder(native, "little")  # A swap is its own inverse: native -> little as little -> native.
