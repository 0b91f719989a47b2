"""torchvision's DenseNet-121/169/201 (also timm's `densenet*`, same key names) -> zoo.models.densenet:
features.conv0/norm0 stem, features.denseblock{b}.denselayer{i}.{norm1,conv1,norm2,conv2},
features.transition{b}.{norm,conv}, features.norm5, classifier.

The checkpoints torchvision publishes still carry the layers' old names 'norm.1', 'conv.1', 'norm.2',
'conv.2' (torchvision and timm rename them with a regex as they load them); both namings are read.
"""

from __future__ import annotations

import re
from typing import Any

from zoo.interop.pytorch import WeightMap, register_converter

_LAYER = re.compile(r"^features\.denseblock(\d+)\.denselayer(\d+)\.")


def _part(w: WeightMap, layer: str, kind: str, j: int) -> str:
  """The torch prefix of a dense layer's `kind` (norm/conv) `j`: '...norm1', or the old '...norm.1' where the
  state dict has that instead. A state dict with neither is left to fail on the new name, which is the one
  the error's nearest keys are compared against."""
  new, old = f"{layer}.{kind}{j}", f"{layer}.{kind}.{j}"
  return old if f"{new}.weight" not in w and f"{old}.weight" in w else new


@register_converter("densenet121", "densenet169", "densenet201")
def densenet(w: WeightMap, model_name: str) -> dict[str, Any]:
  w.conv("params/stem_conv/kernel", "features.conv0.weight")
  w.batch_norm("stem_norm", "features.norm0")
  # The blocks' depths come from the keys; a checkpoint of another depth (densenet169's into densenet121)
  # then leaves tensors with no place in the zoo model, which the generic check names.
  layers: dict[int, set[int]] = {}
  for key in w.keys("features.denseblock"):
    if match := _LAYER.match(key):
      layers.setdefault(int(match[1]), set()).add(int(match[2]))
  for b in sorted(layers):
    for i in sorted(layers[b]):
      src, dst = f"features.denseblock{b}.denselayer{i}", f"block{b}_layer{i}"
      for j in (1, 2):
        w.batch_norm(f"{dst}/norm{j}", _part(w, src, "norm", j))
        w.conv(f"params/{dst}/conv{j}/kernel", f"{_part(w, src, 'conv', j)}.weight")
    if w.keys(f"features.transition{b}."):
      w.batch_norm(f"transition{b}/norm", f"features.transition{b}.norm")
      w.conv(f"params/transition{b}/conv/kernel", f"features.transition{b}.conv.weight")
  w.batch_norm("final_norm", "features.norm5")
  w.linear("classifier", "classifier")
  return {"num_classes": w.shape("classifier.weight")[0]}
