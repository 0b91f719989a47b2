"""Rewrites the checkpoints tests/test_tensorfile.py reads without PyTorch, and the values they must give.

With torch and safetensors installed, from the repository root: python tests/data/tensorfiles/make_fixtures.py
Every file is a few kilobytes. expected.npz holds each fixture's tensors under "<fixture>/<key>"; bfloat16 and
float8 tensors (which .npz cannot hold) are stored as their bits under "<fixture>/<key>@<ml_dtypes name>".
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent
BITS_DTYPES = {
  torch.bfloat16: "bfloat16",
  torch.float8_e4m3fn: "float8_e4m3fn",
  torch.float8_e5m2: "float8_e5m2",
}


def state_dict() -> OrderedDict[str, torch.Tensor]:
  """Tensors that exercise the reader: views, shared storages, every common dtype, a Parameter."""
  g = torch.Generator().manual_seed(0)
  matrix = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 4 - 1
  shared = torch.arange(10, dtype=torch.float64) * 1.5
  return OrderedDict(
    [
      ("conv.weight", torch.randn(2, 3, 2, 2, generator=g)),
      ("fc.weight_t", matrix.t()),  # Not contiguous: strides (1, 4).
      ("shared.head", shared[2:6]),  # Two tensors of one storage, one at an offset.
      ("shared.grid", shared.view(2, 5)),
      ("half", torch.randn(5, generator=g).half()),
      ("steps", torch.tensor([3, -1, 2**40], dtype=torch.int64)),
      ("param", nn.Parameter(torch.randn(3, generator=g))),
      ("bf16", torch.randn(4, generator=g).bfloat16()),
      ("flags", torch.tensor([True, False, True])),
      ("scalar", torch.tensor(2.5)),
      ("empty", torch.zeros(0, 3)),
      ("expanded", torch.arange(3, dtype=torch.int32).expand(2, 3)),  # Stride 0.
      ("u16", torch.tensor([1, 65535], dtype=torch.uint16)),  # Saved by _rebuild_tensor_v3.
      ("i8", torch.tensor([-128, 127], dtype=torch.int8)),
      ("u8", torch.tensor([0, 255], dtype=torch.uint8)),
    ]
  )


class TinyNet(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(1, 2, 3)
    self.bn = nn.BatchNorm2d(2)
    self.fc = nn.Linear(2, 3)


def safetensors_tensors() -> dict[str, torch.Tensor]:
  g = torch.Generator().manual_seed(1)
  values = torch.randn(6, generator=g)
  tensors = {
    str(dtype).removeprefix("torch."): (values * 10).to(dtype)
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32)
    + (torch.int16, torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2)
  }
  tensors["uint8"] = (values * 10).abs().to(torch.uint8)  # A negative float has no defined uint8.
  tensors["matrix"] = values.reshape(2, 3)
  tensors["scalar"] = torch.tensor(-0.5)
  tensors["empty"] = torch.zeros(0, 4, dtype=torch.float16)
  return tensors


def as_numpy(tensor: torch.Tensor) -> tuple[str, np.ndarray]:
  tensor = tensor.detach()
  if tensor.dtype in BITS_DTYPES:
    bits = tensor.view(torch.int16 if tensor.element_size() == 2 else torch.uint8).numpy()
    return f"@{BITS_DTYPES[tensor.dtype]}", bits.view(f"u{tensor.element_size()}")
  return "", tensor.numpy()


def main() -> None:
  expected = {}

  def remember(fixture: str, tensors: dict[str, torch.Tensor]) -> None:
    for key, tensor in tensors.items():
      suffix, array = as_numpy(tensor)
      expected[f"{fixture}/{key}{suffix}"] = array

  sd = state_dict()
  torch.save(sd, HERE / "state_dict.pth")
  remember("state_dict", sd)

  momentum = torch.ones(3)
  optimizer = {"state": {0: {"momentum_buffer": momentum}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
  wrapped = {"state_dict": sd, "epoch": 3, "optimizer": optimizer, "arch": "tiny", "note": b"\x00bytes"}
  torch.save({**wrapped, "tags": {"a", "b"}, "best": (0.5, 1 + 2j)}, HERE / "wrapped.pth")

  torch.manual_seed(0)
  parallel = nn.DataParallel(TinyNet())  # Keys "module.conv.weight", ... as multi-GPU training saves them.
  torch.save(parallel.state_dict(), HERE / "module.pth")
  remember("module", parallel.module.state_dict())

  torch.save({"w": torch.arange(3.0)}, HERE / "legacy.pth", _use_new_zipfile_serialization=False)

  torch.serialization.set_crc32_options(False)  # Every CRC in the zip written as 0.
  try:
    torch.save({"w": torch.arange(3.0)}, HERE / "no_crc.pth")
  finally:
    torch.serialization.set_crc32_options(True)

  st = safetensors_tensors()
  save_file(st, HERE / "reference.safetensors", metadata={"format": "pt"})
  remember("safetensors", st)

  np.savez(HERE / "expected.npz", **expected)
  for path in sorted(HERE.iterdir()):
    print(f"{path.stat().st_size:6d}  {path.name}")


if __name__ == "__main__":
  main()
