"""PyTorch weights imported into the zoo's models give PyTorch's outputs (eval mode, 1e-4 relative).

The reference is torchvision's or timm's own model when the `[torch]` extra is installed, else its outputs
recorded in tests/data/torch_parity (python tests/torch_reference.py rewrites them)."""

from __future__ import annotations

import os
import pickle
import zipfile

import jax
import numpy as np
import pytest
import torch_reference as ref

from zoo.interop import list_importable, load_pytorch_weights
from zoo.interop.tensorfile import write_safetensors
from zoo.registry import ZooError


def relative_error(out: np.ndarray, expected: np.ndarray) -> float:
  return float(np.max(np.abs(out - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("name", sorted(ref.CASES))
def test_outputs_match_pytorch(name):
  case = ref.CASES[name]
  layout, expected = ref.reference(name)
  if ref.have_torch() and (ref.FIXTURES / f"{name}.npz").is_file():  # The fixture CI uses is up to date.
    np.testing.assert_allclose(
      ref.load_fixture(name)[1], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max()
    )
  model, variables = load_pytorch_weights(case.model, ref.fake_weights(layout))
  x = ref.inputs(case).transpose(0, 2, 3, 1)  # NCHW -> NHWC
  # Jitted: op-by-op, every layer's new shapes compile one by one (DenseNet-121: ~5x slower).
  out = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
  assert out.shape == expected.shape
  assert relative_error(out, expected) <= 1e-4


def test_every_listed_model_has_a_parity_case():
  families = {ref.CASES[n].model for n in ref.CASES}
  for name in (
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "vit_b16",
    "efficientnet_b0",
    "regnety_400mf",
  ):
    assert name in list_importable()
    assert name in families


def test_wrong_keys_and_shapes_are_named():
  layout, _ = ref.load_fixture("resnet18_torchvision")
  weights = ref.fake_weights(layout)
  with pytest.raises(ZooError, match="layer2.0.downsample.0.weight"):  # missing
    load_pytorch_weights(
      "resnet18", {k: v for k, v in weights.items() if k != "layer2.0.downsample.0.weight"}
    )
  with pytest.raises(ZooError, match="extra.weight"):  # unused
    load_pytorch_weights("resnet18", {**weights, "extra.weight": np.zeros(3, np.float32)})
  bad = {**weights, "layer1.0.conv1.weight": np.zeros((64, 64, 5, 5), np.float32)}
  with pytest.raises(ZooError, match=r"layer1\.0\.conv1\.weight.*\(64, 64, 5, 5\)"):
    load_pytorch_weights("resnet18", bad)
  with pytest.raises(ZooError, match="resnet34"):  # ResNet-18 weights are not ResNet-34's
    load_pytorch_weights("resnet34", weights)
  with pytest.raises(ZooError, match="did you mean"):
    load_pytorch_weights("resnet5O", weights)


def _resnet18_weights() -> dict[str, np.ndarray]:
  return ref.fake_weights(ref.load_fixture("resnet18_torchvision")[0])


def test_weight_files_load_as_the_state_dict(tmp_path):
  weights = _resnet18_weights()
  _, expected = load_pytorch_weights("resnet18", weights)
  write_safetensors(tmp_path / "r18.safetensors", weights)
  _, from_file = load_pytorch_weights("resnet18", tmp_path / "r18.safetensors")
  jax.tree.map(np.testing.assert_array_equal, from_file, expected)
  torch = pytest.importorskip("torch")
  torch.save(
    {"state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in weights.items()}}, tmp_path / "r18.pth"
  )
  _, from_pth = load_pytorch_weights("resnet18", str(tmp_path / "r18.pth"))
  jax.tree.map(np.testing.assert_array_equal, from_pth, expected)


def test_damaged_or_hostile_weight_files_are_refused(tmp_path):
  path = tmp_path / "r18.safetensors"
  write_safetensors(path, _resnet18_weights())
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a download killed half-way
  with pytest.raises(ZooError, match="r18.safetensors"):
    load_pytorch_weights("resnet18", path)
  marker = tmp_path / "ran"

  class Payload:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  hostile = tmp_path / "hostile.pth"
  with zipfile.ZipFile(hostile, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"conv1.weight": Payload()}, protocol=2))
    z.writestr("archive/byteorder", "little")
  with pytest.raises(ZooError, match=r"refused to load .*hostile\.pth.*os|posix"):
    load_pytorch_weights("resnet18", hostile)
  assert not marker.exists()
