"""PyTorch weights as a zoo run directory (config.json, model.json, checkpoints/0), which `load_run`,
`zoo.load` and `python -m zoo export` then read as they read a trained run's."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from zoo import config as config_lib
from zoo.data.datasets import FITTED_NORMALIZATIONS, NORMALIZATION_MODES, normalization_stats
from zoo.interop.pytorch import load_pytorch_weights
from zoo.models import create_model, model_fields, model_input_shape
from zoo.registry import ZooError
from zoo.train.checkpoint import Checkpointer

PIXEL_MAX = 255.0  # Imported image models read uint8 RGB images, normalised as their training was.


def import_to_workdir(
  model_name: str,
  source: str | Path | Mapping[str, Any],
  workdir: str | Path,
  *,
  normalization: str = "imagenet",
) -> Path:
  """Converts PyTorch weights (`load_pytorch_weights`) into a run directory and returns it.

  The directory gets config.json (model `model_name` with the kwargs the weights imply; data 'imagenet' at
  the model's input size, so that image files are decoded as ImageNet's evaluation images are: shorter side
  resized to 256/224 of the size, centre crop; data.normalization `normalization`), model.json (the
  normalisation's mean and std in pixel units for uint8 images, no vocabulary, the input shape) and
  checkpoints/0 (step 0, params, model_state), as a training run's TrainState checkpoint holds them.

  Args:
    model_name: a zoo model with a PyTorch converter (`zoo.interop.list_importable()`).
    source: a .safetensors / .pth file or a state dict in memory (see `load_pytorch_weights`).
    workdir: a new or empty directory.
    normalization: the inputs' normalisation the weights were trained with: 'imagenet' (torchvision's and
      most timm models'), 'inception' (to [-1, 1], e.g. timm's original ViTs), 'scale' (to [0, 1]) or 'none'.
  """
  workdir = Path(workdir)
  fixed = [m for m in NORMALIZATION_MODES if m not in FITTED_NORMALIZATIONS]
  if normalization not in fixed:
    why = (
      "is fitted on a training split, which imported weights do not come with"
      if normalization in NORMALIZATION_MODES
      else "is not a normalisation"
    )
    raise ZooError(f"normalization {normalization!r} {why}; use one of: {', '.join(fixed)}")
  if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
    raise ZooError(f"{workdir} exists and is not an empty directory: import the weights into a new one")
  shape = model_input_shape(model_name)
  model, variables = load_pytorch_weights(model_name, source)
  kwargs = _card_kwargs(model_name, model)
  mean, std = normalization_stats(np.zeros((0, *shape), np.uint8), normalization, PIXEL_MAX)

  config = config_lib.Config()
  config.model.name = model_name
  config.model.kwargs = kwargs
  config.data.name = "imagenet"
  config.data.kwargs = {"image_size": shape[0]} if len(shape) == 3 and shape[0] == shape[1] else {}
  config.data.normalization = normalization
  card = {
    "model": model_name,
    "kwargs": kwargs,
    "vocab": None,
    "mean": mean.tolist(),
    "std": std.tolist(),
    "tokens": False,
    "input_shape": list(shape),
    "source": str(source) if isinstance(source, (str, Path)) else "a state dict in memory",
  }
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config_lib.to_json(config) + "\n")
  (workdir / "model.json").write_text(json.dumps(card) + "\n")
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": model_state}
  checkpointer = Checkpointer(workdir / "checkpoints", keep=1)
  try:
    checkpointer.save(0, state)
  finally:
    checkpointer.close()
  return workdir


def _card_kwargs(model_name: str, model: Any) -> dict[str, Any]:
  """The module's fields that differ from the registered variant's defaults, JSON-ready: with them
  `create_model(model_name, **kwargs)` rebuilds `model` (checked)."""
  default = create_model(model_name)
  kwargs = {}
  for field in model_fields(model_name):
    value = getattr(model, field)
    if value != getattr(default, field):
      kwargs[field] = value
  try:
    kwargs = json.loads(json.dumps(kwargs))
  except TypeError as e:  # A field JSON cannot hold (a dtype): not something a converter sets today.
    raise ValueError(f"{model_name}: the imported model's fields {kwargs} do not fit model.json") from e
  if create_model(model_name, **kwargs) != model:  # create_model turns JSON's lists back into tuples.
    raise ValueError(f"{model_name}: model.json's kwargs {kwargs} do not rebuild the imported model")
  return kwargs
