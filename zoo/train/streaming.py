"""Training on a dataset streamed from disk (zoo.data.ImageFolder): the checks, normalisation, input stream
and evaluation passes that the loop uses in place of whole splits held on the device."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo import config as config_lib
from zoo.data import ImageFolder, normalization_stats, prefetch_to_device
from zoo.data.datasets import FITTED_NORMALIZATIONS
from zoo.registry import ZooError
from zoo.tasks import Task
from zoo.train.steps import make_batch_eval_fn


def is_streaming(dataset: Any) -> bool:
  """Whether `dataset` is read from disk batch by batch rather than held in memory."""
  return isinstance(dataset, ImageFolder)


def prepare(config: config_lib.Config, folder: ImageFolder) -> ImageFolder:
  """The folder `config` trains on (max_train/test_examples applied); options that need a split in memory
  are refused with what to use instead."""
  data = config.data
  if data.validation_split:
    raise ZooError(
      f"data.validation_split={data.validation_split} carves examples out of a training split held in "
      f"memory; {folder.name} is streamed from disk and has its own evaluation split "
      f"({folder.root / folder.eval_split}): set data.validation_split=0"
    )
  if config.averaging.swa_start_epoch is not None:
    raise ZooError(
      f"averaging.swa_start_epoch: SWA recomputes BatchNorm statistics over training batches held on the "
      f"device, which {folder.name} (streamed from disk) does not have; use averaging.ema_decay instead"
    )
  folder = folder.subset(folder.train_split, data.max_train_examples)
  return folder.subset(folder.eval_split, data.max_test_examples)


def normalization(folder: ImageFolder, mode: str) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) for `mode`, which cannot be one fitted on the whole training split."""
  if mode in FITTED_NORMALIZATIONS:
    raise ZooError(
      f"data.normalization={mode!r} is fitted on the whole training split, which {folder.name} (streamed "
      f"from disk) never holds at once: use 'imagenet' (ImageNet's published channel statistics), "
      f"'inception' (to [-1, 1]), 'scale' (to [0, 1]) or 'none'"
    )
  return normalization_stats(np.zeros((0, *folder.input_shape()), np.uint8), mode, folder.pixel_max)


def check_augmentation(folder: ImageFolder, augment: Callable | None, batch_size: int) -> None:
  """Training images are decoded at train_size and must reach the model at image_size, as evaluation's do."""
  decoded = (batch_size, *folder.input_shape(folder.train_split))
  wanted = (batch_size, *folder.input_shape())
  shape = decoded
  if augment is not None:
    shape = jax.eval_shape(augment, jax.ShapeDtypeStruct(decoded, jnp.uint8), jax.random.key(0)).shape
  if tuple(shape) != wanted:
    raise ZooError(
      f"{folder.name}: training images are decoded at {decoded[1]}x{decoded[2]} (train_size) and "
      f"data.augment turns them into {shape[1]}x{shape[2]}, but the model takes {wanted[1]}x{wanted[2]} "
      f"(image_size, as evaluation images are decoded): add random_resized_crop with "
      f"size={folder.image_size} to data.augment, or set data.kwargs.train_size={folder.image_size}"
    )


def example_batch(folder: ImageFolder, batch_size: int) -> np.ndarray:
  """Zeros shaped like a batch of model inputs (for building the train state)."""
  return np.zeros((batch_size, *folder.input_shape()), np.uint8)


def train_batches(folder: ImageFolder, batch_size: int, *, seed: int, start_step: int) -> Iterator[Any]:
  """The training stream from step `start_step` on, prefetched onto the device (close it when done)."""
  stream = folder.batches(folder.train_split, batch_size, seed=seed, start_step=start_step)
  return prefetch_to_device(stream)


@dataclasses.dataclass(frozen=True)
class EvalSplit:
  """A split evaluated by streaming it from disk in batches of `batch_size` (the last one padded)."""

  folder: ImageFolder
  split: str
  batch_size: int

  @classmethod
  def of(cls, folder: ImageFolder, split: str, batch_size: int) -> EvalSplit:
    return cls(folder, split, min(batch_size, folder.num_examples(split)))

  @property
  def labels(self) -> np.ndarray:
    return self.folder.labels[self.split]

  def batches(self) -> Iterator[Any]:
    return prefetch_to_device(self.folder.batches(self.split, self.batch_size, training=False))


def make_eval_fns(model: nn.Module, task: Task, preprocess: Callable[[jax.Array], jax.Array]):
  """Returns (evaluate, predict) over an EvalSplit, as steps.make_eval_fn and make_predict_fn over a split
  on the device: `evaluate(variables, split) -> metric sums` (on the device) and `predict(variables, split)
  -> outputs (num_batches, B, ...)` (on the host, padding included)."""
  evaluate_batch = make_batch_eval_fn(model, task, preprocess)

  def run(variables: dict[str, Any], split: EvalSplit, keep_outputs: bool):
    totals, outputs = None, []
    batches = split.batches()
    try:
      for batch in batches:
        if totals is None:
          totals = evaluate_batch.zeros(variables, batch)
        totals, out = evaluate_batch(totals, variables, batch)
        if keep_outputs:
          outputs.append(out)
    finally:
      batches.close()
    return totals, outputs

  def evaluate(variables: dict[str, Any], split: EvalSplit) -> dict[str, jax.Array]:
    return run(variables, split, keep_outputs=False)[0]

  def predict(variables: dict[str, Any], split: EvalSplit) -> np.ndarray:
    return np.stack(jax.device_get(run(variables, split, keep_outputs=True)[1]))

  return evaluate, predict
