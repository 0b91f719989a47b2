"""The registry, the config schema, overrides and config files."""

from __future__ import annotations

import dataclasses
import json

import pytest

from zoo import config as config_lib
from zoo.config import Config, apply_override, get_config, list_configs
from zoo.registry import Registry, UnknownNameError, ZooError


def test_registry_register_get_list_and_duplicates():
  reg = Registry("widget")

  @reg.register
  def resnet18():
    return 18

  reg.register(lambda: 34, name="resnet34")
  assert reg.get("resnet18")() == 18
  assert reg.list("resnet*") == ["resnet18", "resnet34"]
  assert reg.list("34") == ["resnet34"]  # A bare word is a substring filter.
  with pytest.raises(ValueError, match="already registered"):
    reg.register(resnet18)
  with pytest.raises(UnknownNameError, match=r"unknown widget 'resnet19'; did you mean: resnet18"):
    reg.get("resnet19")


def test_overrides_are_typed_and_keys_checked():
  c = Config()
  apply_override(c, "optimizer.learning_rate=3e-4")
  apply_override(c, "--config.epochs=3")
  apply_override(c, "optimizer.grad_clip_norm=1")  # int accepted for float | None
  apply_override(c, "model.name=lenet5")  # a bare word is a string
  apply_override(c, "model.kwargs.hidden_sizes=(256, 128)")
  assert c.optimizer.learning_rate == 3e-4 and c.epochs == 3
  assert c.optimizer.grad_clip_norm == 1.0 and isinstance(c.optimizer.grad_clip_norm, float)
  assert c.model.name == "lenet5" and c.model.kwargs["hidden_sizes"] == (256, 128)
  apply_override(c, "steps=None")
  assert c.steps is None
  apply_override(c, "data.augment.random_shift.pixels=2")  # Nested kwargs sections are created.
  assert c.data.augment == {"random_shift": {"pixels": 2}}


@pytest.mark.parametrize(
  "override, message",
  [
    (
      "optimizer.learnin_rate=1e-3",
      r"unknown config key 'optimizer.learnin_rate'; did you mean: optimizer.learning_rate",
    ),
    ("epochs=three", r"config key 'epochs' expects int, got 'three'"),
    ("epochs=2.5", r"config key 'epochs' expects int, got 2.5"),
    ("epochs=True", r"config key 'epochs' expects int"),
    ("stop_on_nonfinite=1", r"expects bool"),
    ("data.batch_size=[1]", r"expects int"),
    ("optimizer=adam", r"is a section"),
    ("nonsense", r"not of the form key=value"),
    ("bogus.key=1", r"unknown config key 'bogus.key'"),
  ],
)
def test_bad_overrides_name_the_key(override, message):
  with pytest.raises(ZooError, match=message):
    apply_override(Config(), override)


def test_config_round_trips_through_json():
  c = Config()
  apply_override(c, "model.kwargs.hidden_sizes=(8, 4)")
  again = config_lib.from_dict(json.loads(config_lib.to_json(c)))
  assert again == c
  with pytest.raises(ZooError, match="unknown config key"):
    config_lib.from_dict({**dataclasses.asdict(c), "epochz": 3})


def test_every_config_file_loads_with_a_command_in_its_docstring():
  names = list_configs()
  for required in ("digits_mlp", "mnist_mlp", "mnist_cnn", "mnist_lenet5", "fashion_mnist_cnn"):
    assert required in names
  for name in names:
    for smoke in (False, True):
      assert isinstance(get_config(name, smoke=smoke), Config)
    assert config_lib.describe_config(name).startswith(f"python train.py --config {name}")


def test_unknown_config_lists_close_matches():
  with pytest.raises(ZooError, match=r"unknown config 'mnist_cn'; did you mean: mnist_cnn"):
    get_config("mnist_cn")


def test_get_config_applies_overrides():
  c = get_config("digits_mlp", ["epochs=2", "optimizer.learning_rate=0.01"])
  assert (c.epochs, c.optimizer.learning_rate) == (2, 0.01)
