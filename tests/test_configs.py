"""Every config in configs/ trains a few steps in its smoke variant (on generated data if the staged
datasets are absent)."""

from __future__ import annotations

import pytest
from conftest import have_mnist

from zoo.config import get_config, list_configs
from zoo.train import train_and_evaluate


@pytest.mark.parametrize("name", list_configs())
def test_config_smoke_trains(name, tmp_path):
  config = get_config(name, smoke=True)
  if config.data.name in ("mnist", "fashion_mnist") and not have_mnist():
    config.data.name, config.data.kwargs = "synthetic_images", {"image_size": 28}
  config.steps = min(config.steps or 3, 3)
  result = train_and_evaluate(config, tmp_path, progress=False)
  assert result["step"] == 3
  assert result["test"]["loss"] > 0
  if config.task.name == "regression":
    assert {"mse", "mae", "rmse", "r2"} <= set(result["test"])
  else:
    assert 0.0 <= result["test"]["accuracy"] <= 1.0
