"""Tensor files read without PyTorch: safetensors both ways, torch.save's zip checkpoints through a loader
that refuses every import but tensors, and the errors (named file, no traceback) for what is wrong with them.

The .pth fixtures in tests/data/tensorfiles were made by torch.save (make_fixtures.py there rewrites them);
their values are in expected.npz. The checks against a live torch or safetensors are skipped without them.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from zoo.interop import tensorfile
from zoo.interop.tensorfile import (
  read_safetensors,
  read_safetensors_metadata,
  read_state_dict,
  read_torch_file,
  write_safetensors,
)
from zoo.registry import ZooError

FIXTURES = Path(__file__).resolve().parent / "data" / "tensorfiles"


@pytest.fixture(autouse=True)
def no_torch_import(request, monkeypatch):
  """Any `import torch` in the reader fails, as in CI (except in the tests that compare with torch)."""
  if "torch" not in request.fixturenames:
    monkeypatch.setitem(sys.modules, "torch", None)


def expected(fixture: str) -> dict[str, np.ndarray]:
  """The tensors torch.save put in a fixture, from expected.npz ("key@bfloat16": an ml_dtypes type's bits)."""
  out = {}
  with np.load(FIXTURES / "expected.npz") as npz:
    for name in npz.files:
      prefix, _, key = name.partition("/")
      if prefix == fixture:
        key, _, bits_of = key.partition("@")
        out[key] = npz[name].view(getattr(ml_dtypes, bits_of)) if bits_of else npz[name]
  assert out, fixture
  return out


def assert_same_tensors(actual: dict[str, np.ndarray], wanted: dict[str, np.ndarray]) -> None:
  assert list(actual) == list(wanted)
  for key, value in wanted.items():
    assert isinstance(actual[key], np.ndarray), key
    assert actual[key].dtype == value.dtype, key
    assert actual[key].shape == value.shape, key
    assert actual[key].tobytes() == np.ascontiguousarray(value).tobytes(), key  # Bit for bit.


# ---------------------------------------------------------------------------------------------------------
# safetensors

DTYPES = [
  np.float64,
  np.float32,
  np.float16,
  ml_dtypes.bfloat16,
  np.int64,
  np.int32,
  np.int16,
  np.int8,
  np.uint8,
  np.bool_,
  np.uint16,
  np.uint32,
  np.uint64,
  np.complex64,
  ml_dtypes.float8_e4m3fn,
  ml_dtypes.float8_e5m2,
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_safetensors_round_trip(tmp_path, dtype):
  rng = np.random.default_rng(0)
  tensors = {
    "matrix": (rng.normal(size=(3, 5)) * 8).astype(dtype),
    "transposed": (rng.normal(size=(4, 2)) * 8).astype(dtype).T,  # Not contiguous.
    "scalar": np.asarray(3, dtype),
    "empty": np.zeros((0, 4), dtype),
    "other_dtype": np.arange(3, dtype=np.float32),
  }
  path = tmp_path / "t.safetensors"
  write_safetensors(path, tensors, metadata={"format": "np", "note": "é"})
  back = read_safetensors(path)
  assert_same_tensors(dict(sorted(back.items())), dict(sorted(tensors.items())))
  assert read_safetensors_metadata(path) == {"format": "np", "note": "é"}
  assert os.listdir(tmp_path) == ["t.safetensors"]  # No temporary file left behind.


def spec_file(header: str, data: bytes) -> bytes:
  """A safetensors file as the spec lays it out: u64 little-endian header length, the header, the data."""
  raw = header.encode()
  return struct.pack("<Q", len(raw)) + raw + data


# Built by hand from https://huggingface.co/docs/safetensors: the header padded with spaces to 8 bytes,
# tensors sorted by dtype size then name (as the reference writer does), little-endian data.
SPEC_HEADER = (
  '{"__metadata__":{"format":"np"},'
  '"b":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},'
  '"a":{"dtype":"F32","shape":[2,1],"data_offsets":[16,24]},'
  '"c":{"dtype":"BF16","shape":[],"data_offsets":[24,26]},'
  '"d":{"dtype":"F16","shape":[0,3],"data_offsets":[26,26]},'
  '"e":{"dtype":"BOOL","shape":[3],"data_offsets":[26,29]}}'
)
SPEC_DATA = struct.pack("<qq", -7, 2**40) + struct.pack("<ff", 1.5, -2.0) + b"\x80\x3f" + b"\x01\x00\x01"
SPEC_TENSORS = {
  "b": np.array([-7, 2**40], np.int64),
  "a": np.array([[1.5], [-2.0]], np.float32),
  "c": np.array(1.0, ml_dtypes.bfloat16),  # 0x3f80.
  "d": np.zeros((0, 3), np.float16),
  "e": np.array([True, False, True]),
}


def test_safetensors_bytes_follow_the_spec(tmp_path):
  header = SPEC_HEADER + " " * (-len(SPEC_HEADER) % 8)
  path = tmp_path / "spec.safetensors"
  path.write_bytes(spec_file(header, SPEC_DATA))
  assert_same_tensors(read_safetensors(path), SPEC_TENSORS)
  assert read_safetensors_metadata(path) == {"format": "np"}

  written = tmp_path / "written.safetensors"
  write_safetensors(written, {k: SPEC_TENSORS[k] for k in "edcba"}, metadata={"format": "np"})
  assert written.read_bytes() == path.read_bytes()


def test_safetensors_file_of_the_reference_library():
  """reference.safetensors was written by safetensors.torch.save_file (the reference implementation)."""
  path = FIXTURES / "reference.safetensors"
  tensors = read_safetensors(path)
  assert_same_tensors(dict(sorted(tensors.items())), dict(sorted(expected("safetensors").items())))
  assert read_safetensors_metadata(path) == {"format": "pt"}
  assert read_state_dict(path).keys() == tensors.keys()


def test_reference_bytes_are_reproduced(tmp_path):
  path = FIXTURES / "reference.safetensors"
  again = tmp_path / "again.safetensors"
  write_safetensors(again, read_safetensors(path), metadata=read_safetensors_metadata(path))
  assert again.read_bytes() == path.read_bytes()


def test_safetensors_package_reads_and_writes_the_same(tmp_path):
  st = pytest.importorskip("safetensors.numpy")
  tensors = {k: v for k, v in SPEC_TENSORS.items() if k != "c"}  # safetensors.numpy has no bfloat16.
  ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
  write_safetensors(ours, tensors)
  st.save_file(tensors, theirs)
  assert_same_tensors(dict(sorted(st.load_file(ours).items())), dict(sorted(tensors.items())))
  assert_same_tensors(dict(sorted(read_safetensors(theirs).items())), dict(sorted(tensors.items())))
  assert ours.read_bytes() == theirs.read_bytes()


def spec_path(tmp_path: Path) -> tuple[Path, bytes]:
  header = SPEC_HEADER + " " * (-len(SPEC_HEADER) % 8)
  return tmp_path / "bad.safetensors", spec_file(header, SPEC_DATA)


@pytest.mark.parametrize("keep", [0, 5, 8, 9, 100, -29, -3, -1])
def test_truncated_safetensors_is_named(tmp_path, keep):
  path, data = spec_path(tmp_path)
  path.write_bytes(data[:keep])
  with pytest.raises(ZooError, match="bad.safetensors") as error:
    read_safetensors(path)
  if keep >= 9:
    assert "truncated" in str(error.value)


@pytest.mark.parametrize("length", [2**40, 2**64 - 1, 20])
def test_bad_header_length(tmp_path, length):
  path, data = spec_path(tmp_path)
  path.write_bytes(struct.pack("<Q", length) + data[8:])
  with pytest.raises(ZooError, match="bad.safetensors"):
    read_safetensors(path)


def header_with(entries: dict, data_size: int) -> tuple[str, bytes]:
  return json.dumps(entries), bytes(data_size)


@pytest.mark.parametrize(
  ("entries", "data_size", "problem"),
  [
    (  # The second tensor starts inside the first.
      {
        "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
      },
      12,
      "overlaps",
    ),
    (  # The same bytes twice.
      {
        "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "y": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      },
      8,
      "overlaps",
    ),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12, "gap"),
    ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "needs 12 bytes"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 4, "truncated"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 10, "2 bytes after the last tensor"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, 8, "needs 8 bytes"),
    ({"x": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, 16, "dtype 'F128'"),
    ({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, 4, "shape"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, 4, "data_offsets"),
    ({"x": {"dtype": "F32", "shape": [1]}}, 4, "not by exactly"),
    ({"__metadata__": {"n": 1}}, 0, "__metadata__"),
    ([1, 2], 0, "not an object"),
  ],
)
def test_invalid_safetensors_header_is_named(tmp_path, entries, data_size, problem):
  path = tmp_path / "bad.safetensors"
  path.write_bytes(spec_file(*header_with(entries, data_size)))
  with pytest.raises(ZooError, match="bad.safetensors") as error:
    read_safetensors(path)
  assert problem in str(error.value)


def test_safetensors_header_that_is_not_json_or_names_twice(tmp_path):
  path = tmp_path / "bad.safetensors"
  path.write_bytes(spec_file('{"x": {"dtype": "F32",', b""))
  with pytest.raises(ZooError, match="bad.safetensors.*not JSON"):
    read_safetensors(path)
  entry = '{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'
  path.write_bytes(spec_file(f'{{"x":{entry},"x":{entry}}}', b"\x00"))
  with pytest.raises(ZooError, match="more than once"):
    read_safetensors(path)


def test_failed_write_leaves_the_file_as_it_was(tmp_path):
  path = tmp_path / "w.safetensors"
  write_safetensors(path, {"a": np.ones(2, np.float32)})
  before = path.read_bytes()
  with pytest.raises(ZooError, match="complex128"):
    write_safetensors(path, {"a": np.ones(2, np.float32), "b": np.ones(2, np.complex128)})
  with pytest.raises(ZooError, match="metadata"):
    write_safetensors(path, {"a": np.ones(2)}, metadata={"epoch": 3})
  with pytest.raises(ZooError, match="not an array"):
    write_safetensors(path, {"a": [1, 2]})
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["w.safetensors"]
  with pytest.raises(ZooError, match="cannot write .*no_such_dir"):
    write_safetensors(tmp_path / "no_such_dir" / "w.safetensors", {"a": np.ones(2)})


def test_big_endian_arrays_are_written_little_endian(tmp_path):
  path = tmp_path / "be.safetensors"
  write_safetensors(path, {"x": np.array([1.5, -2.0], ">f4")})
  assert path.read_bytes().endswith(struct.pack("<ff", 1.5, -2.0))
  assert read_safetensors(path)["x"].tolist() == [1.5, -2.0]


# ---------------------------------------------------------------------------------------------------------
# PyTorch checkpoints made by torch.save


def test_torch_save_fixture_is_read_without_torch():
  assert_same_tensors(read_torch_file(FIXTURES / "state_dict.pth"), expected("state_dict"))
  assert_same_tensors(read_state_dict(FIXTURES / "state_dict.pth"), expected("state_dict"))
  with pytest.raises(ImportError):  # The fixture above really ran without torch.
    import torch  # noqa: F401


def test_views_of_the_fixture_have_the_values_of_their_storage():
  tensors = read_torch_file(FIXTURES / "state_dict.pth")
  shared = np.arange(10) * 1.5
  np.testing.assert_array_equal(tensors["shared.head"], shared[2:6])
  np.testing.assert_array_equal(tensors["shared.grid"], shared.reshape(2, 5))
  np.testing.assert_array_equal(tensors["fc.weight_t"], (np.arange(12).reshape(3, 4) / 4 - 1).T)
  np.testing.assert_array_equal(tensors["expanded"], [[0, 1, 2], [0, 1, 2]])
  tensors["shared.head"][0] = 99  # Each tensor is its own copy, not a view of the storage.
  assert tensors["shared.grid"][0, 2] == 3.0


def test_wrapped_checkpoint_gives_its_state_dict():
  assert_same_tensors(read_state_dict(FIXTURES / "wrapped.pth"), expected("state_dict"))
  checkpoint = read_torch_file(FIXTURES / "wrapped.pth")
  assert checkpoint["epoch"] == 3 and checkpoint["arch"] == "tiny"
  assert checkpoint["note"] == b"\x00bytes" and checkpoint["tags"] == {"a", "b"}
  assert checkpoint["best"] == (0.5, 1 + 2j)
  assert checkpoint["optimizer"]["param_groups"] == [{"lr": 0.1, "params": [0]}]


def test_data_parallel_prefix_is_removed():
  assert list(read_torch_file(FIXTURES / "module.pth"))[0] == "module.conv.weight"
  assert_same_tensors(read_state_dict(FIXTURES / "module.pth"), expected("module"))


def test_checkpoint_written_without_crcs():
  assert read_state_dict(FIXTURES / "no_crc.pth")["w"].tolist() == [0.0, 1.0, 2.0]


def test_legacy_format_is_explained(tmp_path):
  for read in (read_state_dict, read_torch_file):
    with pytest.raises(ZooError, match=r"legacy\.pth is in PyTorch's legacy .*re-save it"):
      read(FIXTURES / "legacy.pth")
  tar = tmp_path / "old.pt"  # PyTorch's oldest files are tar archives.
  tar.write_bytes(bytes(257) + b"ustar" + bytes(250))
  with pytest.raises(ZooError, match="old.pt is in PyTorch's legacy"):
    read_state_dict(tar)


@pytest.mark.parametrize("keep", [10, 200, 1000, 3000, -100, -22, -1])
def test_truncated_checkpoint_is_named(tmp_path, keep):
  path = tmp_path / "cut.pth"
  path.write_bytes((FIXTURES / "state_dict.pth").read_bytes()[:keep])
  with pytest.raises(ZooError, match="cut.pth is truncated or corrupt"):
    read_state_dict(path)


def test_corrupt_storage_bytes_fail_the_crc(tmp_path):
  data = bytearray((FIXTURES / "state_dict.pth").read_bytes())
  with zipfile.ZipFile(FIXTURES / "state_dict.pth") as archive:
    info = archive.getinfo("state_dict/data/0")
  name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
  data[info.header_offset + 30 + name_length + extra_length] ^= 0xFF  # The storage's first byte.
  path = tmp_path / "flipped.pth"
  path.write_bytes(bytes(data))
  with pytest.raises(ZooError, match="flipped.pth is truncated or corrupt.*CRC"):
    read_state_dict(path)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints built here (no torch): a pickle written opcode by opcode, in torch.save's zip layout


class Global:
  def __init__(self, module: str, name: str):
    self.module, self.name = module, name


class Call:
  def __init__(self, func: object, *args: object):
    self.func, self.args = func, args


class PersistentId:
  def __init__(self, value: object):
    self.value = value


class Build:  # Sets attributes of obj from state (None, {name: value}).
  def __init__(self, obj: object, state: object):
    self.obj, self.state = obj, state


def pickle_bytes(obj: object) -> bytes:
  """Protocol-2 opcodes for obj (tuples, dicts, str, int, bool, None, and the three classes above)."""
  out = bytearray(b"\x80\x02")

  def emit(o: object) -> None:
    if isinstance(o, Global):
      out.extend(f"c{o.module}\n{o.name}\n".encode())
    elif isinstance(o, Call):
      emit(o.func)
      emit(o.args)
      out.extend(b"R")
    elif isinstance(o, PersistentId):
      emit(o.value)
      out.extend(b"Q")
    elif isinstance(o, Build):
      emit(o.obj)
      emit(o.state)
      out.extend(b"b")
    elif o is None:
      out.extend(b"N")
    elif isinstance(o, bool):
      out.extend(b"\x88" if o else b"\x89")
    elif isinstance(o, int):
      out.extend(b"J" + struct.pack("<i", o))
    elif isinstance(o, str):
      out.extend(b"X" + struct.pack("<I", len(o.encode())) + o.encode())
    elif isinstance(o, tuple):
      out.extend(b"(")
      for item in o:
        emit(item)
      out.extend(b"t")
    elif isinstance(o, dict):
      out.extend(b"}")
      for key, value in o.items():
        emit(key)
        emit(value)
        out.extend(b"s")
    else:
      raise TypeError(o)

  emit(obj)
  return bytes(out + b".")


def tensor(key: str, storage: str, numel: int, offset: int, size: tuple, stride: tuple) -> Call:
  """What torch.save pickles for a tensor: _rebuild_tensor_v2(storage, offset, size, stride, grad, hooks)."""
  ref = PersistentId(("storage", Global("torch", storage), key, "cpu", numel))
  hooks = Call(Global("collections", "OrderedDict"))
  return Call(Global("torch._utils", "_rebuild_tensor_v2"), ref, offset, size, stride, False, hooks)


def torch_zip(path: Path, pickled: bytes, storages: dict[str, bytes] = {}, byteorder: str = "little") -> Path:  # noqa: B006
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", pickled)
    archive.writestr("archive/byteorder", byteorder)
    for key, data in storages.items():
      archive.writestr(f"archive/data/{key}", data)
    archive.writestr("archive/version", "3\n")
  return path


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_checkpoint_built_by_hand_in_either_byte_order(tmp_path, byteorder):
  e = "<" if byteorder == "little" else ">"
  storages = {
    "0": struct.pack(f"{e}4f", 1.5, -2.0, 3.0, 0.25),
    "1": struct.pack(f"{e}2q", 1, -(2**40)),
    "2": struct.pack(f"{e}2H", 0x3F80, 0xC000),  # bfloat16 1.0, -2.0.
    "3": struct.pack(f"{e}2f", 1.0, -3.0),  # One complex64.
  }
  state = {
    "w": tensor("0", "FloatStorage", 4, 0, (2, 2), (1, 2)),  # Column-major: the transpose of the storage.
    "tail": tensor("0", "FloatStorage", 4, 2, (2,), (1,)),
    "n": tensor("1", "LongStorage", 2, 0, (2,), (1,)),
    "bf": tensor("2", "BFloat16Storage", 2, 0, (2,), (1,)),
    "c": tensor("3", "ComplexFloatStorage", 1, 0, (), ()),
  }
  path = torch_zip(tmp_path / "hand.pth", pickle_bytes(state), storages, byteorder)
  tensors = read_state_dict(path)
  assert tensors["w"].tolist() == [[1.5, 3.0], [-2.0, 0.25]]
  assert tensors["tail"].tolist() == [3.0, 0.25]
  assert tensors["n"].tolist() == [1, -(2**40)] and tensors["n"].dtype == np.int64
  assert tensors["bf"].dtype == ml_dtypes.bfloat16 and tensors["bf"].astype(np.float32).tolist() == [
    1.0,
    -2.0,
  ]
  assert tensors["c"].dtype == np.complex64 and tensors["c"] == 1 - 3j


@pytest.mark.parametrize(
  ("state", "storages", "problem"),
  [
    ({"w": tensor("0", "FloatStorage", 4, 1, (2, 2), (2, 1))}, {"0": bytes(16)}, "reaches element 4"),
    ({"w": tensor("0", "FloatStorage", 4, 0, (5,), (1,))}, {"0": bytes(16)}, "reaches element 4"),
    ({"w": tensor("0", "FloatStorage", 4, 0, (2,), (1,))}, {}, "no record archive/data/0"),
    ({"w": tensor("0", "FloatStorage", 4, 0, (2,), (1,))}, {"0": bytes(8)}, "should have 16 bytes"),
    ({"w": tensor("0", "FloatStorage", 4, 0, (2, 2), (1,))}, {"0": bytes(16)}, "size"),
    ({"w": PersistentId(("module", "os"))}, {}, "not a storage"),
    ({"w": Call(Global("torch", "FloatStorage"))}, {}, "does not unpickle"),
  ],
)
def test_corrupt_tensor_records_are_named(tmp_path, state, storages, problem):
  path = torch_zip(tmp_path / "corrupt.pth", pickle_bytes(state), storages)
  with pytest.raises(ZooError, match="corrupt.pth") as error:
    read_torch_file(path)
  assert problem in str(error.value)


def test_zip_that_is_not_a_checkpoint(tmp_path):
  path = tmp_path / "other.zip"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("readme.txt", "hello")
  with pytest.raises(ZooError, match="other.zip is a zip file but not a PyTorch checkpoint"):
    read_state_dict(path)
  scripted = torch_zip(tmp_path / "scripted.pt", pickle_bytes({}))
  with zipfile.ZipFile(scripted, "a") as archive:
    archive.writestr("archive/constants.pkl", pickle_bytes(()))
  with pytest.raises(ZooError, match="scripted.pt is a TorchScript archive"):
    read_state_dict(scripted)


# ---------------------------------------------------------------------------------------------------------
# Pickles that would run code


def payload(name: str, marker: Path) -> Call:
  """A call that, unpickled normally, creates `marker`."""
  touch = f"open({str(marker)!r}, 'w').close()"
  module, function = {"os.system": ("posix", "system")}.get(name, name.rsplit(".", 1))
  args = {
    "os.system": (f'"{sys.executable}" -c "{touch}"',),
    "builtins.eval": (touch,),
    "subprocess.call": ((sys.executable, "-c", touch),),
  }[name]
  return Call(Global(module, function), *args)


class Reduce:
  """Pickled by Python's own pickler as func(*args)."""

  def __init__(self, func: object, args: tuple):
    self.func, self.args = func, args

  def __reduce__(self):
    return self.func, self.args


@pytest.mark.parametrize("how", ["GLOBAL", "STACK_GLOBAL", "after a tensor"])
@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "subprocess.call"])
def test_code_in_a_checkpoint_is_refused_and_not_run(tmp_path, name, how):
  marker = tmp_path / "ran"
  call = payload(name, marker)
  pickled, storages = pickle_bytes(call), {}
  if how == "STACK_GLOBAL":  # Protocol 4 names globals from the stack.
    function = getattr(importlib.import_module(call.func.module), call.func.name)
    pickled = pickle.dumps(Reduce(function, call.args), protocol=4)
    assert b"\x93" in pickled
  pickle.loads(pickled)  # The payload works: unpickled normally, it runs.
  assert marker.exists()
  marker.unlink()
  if how == "after a tensor":  # Where a state dict's values are, once a real tensor has been rebuilt.
    pickled = pickle_bytes({"w": tensor("0", "FloatStorage", 1, 0, (1,), (1,)), "evil": call})
    storages = {"0": bytes(4)}

  path = torch_zip(tmp_path / "evil.pth", pickled, storages)
  for read in (read_torch_file, read_state_dict):
    with pytest.raises(
      ZooError, match=r"refused to load .*evil.pth: it asks to import .*, which is not a tensor"
    ):
      read(path)
  assert not marker.exists()


def test_code_hidden_as_a_storage_type_is_refused(tmp_path):
  ref = PersistentId(("storage", Call(Global("posix", "system"), "true"), "0", "cpu", 1))
  path = torch_zip(tmp_path / "evil.pth", pickle_bytes({"w": ref}), {"0": bytes(4)})
  with pytest.raises(ZooError, match="asks to import posix.system"):
    read_torch_file(path)


@pytest.mark.parametrize(
  ("module", "name", "message"),
  [
    ("builtins", "getattr", "asks to import builtins.getattr"),
    ("__builtin__", "exec", "asks to import builtins.exec"),
    (
      "torch.nn.modules.linear",
      "Linear",
      r"torch.nn.modules.linear.Linear, which is not a tensor.*state_dict",
    ),
    ("numpy.core.multiarray", "_reconstruct", "numpy.core.multiarray._reconstruct"),
    ("torch._utils", "_rebuild_qtensor", "holds a quantized tensor"),
    ("torch", "load", "asks to import torch.load"),
  ],
)
def test_only_tensor_globals_are_let_through(tmp_path, module, name, message):
  path = torch_zip(tmp_path / "x.pth", pickle_bytes({"w": Call(Global(module, name), "x")}))
  with pytest.raises(ZooError, match=message):
    read_torch_file(path)


def test_a_pickle_cannot_change_the_reader_for_later_files(tmp_path):
  encode = Build(Global("_codecs", "encode"), (None, {"__defaults__": ("rot13",), "note": "set"}))
  bound = Build(Global("torch._utils", "_rebuild_parameter"), (None, {"__defaults__": ({"neg": True},)}))
  path = torch_zip(tmp_path / "x.pth", pickle_bytes({"a": encode, "b": bound}))
  read_torch_file(path)
  assert tensorfile._latin1_encode.__defaults__ == ("utf-8",)
  assert tensorfile._rebuild_parameter.__defaults__ == (None,)
  assert_same_tensors(read_state_dict(FIXTURES / "wrapped.pth"), expected("state_dict"))


# ---------------------------------------------------------------------------------------------------------
# read_state_dict: what it is given and what it unwraps


def test_files_are_told_by_content_not_name(tmp_path):
  as_safetensors = tmp_path / "really_torch.safetensors"
  shutil.copy(FIXTURES / "state_dict.pth", as_safetensors)
  assert_same_tensors(read_state_dict(as_safetensors), expected("state_dict"))
  as_bin = tmp_path / "pytorch_model.bin"
  shutil.copy(FIXTURES / "reference.safetensors", as_bin)
  assert read_state_dict(as_bin).keys() == expected("safetensors").keys()


@pytest.mark.parametrize(
  ("content", "message"),
  [
    (None, "no such file"),
    (b"", "it is empty"),
    (b"\x89PNG\r\n\x1a\n" + bytes(20), "neither a safetensors file nor a PyTorch"),
    (pickle.dumps({"w": 1}), "neither a safetensors file nor a PyTorch"),
  ],
)
def test_unreadable_files_are_named(tmp_path, content, message):
  path = tmp_path / "weights.pth"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(ZooError) as error:
    read_state_dict(path)
  assert "weights.pth" in str(error.value) and message in str(error.value)
  with pytest.raises(ZooError, match="is a directory"):
    read_state_dict(tmp_path)
  with pytest.raises(ZooError, match="not a list"):
    read_state_dict([np.zeros(2)])


def test_mappings_are_unwrapped_and_checked():
  w = np.arange(3.0)
  assert read_state_dict({"w": w})["w"] is w
  assert list(read_state_dict({"module.a": w, "module.b": w})) == ["a", "b"]
  assert list(read_state_dict({"module.a": w, "b": w})) == ["module.a", "b"]  # Not on every key: kept.
  wrapped = {"model": {"state_dict": {"module.a": w}}, "epoch": 3, "optimizer": {"lr": 0.1}}
  assert list(read_state_dict(wrapped)) == ["a"]
  # A flat dict of tensors is the state dict even where its keys are wrapper names.
  assert list(read_state_dict({"model": w, "ema": w})) == ["model", "ema"]
  assert list(read_state_dict({"state_dict": {"a": w}, "state_dict_ema": {"b": w}})) == ["a"]
  assert list(read_state_dict({"state_dict_ema": {"b": w}, "epoch": 1})) == ["b"]
  assert read_state_dict({"s": np.float32(2)})["s"].shape == ()


@pytest.mark.parametrize(
  ("source", "message"),
  [
    ({"a": np.zeros(2), "epoch": 3}, r"not a state dict of tensors: 'epoch' \(int\)"),
    (
      {"state_dict": {"a": np.zeros(2), "b": "x"}, "epoch": 3},
      r"\['state_dict'\] is not a state dict of tensors: 'b'",
    ),
    ({"epoch": 3, "weights": {"a": np.zeros(2)}}, "holds no state dict.*'weights'"),
    ({}, "holds no state dict"),
    ({1: np.zeros(2)}, "keys .* are not strings"),
  ],
)
def test_state_dicts_must_be_str_to_tensor(source, message):
  with pytest.raises(ZooError, match=message):
    read_state_dict(source)


# ---------------------------------------------------------------------------------------------------------
# Against a live torch (not in CI)


@pytest.fixture
def torch():
  return pytest.importorskip("torch")


def torch_values(t) -> np.ndarray:
  import torch

  t = t.detach().resolve_conj().resolve_neg()
  names = {torch.bfloat16: "bfloat16", torch.float8_e4m3fn: "float8_e4m3fn", torch.float8_e5m2: "float8_e5m2"}
  if t.dtype in names:
    return t.float().numpy().astype(getattr(ml_dtypes, names[t.dtype]))
  return t.numpy()


def test_torch_save_then_read_torch_file(tmp_path, torch):
  g = torch.Generator().manual_seed(0)
  base = torch.randn(4, 6, generator=g)
  conv = torch.randn(8, 3, 3, 3, generator=g).to(memory_format=torch.channels_last)
  tensors = {
    "base": base,
    "slice": base[1:3, ::2],
    "transposed": base.t(),
    "channels_last": conv,
    "param": torch.nn.Parameter(torch.randn(5, generator=g)),
    "grad": torch.randn(3, generator=g, requires_grad=True),
    "neg": torch._neg_view(base[0]),
    "conj": torch.complex(base[0], base[1]).conj(),
    "c128": torch.randn(3, dtype=torch.complex128, generator=g),
    "scalar": torch.tensor(7, dtype=torch.int16),
    "empty": torch.zeros(2, 0),
    "expanded": torch.arange(4).view(4, 1).expand(4, 3),
  }
  for dtype in (
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.bool,
  ):
    tensors[str(dtype)] = (base * 10).to(dtype)
  for dtype in (
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
  ):
    tensors[str(dtype)] = (base.abs() * 10).to(dtype)
  tensors["attributes"] = torch.ones(2)
  tensors["attributes"].note = "a Python attribute"  # Saved through torch._tensor._rebuild_from_type_v2.
  path = tmp_path / "t.pth"
  torch.save(tensors, path)
  back = read_torch_file(path)
  assert list(back) == list(tensors)
  for key, value in tensors.items():
    wanted = torch_values(value)
    assert back[key].dtype == wanted.dtype and back[key].shape == wanted.shape, key
    assert back[key].tobytes() == np.ascontiguousarray(wanted).tobytes(), key


def test_torch_module_state_dict_and_torch_tensors_in_memory(tmp_path, torch):
  model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
  state = model.state_dict()
  path = tmp_path / "m.pth"
  torch.save({"model": state, "epoch": 2}, path)
  from_file = read_state_dict(path)
  from_memory = read_state_dict({"model": state, "epoch": 2})
  for key, value in state.items():
    assert np.array_equal(from_file[key], value.numpy()) and np.array_equal(from_memory[key], value.numpy())
  half = torch.randn(3, requires_grad=True).bfloat16()
  assert read_state_dict({"h": half})["h"].dtype == ml_dtypes.bfloat16


def test_fixtures_match_torch_load(torch):
  for name in ("state_dict", "module"):
    loaded = torch.load(FIXTURES / f"{name}.pth", weights_only=True)
    if name == "module":
      loaded = {k.removeprefix("module."): v for k, v in loaded.items()}
    assert_same_tensors({k: torch_values(v) for k, v in loaded.items()}, expected(name))
