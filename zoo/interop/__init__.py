"""Weights in from other frameworks (PyTorch: torchvision, timm) and models out (jax.export, predict)."""

# Each family's module registers its converter.
from zoo.interop import densenet, efficientnet, regnet, resnet, vit  # noqa: F401
from zoo.interop.export import ExportedModel, export_run, load_exported
from zoo.interop.predict import Predictor, load
from zoo.interop.pytorch import (
  CONVERTERS,
  WeightMap,
  list_importable,
  load_pytorch_weights,
  register_converter,
)
from zoo.interop.workdir import import_to_workdir

__all__ = [
  "CONVERTERS",
  "ExportedModel",
  "Predictor",
  "WeightMap",
  "export_run",
  "import_to_workdir",
  "list_importable",
  "load",
  "load_exported",
  "load_pytorch_weights",
  "register_converter",
]
