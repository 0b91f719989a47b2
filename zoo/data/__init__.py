"""Datasets: loading by name, download with checksums and a cache, image folders streamed from disk, and
input normalisation statistics."""

from __future__ import annotations

from zoo.data import cifar, planetoid, text  # noqa: F401  (imported so that their loaders register)
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
from zoo.data.image_folder import ImageFolder, prefetch_to_device

__all__ = [
  "AUGMENTATIONS",
  "create_augmentation",
  "register_augmentation",
  "DATASETS",
  "Dataset",
  "ImageFolder",
  "fetch",
  "list_datasets",
  "load_dataset",
  "normalization_stats",
  "prefetch_to_device",
  "register_dataset",
]
