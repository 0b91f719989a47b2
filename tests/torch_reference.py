"""PyTorch reference models for the weight-import parity tests (tests/test_pytorch_import.py), and the
fixtures that stand in for them where PyTorch is not installed.

A case's weights are not stored: `fake_weights` makes them from the state dict's layout (key, shape) with a
fixed generator, so a fixture holds only that layout, and the reference model's outputs on fixed inputs.
With torch, torchvision and timm installed (the `[torch]` extra), the tests build the reference itself.

  python tests/torch_reference.py [CASE ...]   # rewrites tests/data/torch_parity/CASE.npz (default: all)
"""

from __future__ import annotations

import dataclasses
import json
import sys
import zlib
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "data" / "torch_parity"
BATCH = 2


@dataclasses.dataclass(frozen=True)
class Case:
  model: str  # the zoo model the weights load into
  library: str  # 'torchvision' or 'timm'
  constructor: str  # the library's model name
  size: int  # input height = width


CASES = {
  "resnet18_torchvision": Case("resnet18", "torchvision", "resnet18", 224),
  "resnet34_torchvision": Case("resnet34", "torchvision", "resnet34", 160),
  "resnet50_torchvision": Case("resnet50", "torchvision", "resnet50", 160),
  "densenet121_torchvision": Case("densenet121", "torchvision", "densenet121", 160),
  "vit_ti16_timm": Case("vit_ti16", "timm", "vit_tiny_patch16_224", 224),
  "vit_b16_timm": Case("vit_b16", "timm", "vit_base_patch16_224", 224),
  "efficientnet_b0_timm": Case("efficientnet_b0", "timm", "efficientnet_b0", 224),
  "efficientnet_b0_torchvision": Case("efficientnet_b0", "torchvision", "efficientnet_b0", 160),
  "regnety_400mf_torchvision": Case("regnety_400mf", "torchvision", "regnet_y_400mf", 160),
  "regnety_400mf_timm": Case("regnety_400mf", "timm", "regnety_004", 224),
}


def have_torch() -> bool:
  """Whether torch, torchvision and timm can build the references here."""
  try:
    import_torchvision()
    import timm  # noqa: F401
  except Exception:
    return False
  return True


def import_torchvision():
  """torchvision; with a wheel whose compiled operators do not load against this torch (a CUDA torchvision
  beside a CPU torch), its pure-Python models still work: its fake-operator registrations are skipped."""
  import torch

  try:
    import torchvision
  except RuntimeError:  # "operator torchvision::nms does not exist"
    for name in [m for m in sys.modules if m.startswith("torchvision")]:
      del sys.modules[name]
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *a, **k: lambda fn: fn
    try:
      import torchvision
    finally:
      torch.library.register_fake = register_fake
  return torchvision


def build_torch(case: Case):
  """The reference PyTorch model (random weights, eval mode)."""
  if case.library == "torchvision":
    return getattr(import_torchvision().models, case.constructor)().eval()
  import_torchvision()  # timm imports torchvision
  import timm

  return timm.create_model(case.constructor, pretrained=False).eval()


def torch_layout(model) -> list[tuple[str, tuple[int, ...], str]]:
  """(key, shape, dtype) of every tensor of the model's state dict, in its order."""
  return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]


def fake_weights(layout: list[tuple[str, tuple[int, ...], str]]) -> dict[str, np.ndarray]:
  """Deterministic weights for a state dict layout, scaled so that deep networks neither explode nor
  vanish: kernels uniform with He's variance 2 / fan_in, norm scales in [0.5, 1.5], running variances in
  [0.5, 1.5], everything else (biases, means, embeddings) in [-0.1, 0.1]."""
  out = {}
  for key, shape, dtype in layout:
    if dtype == "int64":  # num_batches_tracked
      out[key] = np.zeros(shape, np.int64)
      continue
    u = np.random.default_rng(zlib.crc32(key.encode())).random(shape)  # [0, 1), stable across NumPy versions
    leaf = key.rsplit(".", 1)[-1]
    if len(shape) >= 2 and leaf == "weight":
      fan_in = int(np.prod(shape[1:]))
      value = (2 * u - 1) * np.sqrt(6.0 / fan_in)
    elif leaf in ("weight", "running_var"):
      value = 0.5 + u
    else:
      value = 0.2 * u - 0.1
    out[key] = value.astype(np.float32)
  return out


def inputs(case: Case) -> np.ndarray:
  """(BATCH, 3, size, size) float32 inputs in [-2, 2] (about normalised images), NCHW as PyTorch's."""
  u = np.random.default_rng(1234).random((BATCH, 3, case.size, case.size))
  return (4 * u - 2).astype(np.float32)


def torch_outputs(model, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
  """The reference's eval-mode outputs with `weights` loaded."""
  import torch

  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
  with torch.no_grad():
    return model(torch.from_numpy(x)).numpy()


def reference(name: str) -> tuple[list, np.ndarray]:
  """(layout, outputs) of a case: built with PyTorch when it is installed, else read from its fixture."""
  case = CASES[name]
  if have_torch():
    model = build_torch(case)
    layout = torch_layout(model)
    return layout, torch_outputs(model, fake_weights(layout), inputs(case))
  return load_fixture(name)


def load_fixture(name: str) -> tuple[list, np.ndarray]:
  with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as f:
    layout = [(k, tuple(s), d) for k, s, d in json.loads(str(f["layout"]))]
    return layout, f["outputs"]


def write_fixture(name: str) -> Path:
  case = CASES[name]
  model = build_torch(case)
  layout = torch_layout(model)
  outputs = torch_outputs(model, fake_weights(layout), inputs(case))
  FIXTURES.mkdir(parents=True, exist_ok=True)
  path = FIXTURES / f"{name}.npz"
  np.savez_compressed(path, layout=np.array(json.dumps(layout)), outputs=outputs)
  return path


if __name__ == "__main__":
  for name in sys.argv[1:] or sorted(CASES):
    print(write_fixture(name))
