"""Datasets: loading by name, download with checksums and a cache, and input normalisation statistics."""

from __future__ import annotations

from zoo.data import cifar  # noqa: F401  (imported so that its loaders register)
from zoo.data.augment import AUGMENTATIONS, create_augmentation, register_augmentation
from zoo.data.datasets import (
  DATASETS,
  Dataset,
  list_datasets,
  load_dataset,
  normalization_stats,
  register_dataset,
)
from zoo.data.download import fetch

__all__ = [
  "AUGMENTATIONS",
  "create_augmentation",
  "register_augmentation",
  "DATASETS",
  "Dataset",
  "fetch",
  "list_datasets",
  "load_dataset",
  "normalization_stats",
  "register_dataset",
]
