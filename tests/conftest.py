"""Test set-up: loud numerics, the staged datasets when present, and small shared helpers."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]

if "ZOO_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
  os.environ["ZOO_DATA_DIR"] = str(SHARED_DATA)


def have_mnist() -> bool:
  d = os.environ.get("ZOO_DATA_DIR")
  return bool(d) and (Path(d) / "mnist" / "train-images-idx3-ubyte.gz").is_file()


@pytest.fixture
def tiny_config():
  """A config that trains the MLP on small synthetic images in well under a second."""
  from zoo.config import Config

  def make(**overrides):
    c = Config()
    c.model.kwargs = {"hidden_sizes": (32,)}
    c.data.name = "synthetic_images"
    c.data.kwargs = {"n_train": 256, "n_test": 64, "image_size": 8}
    c.data.batch_size = 32
    c.data.eval_batch_size = 50
    c.epochs = 2
    c.optimizer.learning_rate = 1e-2
    c.log_every_steps = 4
    c.checkpoint_every_steps = 5
    for key, value in overrides.items():
      obj = c
      *path, last = key.split("__")
      for part in path:
        obj = getattr(obj, part)
      setattr(obj, last, value)
    return c

  return make


class NetworkUsed(BaseException):
  """Raised by `offline`'s urlopen stand-in; a BaseException, so that no `except Exception` can swallow it."""


@pytest.fixture
def offline(tmp_path, monkeypatch):
  """No network, no user cache, no caller's data folder: urlopen raises NetworkUsed(url)."""
  import urllib.request

  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv("ZOO_DATA_DIR", raising=False)

  def urlopen(url, *args, **kwargs):
    raise NetworkUsed(url)

  monkeypatch.setattr(urllib.request, "urlopen", urlopen)
