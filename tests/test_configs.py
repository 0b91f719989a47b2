"""Every config in configs/ trains a few steps in its smoke variant, on generated data where the real files
are not on this machine (MNIST when not staged; CIFAR and ImageNet always: generated files in their real
formats)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from conftest import have_mnist
from test_cifar import _fake, _trust, _write
from test_image_folder import write_image_folder

from zoo.config import get_config, list_configs
from zoo.data import cifar
from zoo.train import train_and_evaluate


def _generated_data(config, tmp_path, monkeypatch) -> None:
  """Points `config` at generated files in the dataset's real format, where the real ones are absent."""
  name = config.data.name
  if name in ("mnist", "fashion_mnist") and not have_mnist():
    config.data.name, config.data.kwargs = "synthetic_images", {"image_size": 28}
  elif name in ("cifar10", "cifar100"):
    fake = _fake(name)
    _trust(monkeypatch, name, fake.archive)
    _write(tmp_path / "data" / name / cifar._SOURCES[name].file, fake.archive)
    config.data.data_dir = str(tmp_path / "data")
    config.data.max_test_examples = None  # The generated test split is small already.
    config.data.batch_size = min(config.data.batch_size, 16)  # The generated training split has 60 images.
  elif name in ("tiny_shakespeare", "sst"):
    staged = {"tiny_shakespeare": "tiny_shakespeare/input.txt", "sst": "sst/trainDevTestTrees_PTB.zip"}[name]
    data_dir = os.environ.get("ZOO_DATA_DIR")
    if not (data_dir and (Path(data_dir) / staged).is_file()):
      pytest.skip(f"{name} is not staged (tests/test_text_data.py covers its loader on generated files)")
  elif name == "imagenet":
    write_image_folder(tmp_path / "data" / "imagenet", size=(40, 48))
    config.data.data_dir = str(tmp_path / "data")


# Configs whose model, data pipeline and task a sibling config's smoke test already trains (the sibling
# named); run with `-m benchmark` to include them, keeping the default suite well inside its time budget.
COVERED_BY_A_SIBLING = {
  "fashion_mnist_efficientnet": "cifar10_efficientnet's own coverage below",
  "cifar10_efficientnet": "tests/test_models.py (efficientnet_tiny trains), cifar10_resnet18 (the data)",
  "cifar100_resnet18": "cifar10_resnet18",
  "cifar100_wrn28_10": "cifar10_wrn28_10",
  "fashion_mnist_resnet18": "cifar10_resnet18",
  "cifar10_mixer": "fashion_mnist_mixer",
  "fashion_mnist_densenet": "cifar10_densenet_bc100",
  "imagenet_resnet50": "tests/test_image_folder.py's imagenet_resnet50 run",
  "imagenet_vit_b16": "cifar10_vit",
  "fashion_mnist_vit": "cifar10_vit (the ViT), fashion_mnist_cnn (the data)",
  "cifar10_wrn28_10": "cifar10_resnet18 (tests/test_resnet.py covers the widening)",
}


@pytest.mark.parametrize(
  "name",
  [pytest.param(n, marks=pytest.mark.benchmark) if n in COVERED_BY_A_SIBLING else n for n in list_configs()],
)
def test_config_smoke_trains(name, tmp_path, monkeypatch):
  config = get_config(name, smoke=True)
  _generated_data(config, tmp_path, monkeypatch)
  config.steps = min(config.steps or 3, 3)
  result = train_and_evaluate(config, tmp_path / "run", progress=False)
  assert result["step"] == 3
  assert result["test"]["loss"] > 0
  assert all(math.isfinite(v) for v in result["test"].values() if isinstance(v, float))
  if config.task.name == "regression":
    assert {"mse", "mae", "rmse", "r2"} <= set(result["test"])
  elif config.task.name in ("vae", "autoencoder"):
    assert result["test"]["reconstruction"] > 0
  elif config.task.name != "gan":
    assert 0.0 <= result["test"]["accuracy"] <= 1.0


@pytest.mark.parametrize(
  "name", [n for n in list_configs() if get_config(n).data.name in ("cifar10", "cifar100")]
)
def test_cifar_configs_read_cifar_with_the_standard_augmentation(name):
  """The CIFAR recipes of the papers: 32x32 random crops with 4 pixels of padding, and horizontal flips."""
  config = get_config(name)
  assert config.data.augment.get("random_shift", {}).get("pixels") == 4
  assert "horizontal_flip" in config.data.augment
