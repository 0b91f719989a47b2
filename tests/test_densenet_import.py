"""torchvision's DenseNet checkpoints under their old layer names ('norm.1', 'conv.2', ... as the published
files have them) load as the current names do; mixed or truncated state dicts are refused by name.

Runs from the densenet121 fixture's layout (tests/data/torch_parity): no PyTorch needed."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch_reference as ref

from zoo.interop import load_pytorch_weights
from zoo.interop.densenet import densenet
from zoo.interop.pytorch import WeightMap
from zoo.registry import ZooError

# The inverse of torchvision's densenet._load_state_dict rename: 'denselayer3.norm1.weight' ->
# 'denselayer3.norm.1.weight'.
_TO_OLD = re.compile(r"(denselayer\d+\.(?:norm|conv))([12])\.")


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
  layout, _ = ref.load_fixture("densenet121_torchvision")
  # Without BatchNorm's update counters, which the published checkpoints predate and the import ignores.
  return {k: v for k, v in ref.fake_weights(layout).items() if not k.endswith("num_batches_tracked")}


def old_names(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {_TO_OLD.sub(r"\1.\2.", k): v for k, v in weights.items()}


def test_old_names_fill_the_same_variables_from_the_same_tensors(weights):
  old = old_names(weights)
  renamed = [k for k in old if k not in weights]
  assert len(renamed) == 58 * (2 * 4 + 2)  # 6 + 12 + 24 + 16 layers of 2 norms (4 tensors) and 2 convs
  new_map, old_map = WeightMap(weights), WeightMap(old)
  assert densenet(new_map, "densenet121") == densenet(old_map, "densenet121") == {"num_classes": 1000}
  assert old_map.used == set(old)  # every tensor, the old-named ones included, has a place
  assert new_map.assigned.keys() == old_map.assigned.keys()
  for path, (value, key) in new_map.assigned.items():
    old_value, old_key = old_map.assigned[path]
    assert _TO_OLD.sub(r"\1.\2.", key) == old_key
    np.testing.assert_array_equal(value, old_value)


def test_old_names_load(weights):
  _, variables = load_pytorch_weights("densenet121", old_names(weights))
  conv = weights["features.denseblock3.denselayer24.conv2.weight"]  # (O, I, 3, 3) -> (3, 3, I, O)
  np.testing.assert_array_equal(
    variables["params"]["block3_layer24"]["conv2"]["kernel"], conv.transpose(2, 3, 1, 0)
  )
  var = weights["features.denseblock1.denselayer1.norm1.running_var"]
  np.testing.assert_array_equal(variables["batch_stats"]["block1_layer1"]["norm1"]["var"], var)


def test_both_namings_of_one_layer_are_refused(weights):
  key = "features.denseblock2.denselayer5.norm1.weight"
  mixed = {**weights, key.replace("norm1", "norm.1"): weights[key]}
  with pytest.raises(ZooError, match=re.escape("denselayer5.norm.1.weight")):
    load_pytorch_weights("densenet121", mixed)


def test_another_depth_is_refused(weights):
  # DenseNet-121's block 3 with its last layer gone: the zoo's densenet121 variables for it get no tensor.
  cut = {k: v for k, v in weights.items() if ".denseblock3.denselayer24." not in k}
  with pytest.raises(ZooError, match="block3_layer24"):
    load_pytorch_weights("densenet121", cut)
  with pytest.raises(ZooError, match="block3_layer25"):  # densenet169 has 32 layers there
    load_pytorch_weights("densenet169", weights)
